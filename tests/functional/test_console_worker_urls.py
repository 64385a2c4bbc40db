"""The workers the console scrapes are named on its overview (``CONSOLE_WORKER_URLS``): one
whose URL carries a password (a basic-auth proxy before the workers' ``/metrics``) is named
without it, and still called with it."""

from __future__ import annotations

from aiohttp import web

from streams.console.pacing import scrape
from tests.support import free_port

SECRET = "metrics-SECRET-4f1c"


async def test_a_workers_password_is_used_and_never_shown() -> None:
    authorizations: list[str | None] = []

    async def metrics(request: web.Request) -> web.Response:
        authorizations.append(request.headers.get("Authorization"))
        return web.Response(text="", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port, dead = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        pacing = await scrape(
            [
                f"http://ops:{SECRET}@127.0.0.1:{port}/metrics",
                f"http://ops:{SECRET}@127.0.0.1:{dead}/metrics",
            ]
        )
    finally:
        await runner.cleanup()

    assert pacing.reached == [f"http://ops:***@127.0.0.1:{port}/metrics"]
    assert pacing.unreachable == [f"http://ops:***@127.0.0.1:{dead}/metrics"]
    assert len(authorizations) == 1 and authorizations[0] is not None  # called with it
    assert authorizations[0].startswith("Basic ")

"""The Talkable stand-in with a receipt clock, for the benchmark.

The real stand-in (:mod:`streams.dev.talkable_standin`) records calls without timestamps, so
this process wraps the same app with a middleware that stamps every ``POST /origins/event`` on
arrival: ``GET /_bench/receipts`` answers ``[[site_slug, event_number, received_at, status],
...]`` (``received_at`` in epoch seconds, this machine's clock). Run it with
``python -m bench.standin --port N``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from streams.dev import talkable_standin
from streams.dev.standin_common import run_blocking, start

EVENT_PATH = "/api/v2/origins/event"
RECEIPTS = web.AppKey("bench_receipts", list)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def stamp(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "POST" or request.path != EVENT_PATH:
        return await handler(request)
    received_at = time.time()
    response = await handler(request)
    try:
        body: Any = json.loads(await request.read())
        site, number = body.get("site_slug"), body.get("data", {}).get("event_number")
    except (ValueError, AttributeError):
        site, number = None, None
    request.app[RECEIPTS].append([site, number, received_at, response.status])
    return response


async def receipts(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECEIPTS])


def build_app() -> web.Application:
    app = talkable_standin.build_app()
    app[RECEIPTS] = []
    app.middlewares.append(stamp)
    app.router.add_get("/_bench/receipts", receipts)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def serve() -> Any:
        app = build_app()
        state = app[talkable_standin.STATE]
        return await start(app, state.config, state.calls, args.host, args.port, "/api/v2")

    run_blocking(serve)


if __name__ == "__main__":
    main()

"""How the OpenAI and Talkable adapters classify answers that the stand-ins do not give, from
real HTTP servers on loopback: a key echoed back URL-encoded, a 402 Payment Required,
OpenAI's ``x-should-retry`` header; and what the scheduler then does with them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from models.events import ChatRequest, PublishCompletion
from streams.clients.openai_chat import ChatClient
from streams.clients.talkable import TalkableClient
from streams.errors import GenerationError, PublishError

CHAT = ChatRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "a verse"}], max_tokens=20
)
# sentinel keys with characters a URL or a form encodes ("/", "+", "=", "&", ":", a space):
# sent as a header they are what they are, echoed in a URL they are not
OPENAI_KEY = "Sentinel/OpenAI+key=1&2:0123456789"
TALKABLE_KEY = "Sentinel/Talkable+key=1&2 0123456789"


def command() -> PublishCompletion:
    return PublishCompletion(
        request_id="r-1",
        person="acme:a@example.com",
        site="acme",
        email="a@example.com",
        attempt=1,
        issued_at_ms=0,
        event_number="n-1",
        custom_properties={"generated_text": "hi"},
        talkable_api_key="sealed",
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serving(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """An HTTP server on a free loopback port answering a POST to each path with its handler:
    its base URL, while the block runs."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def generation_error(base: str, key: str = OPENAI_KEY) -> GenerationError:
    client = ChatClient(base, timeout=10)
    try:
        with pytest.raises(GenerationError) as caught:
            await client.complete(CHAT, key)
    finally:
        await client.close()
    return caught.value


async def publish_error(base: str, key: str = TALKABLE_KEY) -> PublishError:
    client = TalkableClient(base, timeout=10)
    try:
        with pytest.raises(PublishError) as caught:
            await client.publish(command(), key)
    finally:
        await client.close()
    return caught.value


def forms(key: str) -> list[str]:
    """The key as it is and as a URL or a form quotes it."""
    return [key, quote(key), quote(key, safe=""), quote_plus(key), quote(key, safe="").lower()]


async def test_a_key_an_upstream_echoes_url_encoded_is_in_no_reason() -> None:
    """A gateway before OpenAI and a Talkable that quote the URL they were called with, the
    key in its query: percent-encoded (``%2F``, ``%2B``, ``%3D``) or form-encoded (a space as
    ``+``), the key was kept in the request's reason (its dead letter, its logs)."""

    async def gateway(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        said = f"token rejected for /v1/chat/completions?token={quote(key, safe='')}"
        return web.json_response({"error": {"message": said, "type": "auth"}}, status=400)

    async def talkable(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        said = (
            f"Invalid request /api/v2/origins/event?api_key={quote_plus(key)} (as given: "
            f"api_key={quote(key)})"
        )
        return web.json_response({"ok": False, "error_message": said}, status=422)

    routes = {"/v1/chat/completions": gateway, "/api/v2/origins/event": talkable}
    async with serving(routes) as base:
        generation = await generation_error(f"{base}/v1")
        publication = await publish_error(f"{base}/api/v2")
    assert (generation.reason, generation.status) == ("BadRequest", 400)
    assert str(generation) == (
        "OpenAI answered 400: token rejected for /v1/chat/completions?token=[redacted]"
    )
    assert (publication.reason, publication.status) == ("BadRequest", 422)
    assert str(publication) == (
        "Talkable answered 422: Invalid request /api/v2/origins/event?api_key=[redacted] (as"
        " given: api_key=[redacted])"
    )
    for error, key in ((generation, OPENAI_KEY), (publication, TALKABLE_KEY)):
        for form in forms(key):
            assert form not in str(error)


async def test_a_402_payment_required_is_the_keys_quota_not_the_requests_fault() -> None:
    """An OpenAI-compatible API's 402 (OpenRouter's "Insufficient credits", a gateway's
    budget spent, with or without JSON) was a ``BadRequest``: the request blamed, and each of
    the key's requests called again to be told the same. It is the key's account that cannot
    pay, as OpenAI's 429 ``insufficient_quota`` says: the key is refused a while."""

    async def openrouter(request: web.Request) -> web.Response:
        said = "Insufficient credits. Add more using https://openrouter.ai/settings/credits"
        return web.json_response({"error": {"code": 402, "message": said}}, status=402)

    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=402, text="budget exceeded", content_type="text/plain")

    routes = {"/credits/v1/chat/completions": openrouter, "/budget/v1/chat/completions": gateway}
    async with serving(routes) as base:
        credits = await generation_error(f"{base}/credits/v1")
        budget = await generation_error(f"{base}/budget/v1")
    for error in (credits, budget):
        assert (error.reason, error.status, error.retriable, error.refuses) == (
            "InsufficientQuota", 402, False, "key",
        )  # fmt: skip
    assert str(credits) == (
        "OpenAI answered 402: Insufficient credits. Add more using "
        "https://openrouter.ai/settings/credits"
    )
    assert str(budget) == "OpenAI answered 402: a body that is not OpenAI's JSON (text/plain)"

"""How the OpenAI and Talkable adapters classify answers that the stand-ins do not give, from
real HTTP(S) servers on loopback: a key echoed back URL-encoded, a 402 Payment Required,
OpenAI's ``x-should-retry`` header, a TLS certificate that does not verify; and what the
scheduler then does with them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from models.events import ChatRequest, PublishCompletion
from streams.clients.openai_chat import ChatClient
from streams.clients.talkable import TalkableClient
from streams.errors import GenerationError, PublishError, UpstreamError
from streams.upstream.limits import Limits
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Job, Outcome, Scheduler
from tests.tls import Authority, self_signed

ROOT = Path(__file__).resolve().parents[2]
CHAT = ChatRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "a verse"}], max_tokens=20
)
# sentinel keys with characters a URL or a form encodes ("/", "+", "=", "&", ":", a space):
# sent as a header they are what they are, echoed in a URL they are not
OPENAI_KEY = "Sentinel/OpenAI+key=1&2:0123456789"
TALKABLE_KEY = "Sentinel/Talkable+key=1&2 0123456789"
COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A verse"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2},
}


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
async def serving(
    routes: dict[str, Handler], tls: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """An HTTP server (HTTPS with ``tls``) on a free loopback port answering a POST to each
    path with its handler: its base URL, while the block runs."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
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


def openai_answer(status: int, should_retry: str | None, code: str | None = None) -> Handler:
    """Chat Completions answering ``status`` with OpenAI's error JSON, and ``x-should-retry``
    when given."""

    async def answer(request: web.Request) -> web.Response:
        headers = {} if should_retry is None else {"x-should-retry": should_retry}
        error = {"message": f"said {status}", "type": "server_error", "code": code}
        return web.json_response({"error": error}, status=status, headers=headers)

    return answer


async def test_x_should_retry_is_obeyed_as_openais_client_obeys_it() -> None:
    """OpenAI's ``x-should-retry`` was not read: a 503 or a 429 saying ``false`` waited (its
    circuit counted, its pacer paused) until the request's maximum wait, a 400 saying
    ``true`` was final at once. As the official client (``_should_retry``): ``false`` ends
    what would wait, ``true`` asks again a refusal of the request; either way the reason is
    kept. Not a refusal of the key or the model: a 401 saying ``true`` was asked again, its
    key not refused, so each of the key's other calls was made, and refused, in its turn."""
    cases = {
        # path: (status, header, code) → (reason, retriable, answered, throttle)
        "false503": ((503, "false", None), ("ServerError", False, False, False)),
        "false429": ((429, "false", "rate_limit_exceeded"), ("RateLimited", False, False, False)),
        "true400": ((400, "true", None), ("BadRequest", True, True, False)),
        "true404": ((404, "true", None), ("BadRequest", True, True, False)),
        "true422": ((422, "true", None), ("BadRequest", True, True, False)),
        # a refusal of the key or the model: no header makes another try help
        "true401": ((401, "true", "invalid_api_key"), ("Unauthorized", False, False, False)),
        "true401bare": ((401, "true", None), ("Unauthorized", False, False, False)),
        "true403": ((403, "true", None), ("Forbidden", False, False, False)),
        "true429quota": (
            (429, "true", "insufficient_quota"),
            ("InsufficientQuota", False, False, False),
        ),
        "true404model": ((404, "true", "model_not_found"), ("ModelNotFound", False, False, False)),
        # what it says already: nothing changes
        "true503": ((503, "true", None), ("ServerError", True, False, False)),
        "false400": ((400, "false", None), ("BadRequest", False, False, False)),
        # not exactly "true" or "false" (the client compares so): as without the header
        "True400": ((400, "True", None), ("BadRequest", False, False, False)),
    }
    routes = {f"/{p}/v1/chat/completions": openai_answer(*a) for p, (a, _) in cases.items()}

    async def refuses_max_tokens(request: web.Request) -> web.Response:
        error = {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                 "model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                 "param": "max_tokens", "code": "unsupported_parameter"}  # fmt: skip
        return web.json_response({"error": error}, status=400, headers={"x-should-retry": "true"})

    routes["/true400resend/v1/chat/completions"] = refuses_max_tokens
    async with serving(routes) as base:
        errors = {path: await generation_error(f"{base}/{path}/v1") for path in cases}
        errors["true400resend"] = await generation_error(f"{base}/true400resend/v1")
    for path, ((status, _, _), said) in cases.items():
        error = errors[path]
        assert (error.reason, error.retriable, error.answered, error.throttle) == said, path
        assert error.status == status
    assert str(errors["false503"]) == (
        "OpenAI answered 503 (x-should-retry: false, another try would not help: not asked "
        "again): said 503"
    )
    assert (
        str(errors["true400"])
        == "OpenAI answered 400 (x-should-retry: true: asked again): said 400"
    )
    # as without the header: final, and the key's (the model's) other calls refused with it
    for path in ("true401", "true401bare", "true403", "true429quota"):
        assert errors[path].refuses == "key", path
        assert "x-should-retry" not in str(errors[path]), path
    assert errors["true404model"].refuses == "model"
    # a refusal of max_tokens, sent again at once with max_completion_tokens as the same try:
    # the header does not make it one of three tries
    resend = errors["true400resend"]
    assert (resend.reason, resend.retriable, resend.resend) == ("BadRequest", False, True)
    assert str(errors["true401"]) == "OpenAI answered 401 invalid_api_key: said 401"
    assert str(errors["true503"]) == "OpenAI answered 503: said 503"


async def scheduled(
    calls: dict[str, Callable[[], Awaitable[tuple[Any, Limits | None]]]], within_s: float = 20.0
) -> dict[str, Outcome[Any]]:
    """Each call as a job of a target of its own in a running scheduler whose maximum wait is
    ten minutes: the outcome each reports, within ``within_s``."""
    s = Scheduler(
        "test",
        max_in_flight=8,
        max_wait_s=600.0,
        refusal_s=60.0,
        pacer_config=PacerConfig(),
    )
    reports: dict[str, Outcome[Any]] = {}
    all_reported = asyncio.Event()

    def job(name: str, call: Callable[[], Awaitable[tuple[Any, Limits | None]]]) -> Job[Any]:
        async def report(outcome: Outcome[Any]) -> None:
            reports[name] = outcome
            if len(reports) == len(calls):
                all_reported.set()

        return Job(key=name, attempt=1, scope="model", cost=0, issued_s=s.now(), call=call,
                   report=report)  # fmt: skip

    running = asyncio.create_task(s.run())
    try:
        for name, call in calls.items():
            s.submit(name, job(name, call))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_reported.wait(), within_s)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert set(reports) == set(calls), f"reported within {within_s}s: {sorted(reports)}"
    return reports


async def test_the_scheduler_ends_or_asks_again_as_x_should_retry_says() -> None:
    """Through the scheduler: a 503 saying ``false`` is one call, reported at once, where it
    waited out the maximum wait (ten minutes here); a 400 saying ``true`` is called three
    times in all, as the client would, then reported with its reason; one saying ``true``
    and then answering is a completion."""
    calls: collections.Counter[str] = collections.Counter()

    def counted(handler: Handler) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            path = request.path.split("/")[1]
            calls[path] += 1
            if path == "flaky" and calls[path] > 1:
                return web.json_response(COMPLETION)
            return await handler(request)

        return answer

    routes = {
        "/false503/v1/chat/completions": counted(openai_answer(503, "false")),
        "/true400/v1/chat/completions": counted(openai_answer(400, "true")),
        "/flaky/v1/chat/completions": counted(openai_answer(400, "true")),
    }
    async with serving(routes) as base:
        clients = {
            path: ChatClient(f"{base}/{path}/v1", timeout=10)
            for path in ("false503", "true400", "flaky")
        }
        try:
            reports = await scheduled(
                {
                    path: functools.partial(client.complete, CHAT, OPENAI_KEY)
                    for path, client in clients.items()
                }
            )
        finally:
            for client in clients.values():
                await client.close()
    ended, again, flaky = reports["false503"], reports["true400"], reports["flaky"]
    assert ended.error is not None and (ended.error.reason, ended.tries) == ("ServerError", 1)
    assert calls["false503"] == 1
    assert again.error is not None and (again.error.reason, again.error.retriable) == (
        "BadRequest", False,
    )  # fmt: skip
    assert (again.tries, calls["true400"]) == (3, 3)
    assert str(again.error).startswith("OpenAI answered 400 (x-should-retry: true: asked again)")
    assert str(again.error).endswith(
        "3 times: true400 answers this call with nothing usable (each said to try again)"
    )
    assert flaky.error is None and flaky.value is not None
    assert (flaky.value.text, calls["flaky"]) == ("A verse", 2)


async def test_a_refused_key_saying_to_try_again_is_refused_at_once_with_its_other_calls() -> None:
    """Through the scheduler: a 401 (an invalid or revoked key) saying ``x-should-retry:
    true`` was asked again three times, and its key not refused, so each of its queued calls
    was made three times too. No retry makes a key valid: one call, ``Unauthorized``, and the
    key's next call ends without a call, as for a 401 without the header."""
    calls: collections.Counter[str] = collections.Counter()

    async def revoked(request: web.Request) -> web.Response:
        calls[request.path] += 1
        return await openai_answer(401, "true", "invalid_api_key")(request)

    s = Scheduler("test", max_in_flight=8, max_wait_s=600.0, refusal_s=60.0,
                  pacer_config=PacerConfig())  # fmt: skip
    reports: dict[str, Outcome[Any]] = {}
    both = asyncio.Event()

    async with serving({"/v1/chat/completions": revoked}) as base:
        client = ChatClient(f"{base}/v1", timeout=10)

        def job(name: str) -> Job[Any]:
            async def report(outcome: Outcome[Any]) -> None:
                reports[name] = outcome
                if len(reports) == 2:
                    both.set()

            return Job(key=name, attempt=1, scope="model", cost=0, issued_s=s.now(),
                       call=functools.partial(client.complete, CHAT, OPENAI_KEY),
                       report=report)  # fmt: skip

        running = asyncio.create_task(s.run())
        try:
            s.submit("key", job("first"))
            s.submit("key", job("second"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both.wait(), 20.0)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await client.close()
    assert set(reports) == {"first", "second"}, f"reported: {sorted(reports)}"
    first, second = reports["first"].error, reports["second"].error
    assert first is not None and (first.reason, first.refuses) == ("Unauthorized", "key")
    assert reports["first"].tries == 1
    assert second is not None and second.reason == "Unauthorized"
    # whose call was answered 401 (it read "not called: OpenAI answered 401 ...")
    assert str(second).startswith("not called: request first (the same key) was refused ")
    assert (
        " ago, and its key is not called for 60s (1 min) after it (a redrive is): OpenAI "
        "answered 401 invalid_api_key"
    ) in str(second)
    assert calls["/v1/chat/completions"] == 1


async def openai_completion(request: web.Request) -> web.Response:
    return web.json_response(COMPLETION)


async def talkable_event(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "result": {"origin": {"id": 1}}}, status=201)


UPSTREAMS = {"/v1/chat/completions": openai_completion, "/api/v2/origins/event": talkable_event}


async def test_a_self_signed_certificate_ends_the_call_at_once_naming_the_certificate(
    tmp_path: Path,
) -> None:
    """A base URL whose certificate does not verify (a self-signed one: a proxy's, a local
    server's) was ``Unreachable``: an outage, waited on, its circuit open, until the maximum
    wait (ten minutes here), for an answer no retry changes. It is ``CertificateError`` now,
    final at the first call, for OpenAI and for Talkable, saying what OpenSSL said and what to
    do, never the key."""
    async with serving(UPSTREAMS, self_signed(tmp_path).server_context()) as base:
        chat = ChatClient(f"{base}/v1", timeout=10)
        talkable = TalkableClient(f"{base}/api/v2", timeout=10)
        try:
            reports = await scheduled(
                {
                    "openai": functools.partial(chat.complete, CHAT, OPENAI_KEY),
                    "talkable": functools.partial(talkable.publish, command(), TALKABLE_KEY),
                }
            )
        finally:
            await chat.close()
            await talkable.close()
    for upstream, setting in (("openai", "OPENAI"), ("talkable", "TALKABLE")):
        report = reports[upstream]
        assert report.error is not None, upstream
        error = report.error
        assert (error.reason, error.retriable, report.tries) == ("CertificateError", False, 1)
        path = "/v1" if upstream == "openai" else "/api/v2"
        name = "OpenAI" if upstream == "openai" else "Talkable"
        assert str(error) == (
            f"{name}'s TLS certificate at {base}{path} does not verify: self-signed"
            " certificate; no retry fixes it (behind a proxy or a private CA, give its CA"
            f" certificate in SSL_CERT_FILE; else check TALKSTREAM_{setting}_BASE_URL)"
        )
        for key in (OPENAI_KEY, TALKABLE_KEY):
            assert not any(form in str(error) for form in forms(key))


async def verified(bases: dict[str, str]) -> dict[str, list[str]]:
    """What each upstream answers at each base URL: ``["ok", ""]``, or the failure's reason
    and message (run in a child process that trusts the test's authority)."""
    said: dict[str, list[str]] = {}
    for case, base in bases.items():
        chat = ChatClient(f"{base}/v1", timeout=10)
        talkable = TalkableClient(f"{base}/api/v2", timeout=10)
        calls = {
            "openai": functools.partial(chat.complete, CHAT, OPENAI_KEY),
            "talkable": functools.partial(talkable.publish, command(), TALKABLE_KEY),
        }
        try:
            for upstream, call in calls.items():
                try:
                    await call()
                    said[f"{case} {upstream}"] = ["ok", ""]
                except UpstreamError as exc:
                    said[f"{case} {upstream}"] = [exc.reason, str(exc), str(exc.retriable)]
        finally:
            await chat.close()
            await talkable.close()
    return said


CHILD = (
    "import asyncio, json, sys\n"
    "from tests.functional.test_upstream_classes import verified\n"
    "print(json.dumps(asyncio.run(verified(json.loads(sys.argv[1])))))\n"
)


async def test_a_certificate_for_another_host_or_expired_ends_the_call_at_once(
    tmp_path: Path,
) -> None:
    """Signed by an authority the process trusts (``SSL_CERT_FILE``, as an operator gives a
    private CA to both clients), a certificate verifies; one of it for another host, or out
    of date, does not, and says which: ``CertificateError``, not an outage to wait on."""
    authority = Authority(tmp_path)
    certificates = {
        "good": authority.issue("good"),
        "elsewhere": authority.issue("elsewhere", host="api.example.invalid"),
        "expired": authority.issue("expired", expired=True),
    }
    async with contextlib.AsyncExitStack() as stack:
        bases = {
            case: await stack.enter_async_context(serving(UPSTREAMS, issued.server_context()))
            for case, issued in certificates.items()
        }
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, json.dumps(bases),
            cwd=ROOT, env={**os.environ, "SSL_CERT_FILE": str(authority.cert)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    said = json.loads(out)
    assert said["good openai"] == said["good talkable"] == ["ok", ""]  # the authority holds
    why = {
        "elsewhere": "IP address mismatch, certificate is not valid for '127.0.0.1'",
        "expired": "certificate has expired",
    }
    for case, words in why.items():
        for upstream, name in (("openai", "OpenAI"), ("talkable", "Talkable")):
            reason, message, retriable = said[f"{case} {upstream}"]
            assert (reason, retriable) == ("CertificateError", "False"), (case, upstream)
            assert (
                message.startswith(f"{name}'s TLS certificate at {bases[case]}/")
                and f"does not verify: {words}; no retry fixes it" in message
            )

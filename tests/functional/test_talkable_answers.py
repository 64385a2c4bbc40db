"""Every answer Talkable's API v2 documents or implies for ``POST /origins/event``, in the
bodies its reference gives (``{"ok": false, "error_message": ...}``; the status codes of its
introduction: 400, 401, 404, 422, 500-504) and those a proxy before it gives (HTML pages, a
``Retry-After`` in seconds or as an HTTP date), each classified by the Talkable adapter as the
scheduler and the ledger act on it: a success, a wait, or an end with a reason that says what
to do, never carrying the key."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from models.events import PublishCompletion
from models.params import completion_event_number
from streams.clients.talkable import Publication, TalkableClient
from streams.errors import PublishError

KEY = "tk-answers-test-key-0001"
SITE = "my-store"

CREATED = {  # the reference's 201 (origins/event, "no sharing channels passed"), trimmed
    "ok": True,
    "result": {
        "origin": {"id": 1, "type": "Event", "email": "user@store.com", "event_number": "42",
                   "event_category": "newsletter_subscription", "subtotal": 100.44},
        "offer": {"id": 1, "email": "user@store.com", "incentives": {}},
    },
}  # fmt: skip
DUPLICATE = (  # the reference's 400 for origins/event, its trailing newline and all
    "Duplicate entity: Talkable already has existing Event with the same event_number but"
    " different data\n"
)
HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad"
    " Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def in_a_minute() -> str:
    """A ``Retry-After`` as an HTTP date, a minute from when it is answered."""
    return email.utils.formatdate(time.time() + 60, usegmt=True)


def envelope(status: int, message: str, **headers: str) -> web.Response:
    body = {"ok": False, "error_message": message}
    return web.json_response(body, status=status, headers=headers or None)


def html(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


ANSWERS: dict[str, Any] = {
    "created": lambda: web.json_response(CREATED, status=201),
    "identical": lambda: web.json_response(CREATED),  # the same event again: Talkable's 200
    "duplicate": lambda: envelope(400, DUPLICATE),
    "duplicate_200": lambda: envelope(200, DUPLICATE),  # the same, in the envelope only
    "email": lambda: envelope(400, "Email isn't valid"),
    "type": lambda: envelope(400, '`type` must be within ["AffiliateMember", "Purchase", "Event"]'),
    "validation": lambda: envelope(
        422, "Validation failed: Custom properties value is too long (maximum is 4096 characters)"
    ),
    "unauthorized": lambda: envelope(401, "Unauthorized"),
    "echoed": lambda: envelope(401, f"Invalid API key {KEY}"),
    "forbidden": lambda: html(403, "<html><title>Attention Required! | Cloudflare</title></html>"),
    "no_site": lambda: envelope(404, "No site found by `site_slug`."),
    "no_api": lambda: html(404, "<html><body>Not Found</body></html>"),
    "ok_false": lambda: envelope(200, "Email isn't valid"),
    "no_ok": lambda: web.json_response({"result": {"origin": {"id": 1}}}),
    "page": lambda: html(200, "<html><body>Welcome to Talkable</body></html>"),
    "rails": lambda: web.json_response({"error": "param is missing: data"}, status=400),
    "throttled": lambda: envelope(429, "Too many requests", **{"Retry-After": "2"}),
    "throttled_date": lambda: envelope(429, "Too many requests", **{"Retry-After": in_a_minute()}),
    "error": lambda: envelope(500, "Internal server error"),
    "bad_gateway": lambda: html(502, HTML_502),
    "maintenance": lambda: html(503, "<h1>back soon</h1>", **{"Retry-After": in_a_minute()}),
    "gateway_timeout": lambda: html(504, "<h1>504 Gateway Time-out</h1>"),
    # a load balancer's answers without a body, or with JSON that is not an object: they said
    # "answered 503: error", nothing of what it was
    "empty_503": lambda: web.Response(status=503),
    "empty_429": lambda: web.Response(status=429, headers={"Retry-After": "2"}),
    "json_null_502": lambda: web.json_response(None, status=502),
}


@pytest.fixture
async def talkable() -> AsyncIterator[str]:
    """One server answering ``/<answer>/api/v2/origins/event`` with ``ANSWERS[answer]``."""

    async def answer(request: web.Request) -> web.Response:
        response: web.Response = ANSWERS[request.match_info["answer"]]()
        return response

    app = web.Application()
    app.router.add_post("/{answer}/api/v2/origins/event", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def command(number: str | None = None) -> PublishCompletion:
    return PublishCompletion(
        request_id="r-1",
        person=f"{SITE}:a@example.com",
        site=SITE,
        email="a@example.com",
        attempt=1,
        issued_at_ms=0,
        event_number=number or completion_event_number(None, "r-1"),
        custom_properties={"generated_text": "hi"},
        talkable_api_key="sealed",
    )


async def publish(base: str, answer: str, number: str | None = None) -> Publication | PublishError:
    client = TalkableClient(f"{base}/{answer}/api/v2", timeout=10)
    try:
        return (await client.publish(command(number), KEY))[0]
    except PublishError as error:
        assert KEY not in str(error)
        return error
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("answer", "number", "duplicate"),
    [
        ("created", None, False),
        ("identical", None, False),
        ("duplicate", None, True),
        ("duplicate_200", None, True),
        ("no_ok", None, False),
    ],
)
async def test_a_success_is_published(talkable, answer, number, duplicate) -> None:
    """A 400 "Duplicate entity" for the request's own number: an earlier attempt landed; so
    does a 2xx whose envelope says it (``"ok": false``), which was a ``BadRequest``. A 2xx
    JSON object that does not say ``"ok"`` (an API like Talkable's that says less) is a
    success too: only Talkable's error envelope, ``"ok": false``, is not."""
    published = await publish(talkable, answer, number)
    assert published == Publication(duplicate=duplicate)


# answer → (reason, status, retriable, throttle, refuses, what the message says)
ENDS = {
    "duplicate": ("DuplicateEventNumber", 400, False, False, "request", "the text was not written"),
    "duplicate_200": ("DuplicateEventNumber", 200, False, False, "request", "200 Duplicate entity"),
    "email": ("BadRequest", 400, False, False, "request", "Talkable answered 400: Email isn't"),
    "type": ("BadRequest", 400, False, False, "request", "`type` must be within"),
    "validation": ("BadRequest", 422, False, False, "request", "422: Validation failed: Custom"),
    "ok_false": ("BadRequest", 200, False, False, "request", "Talkable answered 200: Email isn't"),
    "rails": ("BadRequest", 400, False, False, "request", "400: param is missing: data"),
    "no_api": ("BadRequest", 404, False, False, "request", "it ends in /api/v2"),
    "unauthorized": ("Unauthorized", 401, False, False, "key", "the webhook's api_key"),
    "echoed": ("Unauthorized", 401, False, False, "key", "Invalid API key [redacted]"),
    "forbidden": ("Forbidden", 403, False, False, "key", "a proxy or a firewall before Talkable"),
    "no_site": ("SiteNotFound", 404, False, False, "site", "it has no site `my-store`"),
    "page": ("BadAnswer", 200, True, False, "request", "not its API's JSON (text/html)"),
    "throttled": ("RateLimited", 429, True, True, "request", "429: Too many requests"),
    "throttled_date": ("RateLimited", 429, True, True, "request", "429: Too many requests"),
    "error": ("ServerError", 500, True, False, "request", "500: Internal server error"),
    "bad_gateway": ("ServerError", 502, True, False, "request", "502: Bad Gateway"),
    "maintenance": ("ServerError", 503, True, False, "request", "503: Service Unavailable"),
    "gateway_timeout": ("ServerError", 504, True, False, "request", "504: Gateway Timeout"),
    "empty_503": ("ServerError", 503, True, False, "request", "503: Service Unavailable"),
    "empty_429": ("RateLimited", 429, True, True, "request", "429: Too Many Requests"),
    "json_null_502": ("ServerError", 502, True, False, "request", "502: Bad Gateway"),
}


@pytest.mark.parametrize("answer", sorted(ENDS))
async def test_every_other_answer_is_classified_and_says_what_it_was(talkable, answer) -> None:
    campaigns = answer.startswith("duplicate")  # (the request's own number: a success)
    error = await publish(talkable, answer, "campaign-42" if campaigns else None)
    assert isinstance(error, PublishError)
    reason, status, retriable, throttle, refuses, said = ENDS[answer]
    assert (error.reason, error.status, error.retriable, error.throttle, error.refuses) == (
        reason,
        status,
        retriable,
        throttle,
        refuses,
    )
    assert said in str(error)


@pytest.mark.parametrize("answer", ["unauthorized", "no_site"])
async def test_a_refusal_says_first_what_to_do(talkable, answer) -> None:
    """The key and the site are the webhook's, as the campaign renders them: a redrive sends
    the same again, so the message says to fix the campaign and resend; first, as the dead
    letter and the projection keep the first 500 characters of it."""
    error = await publish(talkable, answer)
    assert isinstance(error, PublishError)
    said = str(error)
    assert said.index("resend its webhooks") < said.index("): ")
    assert "a redrive sends the same" in said


@pytest.mark.parametrize(("answer", "wait"), [("throttled", (2, 2)), ("throttled_date", (55, 61))])
async def test_a_retry_after_in_seconds_or_as_a_date_is_the_wait(talkable, answer, wait) -> None:
    error = await publish(talkable, answer)
    assert isinstance(error, PublishError) and error.limits is not None
    assert error.limits.retry_after_s is not None
    assert wait[0] <= error.limits.retry_after_s <= wait[1]
    outage = await publish(talkable, "maintenance")  # a 503's Retry-After holds the calls too
    assert isinstance(outage, PublishError) and outage.limits is not None
    assert 55 <= (outage.limits.retry_after_s or 0) <= 61

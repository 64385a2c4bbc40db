"""The request contract exactly as Talkable sends it, through the real ingress app.

Every shape becomes the same ``RequestReceived``; bad input is a 4xx naming the fields with
nothing produced; signatures guard configured sites; a broker outage is a 503 that Talkable
retries; the keys never appear in what is produced, logged or answered.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from aiohttp import ClientResponse
from annotated_types import MaxLen
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from models.events import ChatRequest, RequestReceived, RequestSpec
from models.params import GenerateParams, OpenAIParams, UsageLimit, person_key
from streams.clients.openai_chat import chat_body
from streams.errors import BrokerUnavailable, PartitionsAdded
from streams.projection.tables import EndedMinuteRow, RequestRow
from tests.functional.conftest import (
    FORM,
    JSON,
    OPENAI_KEY,
    SECRETS,
    SIGNED_SITE,
    SITE_KEY,
    TALKABLE_KEY,
    Body,
    Ingress,
    StartIngress,
    envelope,
    form_body,
    multipart,
    seed_params,
    sent_until_closed,
    shapes,
    sign,
)
from tests.support import form_pairs, with_changes

SHAPES = shapes(seed_params())

# What the seed means, whatever shape it came in (DESIGN.md §1).
EXPECTED_SPEC = RequestSpec(
    site="acme-store",
    email="alice@example.com",
    event_number="order-42-complete",
    chat=ChatRequest(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You write short, funny verses."},
            {
                "role": "user",
                "content": "There once was a user named Alice, who bought a kayak & paddle; "
                "now create a humorous verse = with this information [sic].",
            },
        ],
        max_tokens=150,
        extra={"temperature": 0.7, "stop": ["\n\n", "END"]},
    ),
    usage_limit=UsageLimit(
        amount=3,
        duration_in_seconds=3600,
        start_time=1700000000,
        current_time=1700000100,
        current_usage_amount=0,
    ),
    trigger_criteria="true",
)


def leaked(text: str | bytes) -> list[str]:
    """Which of the test's secrets appear in ``text``."""
    data = text if isinstance(text, bytes) else text.encode()
    return [secret for secret in SECRETS if secret.encode() in data]


def json_body(tree: dict[str, Any]) -> bytes:
    return json.dumps(tree).encode()


def changed(**changes: Any) -> dict[str, Any]:
    """The seed with ``a__b`` paths set (``...`` deletes the key)."""
    return with_changes(seed_params(), **changes)


async def send(ingress: Ingress, body: Body, **kwargs: Any) -> ClientResponse:
    return await ingress.post(body.body, body.content_type, query=body.query, **kwargs)


async def accepted(ingress: Ingress, body: Body, **kwargs: Any) -> RequestReceived:
    """POST ``body``; it must answer 202 with the id of exactly one newly produced request."""
    before = len(ingress.sink.produced)
    response = await send(ingress, body, **kwargs)
    answer = await response.json()
    assert response.status == 202, answer
    new = ingress.sink.produced[before:]
    assert len(new) == 1
    received = ingress.sink.received()[-1]
    assert answer == {"request_id": received.request_id}
    assert new[0].topic == ingress.topic == "functest-requests"
    assert new[0].key == received.person.encode()
    return received


async def rejected(
    ingress: Ingress, body: Body, status: int, **kwargs: Any
) -> list[dict[str, str]]:
    """POST ``body``; it must answer ``status`` with the error list and produce nothing."""
    before = len(ingress.sink.produced)
    response = await send(ingress, body, **kwargs)
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    assert ingress.sink.produced[before:] == []
    assert leaked(text) == []
    errors: list[dict[str, str]] = json.loads(text)["errors"]
    assert errors and all(set(e) == {"field", "message"} and e["message"] for e in errors)
    return errors


# --- 1. every shape, one request ------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_each_shape_becomes_the_same_request(ingress: Ingress, shape: str) -> None:
    reference = await accepted(ingress, SHAPES["json"])
    received = await accepted(ingress, SHAPES[shape])

    assert received.request_id == reference.request_id
    assert received.person == "acme-store:alice@example.com"
    assert received.spec == EXPECTED_SPEC
    assert ingress.box.open(received.secrets.talkable_api_key) == TALKABLE_KEY
    assert ingress.box.open(received.secrets.openai_api_key) == OPENAI_KEY


async def test_defaults_fill_what_the_webhook_leaves_out(ingress: Ingress) -> None:
    minimal = {
        "site": "acme-store",
        "email": "bob@example.com",
        "api_key": TALKABLE_KEY,
        "openai[messages][][role]": "user",
        "openai[messages][][content]": "Hello",
        "openai[api_key]": OPENAI_KEY,
    }
    received = await accepted(ingress, Body(FORM, form_body(minimal)))

    assert received.spec.chat.model == "gpt-3.5-turbo"
    assert received.spec.chat.max_tokens == 150
    assert received.spec.chat.extra == {}
    assert received.spec.usage_limit is None
    assert received.spec.event_number is None
    assert received.spec.trigger_criteria is None


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_another_method_is_a_405_in_the_answers_own_shape(
    ingress: Ingress, method: str
) -> None:
    response = await ingress.client.request(method, "/chat-gpt/generate", data=b"{}")

    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert await response.json() == {
        "errors": [{"field": "method", "message": "not allowed; the webhook is a POST"}]
    }
    assert ingress.sink.produced == []


async def test_max_completion_tokens_is_the_completions_cap(ingress: Ingress) -> None:
    """The cap the generator sends and paces by: ``max_completion_tokens`` when given (for
    reasoning models, which refuse ``max_tokens``), else ``max_tokens``."""
    tree = changed(openai__model="o3-mini", openai__max_completion_tokens="400")
    received = await accepted(ingress, Body(JSON, json_body(tree)))

    assert received.spec.chat.max_tokens == 400
    assert received.spec.chat.extra["max_completion_tokens"] == 400


@pytest.mark.parametrize("max_tokens", [..., "60"])
async def test_a_reasoning_models_cap_goes_as_max_completion_tokens(
    ingress: Ingress, max_tokens: Any
) -> None:
    """A reasoning model refuses ``max_tokens``: a webhook for one that gives no
    ``max_completion_tokens`` has its cap (the default 150, or its ``max_tokens``) sent as
    ``max_completion_tokens``, and is paced by it (the least its call costs)."""
    tree = changed(openai__model="o3-mini", openai__max_tokens=max_tokens)
    received = await accepted(ingress, Body(JSON, json_body(tree)))

    cap = 150 if max_tokens is ... else 60
    assert received.spec.chat.max_tokens == cap
    body = chat_body(received.spec.chat)
    assert (body.get("max_tokens"), body["max_completion_tokens"]) == (None, cap)


async def test_a_messages_name_travels_with_it(ingress: Ingress) -> None:
    """OpenAI's optional ``name`` of a message's participant, from a form as from JSON, goes
    to OpenAI in its message; a message without one has none."""
    tree = changed(openai__messages__1__name="Alice_42")
    received = await accepted(ingress, Body(FORM, form_body(tree)))

    assert [m.get("name") for m in received.spec.chat.messages] == [None, "Alice_42"]
    assert chat_body(received.spec.chat)["messages"] == received.spec.chat.messages
    assert "name" not in received.spec.chat.messages[0]


async def test_a_name_openai_would_refuse_is_a_422_that_says_its_rule(ingress: Ingress) -> None:
    body = Body(JSON, json_body(changed(openai__messages__1__name="Alice Smith")))

    errors = await rejected(ingress, body, 422)

    assert errors == [
        {
            "field": "openai.messages.1.name",
            "message": "must be 1 to 64 letters (a-z, A-Z), digits, underscores or hyphens, "
            "no spaces: OpenAI's rule for a message's name",
        }
    ]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-be"])
async def test_json_in_utf16_or_utf32_is_the_same_request(ingress: Ingress, encoding: str) -> None:
    reference = await accepted(ingress, SHAPES["json"])

    received = await accepted(ingress, Body(JSON, json.dumps(seed_params()).encode(encoding)))

    assert received.request_id == reference.request_id
    assert received.spec == EXPECTED_SPEC


async def test_a_query_string_in_utf8_is_read_as_sent(ingress: Ingress) -> None:
    body = json_body(changed(event_number=...))

    received = await accepted(ingress, Body(JSON, body, query="event_number=caf%C3%A9+%E2%82%AC"))

    assert received.spec.event_number == "café €"


async def test_the_request_carries_the_time_it_was_received(ingress_with: StartIngress) -> None:
    ingress = await ingress_with(clock=lambda: 1_767_225_600.25)

    received = await accepted(ingress, SHAPES["legacy form"])

    assert received.at_ms == 1_767_225_600_250


@pytest.mark.parametrize(
    ("current_time", "allowed", "answer"),
    [
        (1_767_225_600 - 86_400, 300, None),  # a day old: Talkable retrying, as first rendered
        (1_767_225_600 + 300, 300, None),  # clocks a little apart
        (1_767_225_600 + 301, 300, "is 301 seconds ahead of this server's clock (at most 300)"),
        (1_767_225_600 + 1, 0, "is 1 seconds ahead of this server's clock (at most 0)"),
        (
            1_767_225_600_000,  # '%Q' in the template, not '%s'
            300,
            "reads as after the year 9999: epoch seconds expected, not milliseconds",
        ),
    ],
)
async def test_an_event_time_ahead_of_the_clock_is_refused(
    ingress_with: StartIngress, current_time: int, allowed: int, answer: str | None
) -> None:
    """The ledger judges by usage_limit.current_time: a window started in the future would
    hold the person's later webhooks until then (for good, in milliseconds)."""
    ingress = await ingress_with(clock=lambda: 1_767_225_600.9, max_clock_ahead_seconds=allowed)
    body = Body(JSON, json_body(changed(usage_limit__current_time=str(current_time))))

    if answer is None:
        received = await accepted(ingress, body)
        assert received.spec.usage_limit is not None
        assert received.spec.usage_limit.current_time == current_time
    else:
        errors = await rejected(ingress, body, 422)
        assert errors == [{"field": "usage_limit.current_time", "message": answer}]


# --- 2. rejections --------------------------------------------------------------------------

REJECTIONS: dict[str, tuple[Body, int, set[str]]] = {
    "empty json object": (Body(JSON, b"{}"), 422, {"site", "email", "api_key", "openai"}),
    "no messages, no openai key": (
        Body(JSON, json_body(changed(openai__messages=..., openai__api_key=...))),
        422,
        {"openai.messages", "openai.api_key"},
    ),
    "usage limit without current_time": (
        Body(FORM, form_body(changed(usage_limit__current_time=...))),
        422,
        {"usage_limit.current_time"},
    ),
    "several wrong values at once": (
        Body(
            JSON,
            json_body(
                changed(
                    email="not-an-email",
                    openai__max_tokens="ten",
                    openai__messages__0__role="robot",
                    usage_limit__amount="-1",
                )
            ),
        ),
        422,
        {"email", "openai.max_tokens", "openai.messages.0.role", "usage_limit.amount"},
    ),
    "a message's name that OpenAI refuses": (
        Body(JSON, json_body(changed(openai__messages__1__name="Alice Smith"))),
        422,
        {"openai.messages.1.name"},
    ),
    # every event of its generation carries it, and the projection's column holds 200
    "a model name longer than the projection holds": (
        Body(JSON, json_body(changed(openai__model="ft:gpt-4o-mini:" + "x" * 186))),
        422,
        {"openai.model"},
    ),
    "legacy extras that are not JSON": (
        Body(FORM, form_body({**envelope("acme-store"), "extras": "{not json"})),
        422,
        {"extras"},
    ),
    "truncated json": (Body(JSON, b'{"site": "acme-store", "email": '), 400, {"body"}),
    "json that is not an object": (Body(JSON, b'["acme-store"]'), 400, {"body"}),
    "json with NaN": (Body(JSON, b'{"site": NaN}'), 400, {"site"}),
    "json with a number beyond a double's range": (
        Body(JSON, json_body(changed(usage_limit="MARK")).replace(b'"MARK"', b"1e999")),
        422,
        {"usage_limit"},
    ),
    "json in latin-1": (Body(JSON, '{"site": "café"}'.encode("latin-1")), 400, {"body"}),
    "form name both value and nested": (
        Body(FORM, b"site=acme-store&site[slug]=acme"),
        400,
        {"site"},
    ),
    "form that is not UTF-8": (Body(FORM, b"site=%FF%FE"), 400, {"body"}),
    # Rack keeps the last of a scalar given twice: the first was dropped without a word
    "form scalar given twice": (
        Body(FORM, form_body(seed_params()) + b"&site=other-store"),
        400,
        {"site"},
    ),
    "form nested scalar given twice": (
        Body(FORM, form_body(seed_params()) + b"&openai[model]=gpt-4o&openai[model]=gpt-4.1"),
        400,
        {"openai.model"},
    ),
    "multipart scalar given twice": (
        multipart([*form_pairs(seed_params()), ("email", "bob@example.com")]),
        400,
        {"email"},
    ),
    "query scalar given twice": (
        Body(JSON, json_body(changed(site=...)), query="site=acme-store&site=other-store"),
        400,
        {"site"},
    ),
    "form name of digits given twice": (
        Body(FORM, form_body(seed_params()) + b"&4111111111111111=1&4111111111111111=2"),
        400,
        {"body"},
    ),
    # a name of digits (a card number?) is cut off like any name the contract does not know
    "a message with a field named by a number": (
        Body(JSON, json_body(changed(openai__messages__0__4111111111111111="y"))),
        422,
        {"openai.messages.0"},
    ),
    "form name of digits both value and nested": (
        Body(FORM, b"4111111111111111=1&4111111111111111[a]=2"),
        400,
        {"body"},
    ),
    "query name of digits both value and nested": (
        Body(JSON, json_body(seed_params()), query="4111111111111111=1&4111111111111111[a]=2"),
        400,
        {"query"},
    ),
    "query that is not UTF-8": (
        Body(JSON, json_body(changed(site=...)), query="site=acme-store%ff%fe"),
        400,
        {"query"},
    ),
    "query with a broken UTF-8 sequence": (
        Body(JSON, json_body(seed_params()), query="openai[messages][0][content]=%c3%28bad"),
        400,
        {"query"},
    ),
    "multipart without its parts": (
        Body("multipart/form-data; boundary=abc", b"--abc\r\nno headers, no end"),
        400,
        {"body"},
    ),
    "plain text": (Body("text/plain", b"site=acme-store"), 415, {"content-type"}),
    "xml": (Body("application/xml", b"<site>acme-store</site>"), 415, {"content-type"}),
    "form in latin-1": (
        Body(FORM + "; charset=latin-1", form_body(seed_params())),
        415,
        {"content-type"},
    ),
}


async def test_a_scalar_given_twice_is_named_and_the_same_value_twice_is_one(
    ingress: Ingress,
) -> None:
    """``site=s&site=t`` took the last value, silently; arrays are what repeats (``m[]``)."""
    errors = await rejected(ingress, Body(FORM, form_body(seed_params()) + b"&site=t"), 400)
    assert errors == [{"field": "site", "message": "given more than once, with different values"}]

    again = form_body(seed_params()) + b"&" + urlencode({"site": seed_params()["site"]}).encode()
    received = await accepted(ingress, Body(FORM, again))
    assert received.spec == (await accepted(ingress, Body(FORM, form_body(seed_params())))).spec


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_bad_input_is_a_4xx_naming_the_fields_and_nothing_is_produced(
    ingress: Ingress, case: str
) -> None:
    body, status, fields = REJECTIONS[case]

    errors = await rejected(ingress, body, status)

    assert {e["field"] for e in errors} == fields


def _longest(model: type[BaseModel], name: str) -> int | None:
    limits = [m.max_length for m in model.model_fields[name].metadata if isinstance(m, MaxLen)]
    return min(limits, default=None)


@pytest.mark.parametrize(
    ("column", "longest"),
    [
        pytest.param(
            RequestRow.__table__.c.model, lambda: _longest(OpenAIParams, "model"), id="model"
        ),
        pytest.param(
            RequestRow.__table__.c.site, lambda: _longest(GenerateParams, "site"), id="site"
        ),
        pytest.param(
            EndedMinuteRow.__table__.c.site,
            lambda: _longest(GenerateParams, "site"),
            id="site per minute",
        ),
        pytest.param(
            RequestRow.__table__.c.person,
            lambda: (
                (_longest(GenerateParams, "site") or 0)
                + len(":")
                + (_longest(GenerateParams, "email") or 0)
            ),
            id="person",
        ),
    ],
)
def test_what_a_webhook_may_carry_fits_the_projections_columns(column: Any, longest: Any) -> None:
    """An accepted webhook's values reach the SQL projection; one longer than its VARCHAR
    column made PostgreSQL refuse the projector's whole batch, retried for good: an
    ``openai.model`` of 201 characters, answered 202, held up the projection of every site."""
    limit = longest()
    assert limit is not None, f"the contract takes any length for {column}"
    assert limit <= column.type.length, column


async def test_a_body_one_byte_over_the_limit_is_413(ingress_with: StartIngress) -> None:
    ingress = await ingress_with(max_body_bytes=4096)
    valid = json_body(seed_params())
    at_limit = valid + b" " * (4096 - len(valid))

    await accepted(ingress, Body(JSON, at_limit))
    errors = await rejected(ingress, Body(JSON, at_limit + b" "), 413)

    assert errors == [{"field": "body", "message": "larger than 4096 bytes"}]


async def test_a_declared_length_over_the_limit_is_413_before_the_body_is_read(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(max_body_bytes=4096)

    errors = await rejected(ingress, Body(JSON, b"{}"), 413, headers={"Content-Length": "4097"})

    assert [e["field"] for e in errors] == ["body"]


async def test_a_chunked_body_over_the_limit_is_413(ingress_with: StartIngress) -> None:
    ingress = await ingress_with(max_body_bytes=4096)
    valid = json_body(seed_params())

    async def chunks() -> AsyncIterator[bytes]:
        yield valid
        yield b" " * (4097 - len(valid))

    before = len(ingress.sink.produced)
    response = await ingress.client.post(
        "/chat-gpt/generate", data=chunks(), headers={"Content-Type": JSON}
    )

    assert response.status == 413
    assert (await response.json())["errors"][0]["field"] == "body"
    assert ingress.sink.produced[before:] == []


# --- signatures -----------------------------------------------------------------------------

SIGNED = json_body(changed(site=SIGNED_SITE))
SITE_KEYS = f"{SIGNED_SITE}={SITE_KEY}, other-store=another-key"
MISSING_SIGNATURE = (
    "missing: this site signs its webhooks (TALKSTREAM_SITE_SECURITY_KEYS): send "
    "Base64(hex(HMAC-SHA256(its security key, the raw body))), or its security key in a legacy "
    "webhook's key field"
)
WRONG_SIGNATURE = "wrong: not Base64(hex(HMAC-SHA256(the site's security key, the raw body)))"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"x-talkable-signature": ""}, id="empty"),
        pytest.param({"x-talkable-signature": sign("another-key", SIGNED)}, id="other key"),
        pytest.param({"x-talkable-signature": sign(SITE_KEY, SIGNED + b" ")}, id="other body"),
        pytest.param({"x-talkable-signature": sign(SITE_KEY, SIGNED).lower()}, id="case changed"),
    ],
)
async def test_a_configured_site_needs_its_signature(
    ingress_with: StartIngress, headers: dict[str, str]
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)

    errors = await rejected(ingress, Body(JSON, SIGNED), 401, headers=headers)

    assert [e["field"] for e in errors] == ["x-talkable-signature"]
    # which of the two it is ("missing or wrong" either way before), quoting nothing sent
    sent = headers.get("x-talkable-signature")
    assert errors[0]["message"] == (MISSING_SIGNATURE if not sent else WRONG_SIGNATURE)


@pytest.mark.parametrize(
    ("configured", "sent"),
    [
        pytest.param(SIGNED_SITE, SIGNED_SITE.upper(), id="webhook in capitals"),
        pytest.param(SIGNED_SITE.title(), SIGNED_SITE, id="key set in capitals"),
    ],
)
async def test_a_site_named_in_another_case_needs_its_signature_too(
    ingress_with: StartIngress, configured: str, sent: str
) -> None:
    """The console and the tools take a site in any case; the ingress took a webhook naming
    the signing site in another case unsigned (a forged "SIGNED-STORE", or a key set for
    "Signed-Store" leaving the site's own webhooks unchecked)."""
    ingress = await ingress_with(site_security_keys=f"{configured}={SITE_KEY}")
    body = json_body(changed(site=sent))

    errors = await rejected(ingress, Body(JSON, body), 401)
    received = await accepted(
        ingress, Body(JSON, body), headers={"x-talkable-signature": sign(SITE_KEY, body)}
    )

    assert [e["field"] for e in errors] == ["x-talkable-signature"]
    assert received.spec.site == sent


async def test_a_signed_webhook_and_a_legacy_one_in_another_case_are_one_person(
    ingress_with: StartIngress,
) -> None:
    """The signature check took ``SIGNED-STORE`` for ``signed-store``, and the ledger took them
    for two sites: a signed webhook in capitals and a legacy one with the site's key landed as
    two people, two usage windows. One person now, each keeping its site as typed."""
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    signed = json_body(changed(site=SIGNED_SITE.upper()))
    fields = {**envelope(SIGNED_SITE), "key": SITE_KEY}
    legacy = form_body({**fields, "extras": json.dumps(changed(site=...))})

    capitals = await accepted(
        ingress, Body(JSON, signed), headers={"x-talkable-signature": sign(SITE_KEY, signed)}
    )
    lower = await accepted(ingress, Body(FORM, legacy))

    assert capitals.person == lower.person == person_key(SIGNED_SITE, capitals.spec.email)
    assert {item.key for item in ingress.sink.produced} == {lower.person.encode()}
    assert (capitals.spec.site, lower.spec.site) == (SIGNED_SITE.upper(), SIGNED_SITE)


async def test_a_correct_signature_over_the_raw_body_is_accepted(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    legacy = form_body({**envelope(SIGNED_SITE), "extras": json.dumps(changed(site=...))})

    json_request = await accepted(
        ingress, Body(JSON, SIGNED), headers={"x-talkable-signature": sign(SITE_KEY, SIGNED)}
    )
    form_request = await accepted(
        ingress, Body(FORM, legacy), headers={"x-talkable-signature": sign(SITE_KEY, legacy)}
    )

    assert json_request.spec.site == form_request.spec.site == SIGNED_SITE


async def test_a_signed_request_takes_its_params_from_the_signed_body_only(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    query = [("event_number", "attacker"), ("openai[temperature]", "1.9")]

    received = await accepted(
        ingress,
        Body(JSON, SIGNED, query=query),
        headers={"x-talkable-signature": sign(SITE_KEY, SIGNED)},
    )

    assert received.spec.event_number != "attacker"
    assert (
        received.spec
        == (
            await accepted(
                ingress,
                Body(JSON, SIGNED),
                headers={"x-talkable-signature": sign(SITE_KEY, SIGNED)},
            )
        ).spec
    )


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("event_number=attacker%ff%fe", id="not UTF-8"),
        pytest.param("openai[top_p]=abc&openai[seed]=x", id="invalid params"),
        pytest.param("4111111111111111=1&4111111111111111[a]=2", id="conflicting names"),
    ],
)
async def test_a_signed_request_is_not_refused_for_its_query_string(
    ingress_with: StartIngress, query: str
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    signature = {"x-talkable-signature": sign(SITE_KEY, SIGNED)}

    received = await accepted(ingress, Body(JSON, SIGNED, query=query), headers=signature)

    assert received.spec == (await accepted(ingress, Body(JSON, SIGNED), headers=signature)).spec


async def test_an_unsigned_request_with_a_signing_site_in_its_query_is_still_refused(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    body = json_body(changed(site=...))

    errors = await rejected(ingress, Body(JSON, body, query=f"site={SIGNED_SITE}"), 401)

    assert [e["field"] for e in errors] == ["x-talkable-signature"]


@pytest.mark.parametrize(
    ("shape", "query"),
    [
        pytest.param("json", None, id="json"),
        pytest.param("legacy", None, id="legacy form"),
        pytest.param("json", f"site={SIGNED_SITE}", id="site in the query"),
    ],
)
async def test_a_signing_sites_invalid_params_are_judged_only_once_the_sender_is_known(
    ingress_with: StartIngress, shape: str, query: str | None
) -> None:
    """An unsigned webhook naming a signing site is refused for its signature, not told what
    is wrong with its params; signed, it is told."""
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    bad = {"email": "not-an-email", "openai__temperature": "hot"}
    if shape == "legacy":
        body = Body(FORM, form_body({**envelope(SIGNED_SITE), "extras": json.dumps(
            changed(site=..., **bad))}))  # fmt: skip
    else:
        tree = changed(site=SIGNED_SITE if query is None else ..., **bad)
        body = Body(JSON, json_body(tree), query=query)

    unsigned = await rejected(ingress, body, 401)
    signed = await rejected(
        ingress, body, 422, headers={"x-talkable-signature": sign(SITE_KEY, body.body)}
    )

    assert unsigned == [{"field": "x-talkable-signature", "message": MISSING_SIGNATURE}]
    assert {e["field"] for e in signed} == {"email", "openai.temperature"}


async def test_an_invalid_webhook_of_a_site_that_signs_nothing_is_told_what_is_wrong(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)

    errors = await rejected(ingress, Body(JSON, json_body(changed(email="nope"))), 422)

    assert [e["field"] for e in errors] == ["email"]


# Talkable's Create Coupon webhook, as its spec (reference/talkable-webhooks.openapi.yml)
# gives its payload: Talkable's data, beside the marketer's params in ``extras``
COUPON_PAYLOAD = {
    "coupon_auto_sync_enabled": False,
    "coupon_code": "ALICE-10",
    "coupon_list_id": 7,
    "coupon_list_name": "Advocate coupons",
    "email": "alice@example.com",
    "discount_amount": "10.0",
    "percentage_discount": True,
    "usage_limit": 1,  # the coupon's number of uses
    "expires_at": "2026-12-31T00:00:00Z",
}


@pytest.mark.parametrize("shape", ["json", "form"])
async def test_a_create_coupon_webhook_is_not_limited_by_its_coupons_usage_limit(
    ingress: Ingress, shape: str
) -> None:
    """Its payload's ``usage_limit`` (an integer: how often the coupon may be used) was read as
    the params' usage window: every such webhook without one of its own in ``extras`` was a
    422 naming ``usage_limit``, a field the marketer never set, and Talkable retries it."""
    fields = {**envelope("acme-store"), "type": "create_coupon_web_hook"}
    extras = changed(site=..., usage_limit=...)
    if shape == "json":
        body = Body(JSON, json_body({**fields, "extras": extras, "payload": COUPON_PAYLOAD}))
    else:
        parts = {"extras": json.dumps(extras), "payload": json.dumps(COUPON_PAYLOAD)}
        body = Body(FORM, form_body({**fields, **parts}))

    received = await accepted(ingress, body)

    assert received.spec.usage_limit is None
    assert received.spec.email == "alice@example.com"


async def test_a_create_coupon_webhook_takes_the_usage_limit_its_extras_give(
    ingress: Ingress,
) -> None:
    fields = {**envelope("acme-store"), "type": "create_coupon_web_hook"}
    extras = changed(site=...)
    body = Body(JSON, json_body({**fields, "extras": extras, "payload": COUPON_PAYLOAD}))

    received = await accepted(ingress, body)

    assert received.spec.usage_limit == EXPECTED_SPEC.usage_limit


@pytest.mark.parametrize(
    ("webhook_key", "status"),
    [pytest.param(SITE_KEY, 202, id="its site key"), pytest.param("guess", 401, id="wrong key")],
)
async def test_a_legacy_webhook_authenticates_with_its_key_field(
    ingress_with: StartIngress, webhook_key: str, status: int
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)
    fields = {**envelope(SIGNED_SITE), "key": webhook_key}
    legacy = form_body({**fields, "extras": json.dumps(changed(site=...))})

    response = await send(ingress, Body(FORM, legacy))

    assert response.status == status
    assert len(ingress.sink.produced) == (1 if status == 202 else 0)


async def test_a_site_without_a_key_needs_no_signature_by_default(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS)

    received = await accepted(ingress, SHAPES["json"])

    assert received.spec.site == "acme-store"


async def test_when_signatures_are_required_a_site_without_a_key_is_refused(
    ingress_with: StartIngress,
) -> None:
    ingress = await ingress_with(site_security_keys=SITE_KEYS, require_signature=True)
    body = SHAPES["json"].body

    errors = await rejected(
        ingress, SHAPES["json"], 401, headers={"x-talkable-signature": sign(SITE_KEY, body)}
    )
    await accepted(
        ingress, Body(JSON, SIGNED), headers={"x-talkable-signature": sign(SITE_KEY, SIGNED)}
    )

    assert errors == [{"field": "x-talkable-signature", "message": "no security key for this site"}]


# --- the broker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outage", "message"),
    [
        (
            BrokerUnavailable(
                "Kafka unavailable: cannot connect to a broker at 10.0.0.7:9092 "
                "(KafkaConnectionError)",
                told="Kafka could not be reached",
            ),
            "nothing was written: Kafka could not be reached; retry after 5 seconds",
        ),
        (
            BrokerUnavailable(
                "Kafka is not acknowledging; nothing was sent",
                told="Kafka has not acknowledged a write for more than 5 seconds, so new ones "
                "are refused until it does",
            ),
            "nothing was written: Kafka has not acknowledged a write for more than 5 seconds, "
            "so new ones are refused until it does; retry after 5 seconds",
        ),
        (
            BrokerUnavailable(
                "the ingress stopped before Kafka acknowledged the record, which may be written",
                told="the ingress stopped before Kafka acknowledged the record",
                written=None,
            ),
            "perhaps written: the ingress stopped before Kafka acknowledged the record; "
            "retry after 5 seconds: the same webhook within 86400 seconds is the same request, "
            "processed once",
        ),
    ],
    ids=["unreachable", "not-acknowledging", "perhaps-written"],
)
async def test_a_broker_outage_is_a_503_talkable_retries_and_nothing_is_lost(
    ingress: Ingress, outage: BrokerUnavailable, message: str
) -> None:
    """The 503 says whether the webhook was written, what Kafka did, and when to retry: it
    said "temporarily unavailable, retry" whatever happened, naming no service, and said
    nothing was written of a record the producer may have written. It names no broker."""
    ingress.sink.outage = outage

    refused = await send(ingress, SHAPES["legacy form"])
    text = await refused.text()

    assert refused.status == 503
    assert refused.headers["Retry-After"] == "5"
    answer = json.loads(text)
    assert answer["errors"] == [{"field": "kafka", "message": message}]
    assert "9092" not in text  # the log's detail, not the sender's
    assert leaked(text) == []
    assert ingress.sink.produced == []

    ingress.sink.outage = None
    retried = await accepted(ingress, SHAPES["legacy form"])
    assert retried.spec == EXPECTED_SPEC
    assert answer["request_id"] == retried.request_id  # the one the retry was accepted as


async def test_partitions_added_are_a_503_naming_the_cause_and_the_fix_logged_once(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    """[requests] and the ledger's changelog with other partition counts (``KafkaSink.split``):
    every webhook is refused until an operator redeploys. Talkable was told "temporarily
    unavailable, retry" and the log said it at WARNING for each webhook (thousands in a
    campaign's burst), naming no fix. The answer stays a 503 (nothing written; Talkable may
    retry), naming the cause and the fix; the log says it once, as an ERROR, per change."""
    cause = (
        "functest-requests has 12 partitions but the ledger's functest-ledger-changelog 8: a "
        "webhook could wait in Kafka, undecided, on a worker that holds its partition of "
        "functest-requests without its person's ledger state (partitions added to a "
        "deployment's topics, which faust then assigns apart from the ledger's changelog; to "
        "change the count, deploy under a new TALKSTREAM_APP_ID)"
    )
    ingress.sink.outage = PartitionsAdded(cause)
    caplog.set_level(logging.DEBUG, logger="streams.ingress")

    answers = [await send(ingress, SHAPES[shape]) for shape in ("json", "legacy form", "json")]

    for answer in answers:
        assert answer.status == 503
        assert int(answer.headers["Retry-After"]) > 0
        assert (await answer.json())["errors"] == [
            {
                "field": "kafka",
                "message": "not written, nor will any be until this service's operator acts: "
                + cause,
            }
        ]
    assert ingress.sink.produced == []

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    [error] = said(logging.ERROR)
    assert error.startswith("ingress refuses every webhook (503, nothing written; first ")
    assert error.endswith(f"until an operator acts: {cause}")
    assert said(logging.WARNING) == []
    assert len([m for m in said(logging.DEBUG) if m.startswith("ingress refused ")]) == 2

    ingress.sink.outage = None  # the topics as they were (recreated): written again...
    await accepted(ingress, SHAPES["json"])
    ingress.sink.outage = PartitionsAdded(cause)  # ...and a new change is said again
    await rejected(ingress, SHAPES["json"], 503)
    assert len(said(logging.ERROR)) == 2


async def test_stopping_the_ingress_closes_the_producer(ingress: Ingress) -> None:
    await ingress.client.close()

    assert ingress.sink.closed


# --- 3. secrets -----------------------------------------------------------------------------


def _records_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


SECRET_BAIT: dict[str, tuple[Body, int]] = {
    "openai key as max_tokens": (
        Body(JSON, json_body(changed(openai__max_tokens=OPENAI_KEY))),
        422,
    ),
    "talkable key as email": (Body(JSON, json_body(changed(email=TALKABLE_KEY))), 422),
    "talkable key as a usage count": (
        Body(FORM, form_body(changed(usage_limit__amount=TALKABLE_KEY))),
        422,
    ),
    "openai key as a field name": (
        Body(JSON, json_body({**seed_params(), "openai": {OPENAI_KEY: {"x": 1}}})),
        422,
    ),
    "openai key as a conflicting form name": (
        Body(FORM, f"{OPENAI_KEY}=1&{OPENAI_KEY}[x]=2".encode()),
        400,
    ),
    "openai key as a repeated form name": (
        Body(FORM, f"{OPENAI_KEY}=1&{OPENAI_KEY}=2".encode()),
        400,
    ),
    "broken json around the keys": (
        Body(JSON, json_body(seed_params())[:-1] + b', "x": }'),
        400,
    ),
    "legacy extras with the keys, not JSON": (
        Body(
            FORM,
            form_body({**envelope("acme-store"), "extras": json.dumps(seed_params())[:-2]}),
        ),
        422,
    ),
    "the keys in plain text": (Body("text/plain", json_body(seed_params())), 415),
}


@pytest.mark.parametrize("case", list(SECRET_BAIT))
async def test_errors_never_repeat_a_key(
    ingress: Ingress, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body, status = SECRET_BAIT[case]

    await rejected(ingress, body, status)  # also checks the answer for the keys

    assert leaked(_records_text(caplog)) == []


@pytest.mark.parametrize("shape", [s for s in SHAPES if not SHAPES[s].query])
async def test_accepted_keys_are_sealed_and_never_logged(
    ingress: Ingress, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    await accepted(ingress, SHAPES[shape])
    ingress.sink.outage = BrokerUnavailable("Kafka unavailable: KafkaConnectionError")
    await send(ingress, SHAPES[shape])

    [produced] = ingress.sink.produced
    assert leaked(produced.value) == []
    assert leaked(produced.key) == []
    assert leaked(_records_text(caplog)) == []


async def test_keys_sent_in_the_query_string_stay_out_of_the_logs(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    received = await accepted(ingress, SHAPES["query string"])

    assert leaked(ingress.sink.produced[0].value) == []
    assert received.spec == EXPECTED_SPEC
    assert leaked(_records_text(caplog)) == []


async def test_a_body_past_its_content_length_never_reaches_the_logs(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json_body(seed_params())
    server = ingress.client.server
    answer = await sent_until_closed(  # aiohttp answers, then closes
        server,
        b"POST /chat-gpt/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10\r\n\r\n" + body,
    )

    assert b"400 Bad Request" in answer  # aiohttp's own parser refused the leftover bytes
    # the client's fault, said once: a WARNING without the bytes, not an ERROR with a traceback
    assert "aiohttp.server WARNING refused a malformed HTTP request" in _records_text(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert leaked(_records_text(caplog)) == []
    assert ingress.sink.produced == []


# --- 4. Talkable retries --------------------------------------------------------------------


async def test_a_retried_webhook_keeps_its_request_id(ingress: Ingress) -> None:
    first = await accepted(ingress, SHAPES["legacy form"])
    retry = await accepted(ingress, SHAPES["legacy form"])

    assert retry.request_id == first.request_id
    assert retry.delivery_id != first.delivery_id


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"openai__messages__1__content": "A verse for Bob"}, id="message"),
        pytest.param({"usage_limit__current_time": "1700000200"}, id="current time"),
        pytest.param({"email": "bob@example.com"}, id="person"),
        pytest.param({"openai__temperature": "0.9"}, id="passthrough param"),
        pytest.param({"event_number": ...}, id="event number left out"),
    ],
)
async def test_a_changed_param_is_another_request(ingress: Ingress, change: dict[str, Any]) -> None:
    original = await accepted(ingress, SHAPES["json"])
    other = await accepted(ingress, Body(JSON, json_body(changed(**change))))

    assert other.request_id != original.request_id


# --- 5. health and metrics ------------------------------------------------------------------


async def test_healthz_answers_ok(ingress: Ingress) -> None:
    response = await ingress.client.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_says_whether_a_webhook_would_be_written_and_why_not(
    ingress: Ingress,
) -> None:
    ready = await ingress.client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"ready": True, "status": "ready"})

    ingress.sink.outage = BrokerUnavailable("no Kafka broker answered")
    down = await ingress.client.get("/readyz")
    assert (down.status, await down.json()) == (
        503,
        {"ready": False, "status": "no Kafka broker answered"},
    )
    assert (await ingress.client.get("/healthz")).status == 200  # alive all the same


async def test_metrics_count_webhooks_by_outcome(ingress: Ingress) -> None:
    """Every answer to the webhook counts, a 405 too: a webhook configured with another
    method is answered 405 at each call, and was counted nowhere."""
    await accepted(ingress, SHAPES["json"])
    await accepted(ingress, SHAPES["rails form []"])
    await rejected(ingress, Body(JSON, b"{}"), 422)
    assert (await ingress.client.get("/chat-gpt/generate")).status == 405
    ingress.sink.outage = BrokerUnavailable("Kafka is not acknowledging; nothing was sent")
    await rejected(ingress, SHAPES["json"], 503)
    ingress.sink.outage = RuntimeError("a bug")  # aiohttp answers 500: counted too
    assert (await send(ingress, SHAPES["json"])).status == 500

    response = await ingress.client.get("/metrics")
    text = await response.text()

    assert response.status == 200
    assert response.content_type == "text/plain"
    counts = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "talkstream_ingress_requests"
        for sample in family.samples
        if sample.name == "talkstream_ingress_requests_total"
    }
    assert counts == {"202": 2.0, "422": 1.0, "405": 1.0, "503": 1.0, "500": 1.0}
    # what the handler answered, counted once: not again as refused before it (the 500)
    assert "talkstream_ingress_refused_total{" not in text
    assert "talkstream_ingress_latency_seconds_count 6.0" in text


# --- the README's examples ------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_requests() -> list[tuple[str, int]]:
    """Each ``curl`` command of README's "The request" section and the status it promises."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The request\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for command, status in re.findall(r"(curl .*?)\n# => (\d{3})", block, re.DOTALL):
            found.append((command.replace("\\\n", " "), int(status)))
    return found


def curl(command: str) -> tuple[str, dict[str, str], bytes]:
    """What ``curl`` would send for the README's options (path and query, headers, body)."""
    args = iter(shlex.split(command)[1:])
    url, headers, data = "", {}, []
    for arg in args:
        if arg == "-X":
            assert next(args) == "POST"
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data.append(next(args))
        elif arg == "--data-urlencode":
            name, _, content = next(args).partition("=")
            data.append(f"{name}={quote(content, safe='')}")
        elif arg.startswith("http"):
            url = arg
        else:
            assert arg in ("-s", "-g"), f"README uses a curl option this test cannot read: {arg}"
    if data:
        headers.setdefault("Content-Type", FORM)
    parts = urlsplit(url)
    return (
        f"{parts.path}?{parts.query}" if parts.query else parts.path,
        headers,
        "&".join(data).encode(),
    )


def _shape_of(command: str) -> str:
    if "?site=" in command:
        return "query string"
    kind = "json" if "application/json" in command else "form"
    return f"legacy {kind}" if "extras" in command else kind


README_REQUESTS = [
    pytest.param(command, status, id=_shape_of(command)) for command, status in readme_requests()
]


def test_the_readme_shows_every_shape() -> None:
    shapes = {_shape_of(command) for command, _ in readme_requests()}

    assert shapes == {"json", "form", "legacy form", "legacy json", "query string"}


@pytest.mark.parametrize(("command", "status"), README_REQUESTS)
async def test_the_readme_examples_get_the_answer_they_promise(
    ingress: Ingress, command: str, status: int
) -> None:
    path, headers, body = curl(command)

    response = await ingress.client.post(path, data=body, headers=headers)

    assert response.status == status, await response.text()
    [received] = ingress.sink.received()
    assert received.person == "my-site:ada@example.com"
    assert received.spec.chat.messages[-1] == {
        "role": "user",
        "content": "A humorous verse for Ada",
    }
    assert ingress.box.open(received.secrets.openai_api_key) == "sk-..."
    assert ingress.box.open(received.secrets.talkable_api_key) == "TALKABLE_API_KEY"

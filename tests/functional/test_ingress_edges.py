"""The ingress's answers at the edges of what a webhook may carry, through the real app: a
value Talkable would refuse is a 4xx naming its field before anything is produced (a request
produced is an OpenAI call billed, and its write-back refused after it); what Talkable
accepts, and what means "absent", is taken.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web_runner import BaseRunner

from models.params import MESSAGES_SHAPE
from models.values import INVISIBLE_RULE, SITE_SLUG_RULE
from streams.codings import cut_short
from streams.ingress import PATH, SLASHED, AccessLogger, build_ingress
from streams.refusals import CODINGS, TRANSFER_CODINGS
from tests.functional.conftest import (
    FORM,
    JSON,
    Ingress,
    RecordingSink,
    Served,
    StartIngress,
    make_settings,
    secret_box,
    seed_params,
    sent_until_closed,
)
from tests.support import with_changes


def changed(**changes: Any) -> dict[str, Any]:
    """The seed with ``a__b`` paths set (``...`` deletes the key)."""
    return with_changes(seed_params(), **changes)


async def answer(
    ingress: Ingress, body: bytes, content_type: str | None = JSON, **kwargs: Any
) -> tuple[int, Any]:
    response = await ingress.post(body, content_type, **kwargs)
    return response.status, await response.json()


async def refused(
    ingress: Ingress, body: bytes, status: int, content_type: str | None = JSON, **kwargs: Any
) -> list[dict[str, str]]:
    """The answer is ``status`` with its errors, and nothing was produced."""
    before = len(ingress.sink.produced)
    got, answered = await answer(ingress, body, content_type, **kwargs)
    assert got == status, answered
    assert ingress.sink.produced[before:] == []
    errors: list[dict[str, str]] = answered["errors"]
    return errors


async def taken(ingress: Ingress, tree: dict[str, Any]) -> Any:
    """The webhook is accepted: the request it produced."""
    status, answered = await answer(ingress, json.dumps(tree).encode())
    assert status == 202, answered
    return ingress.sink.received()[-1]


# --- 1. characters Talkable's site slugs and event numbers do not hold ----------------------


@pytest.mark.parametrize(
    "site",
    [
        pytest.param("acme\u202estore", id="a bidi override"),
        pytest.param("acme\u200bstore", id="a zero-width space"),
        pytest.param("acmé-store", id="a letter outside ASCII"),
        pytest.param("\uff41\uff43\uff4d\uff45", id="fullwidth letters"),
        pytest.param("acme\u00a0store", id="a no-break space"),
    ],
)
async def test_a_site_that_is_no_talkable_slug_is_a_422_naming_it(
    ingress: Ingress, site: str
) -> None:
    errors = await refused(ingress, json.dumps(changed(site=site)).encode(), 422)

    assert errors == [{"field": "site", "message": SITE_SLUG_RULE}]


@pytest.mark.parametrize("site", ["acme-store", "Acme_Store.2", "my-store"])
async def test_a_site_slug_of_printable_ascii_is_taken(ingress: Ingress, site: str) -> None:
    received = await taken(ingress, changed(site=site))

    assert received.spec.site == site


async def test_a_site_in_any_case_is_written_under_one_person(ingress: Ingress) -> None:
    """``Shop``, ``shop`` and ``SHOP`` went to [requests] as three people (three keys: three
    usage windows, perhaps three partitions); one key now, each request keeping its site as
    typed, which Talkable is called with."""
    sites = ["Shop", "shop", "SHOP"]
    for site in sites:
        await taken(ingress, changed(site=site, email="Ada@Example.com"))
    keys = {item.key for item in ingress.sink.produced[-3:]}
    received = ingress.sink.received()[-3:]

    assert keys == {b"shop:ada@example.com"}
    assert {r.person for r in received} == {"shop:ada@example.com"}
    assert [r.spec.site for r in received] == sites
    assert len({r.request_id for r in received}) == 3  # three webhooks, each judged


@pytest.mark.parametrize(
    "number",
    [
        pytest.param("order-42\u202e-complete", id="a bidi override"),
        pytest.param("order-42\u2066x\u2069", id="a bidi isolate"),
        pytest.param("order\u200d42", id="a zero-width joiner"),
        pytest.param("order-42\u2028", id="a line separator"),
        pytest.param("order-42\x85", id="a C1 control"),
    ],
)
async def test_an_event_number_with_invisible_characters_is_a_422_naming_it(
    ingress: Ingress, number: str
) -> None:
    errors = await refused(ingress, json.dumps(changed(event_number=number)).encode(), 422)

    assert errors == [{"field": "event_number", "message": INVISIBLE_RULE}]


async def test_an_event_number_in_letters_outside_ascii_is_taken(ingress: Ingress) -> None:
    """Talkable's reference gives an event number as any string: not refused for its letters."""
    received = await taken(ingress, changed(event_number="commande-42-é"))

    assert received.spec.event_number == "commande-42-é"


@pytest.mark.parametrize("email", ["alice\u202e@example.com", "alice@exam\u200bple.com"])
async def test_an_email_with_invisible_characters_is_a_422_naming_it(
    ingress: Ingress, email: str
) -> None:
    errors = await refused(ingress, json.dumps(changed(email=email)).encode(), 422)

    assert errors == [{"field": "email", "message": "must be an email address"}]


# --- 2. messages that are not a list --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(
            b"site=acme&email=a@example.com&api_key=k&openai[api_key]=o&openai[messages]=hello",
            FORM,
            id="a form's one string",
        ),
        pytest.param(
            b"site=acme&email=a@example.com&api_key=k&openai[api_key]=o"
            b"&openai[messages][role]=user&openai[messages][content]=hi",
            FORM,
            id="a form's one object",
        ),
        pytest.param(
            json.dumps(changed(openai__messages={"role": "user", "content": "hi"})).encode(),
            JSON,
            id="a JSON object",
        ),
    ],
)
async def test_messages_that_are_not_a_list_are_told_the_shapes_accepted(
    ingress: Ingress, body: bytes, content_type: str
) -> None:
    errors = await refused(ingress, body, 422, content_type)

    assert errors == [{"field": "openai.messages", "message": MESSAGES_SHAPE}]
    assert "openai[messages][][role]" in MESSAGES_SHAPE and '"role"' in MESSAGES_SHAPE


# --- 3. null is absent ----------------------------------------------------------------------


async def test_null_for_an_optional_param_is_its_default(ingress: Ingress) -> None:
    """``"max_tokens": null`` was a 422 ("must be a positive integer") where a null
    ``usage_limit``, ``event_number`` or message ``name`` is absent."""
    absent = changed(openai__max_tokens=..., openai__model=..., openai__temperature=...)
    nulls = changed(openai__max_tokens=None, openai__model=None, openai__temperature=None)
    for name in ("n", "seed", "max_completion_tokens", "top_logprobs", "logprobs", "store"):
        nulls["openai"][name] = None

    received = await taken(ingress, nulls)

    assert (received.spec.chat.max_tokens, received.spec.chat.model) == (150, "gpt-3.5-turbo")
    assert received.spec.chat.extra == {"stop": ["\n\n", "END"]}
    # the same request as one that leaves them out
    assert received.request_id == (await taken(ingress, absent)).request_id


async def test_null_for_a_required_param_is_required(ingress: Ingress) -> None:
    tree = changed(site=None, openai__messages=None, usage_limit__amount=None)
    tree["openai"]["messages"] = [{"role": None, "content": "hi"}]
    tree["email"] = None

    errors = await refused(ingress, json.dumps(tree).encode(), 422)

    assert errors == [
        {"field": "site", "message": "is required"},
        {"field": "email", "message": "is required"},
        {"field": "openai.messages.0.role", "message": "is required"},
        {"field": "usage_limit.amount", "message": "is required"},
    ]


async def test_null_for_a_param_passed_through_is_sent_as_null(ingress: Ingress) -> None:
    received = await taken(ingress, changed(openai__user=None))

    assert received.spec.chat.extra["user"] is None


# --- 6. a JSON number longer than Python reads ----------------------------------------------

HUGE = "9" * 4301  # one digit past CPython's int_max_str_digits (4,300)
MARK = 8642097531  # where it goes


@pytest.mark.parametrize(
    ("where", "field"),
    [
        pytest.param({"openai__max_tokens": MARK}, "openai.max_tokens", id="max_tokens"),
        pytest.param({"usage_limit__amount": MARK}, "usage_limit.amount", id="a usage field"),
        pytest.param({"openai__seed": -MARK}, "openai.seed", id="a negative one"),
        pytest.param({"openai__logit_bias": {"50256": MARK}}, "openai", id="under a key unnamed"),
    ],
)
async def test_an_integer_longer_than_python_reads_is_a_422_naming_its_field_and_the_limit(
    ingress: Ingress, where: dict[str, Any], field: str
) -> None:
    """It is valid JSON (RFC 8259 sets no limit): it was a 400 "body: not valid JSON"."""
    body = json.dumps(changed(**where)).encode().replace(str(MARK).encode(), HUGE.encode())
    assert HUGE.encode() in body

    errors = await refused(ingress, body, 422)

    assert errors == [
        {"field": field, "message": "holds a number of more than 4300 digits: too large"}
    ]


async def test_an_integer_of_4300_digits_is_read_and_judged_as_any_other(ingress: Ingress) -> None:
    body = (
        json.dumps(changed(openai__max_tokens=MARK))
        .encode()
        .replace(str(MARK).encode(), b"9" * 4300)
    )

    errors = await refused(ingress, body, 422)

    assert errors == [
        {
            "field": "openai.max_tokens",
            "message": "Input should be less than or equal to 9223372036854775807",
        }
    ]


@pytest.mark.parametrize(
    ("number", "status", "message"),
    [
        pytest.param("1e999", 422, "holds a number out of range: beyond 1.8e+308 either way"),
        pytest.param("-1e999", 422, "holds a number out of range: beyond 1.8e+308 either way"),
        pytest.param("NaN", 400, "holds NaN or Infinity, which are not JSON"),
        pytest.param("Infinity", 400, "holds NaN or Infinity, which are not JSON"),
    ],
)
@pytest.mark.parametrize(
    ("where", "field"),
    [
        pytest.param({"usage_limit": MARK}, "usage_limit", id="usage_limit"),
        pytest.param({"usage_limit__amount": MARK}, "usage_limit.amount", id="a usage field"),
        pytest.param({"openai__temperature": MARK}, "openai.temperature", id="temperature"),
    ],
)
async def test_a_number_json_cannot_hold_is_a_4xx_naming_its_field(
    ingress: Ingress, where: dict[str, Any], field: str, number: str, status: int, message: str
) -> None:
    """A number beyond a double's range is valid JSON, read as infinity (a 422, as a form's
    ``openai[temperature]=1e999`` is); NaN and Infinity are not JSON (a 400). Each was a 400
    "body: not valid JSON", naming no field."""
    body = json.dumps(changed(**where)).encode().replace(str(MARK).encode(), number.encode())
    assert number.encode() in body

    errors = await refused(ingress, body, status)

    assert errors == [{"field": field, "message": message}]


# --- 7. a compressed body: decoded by the ingress, each stream to its end -------------------


def compressed(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "raw deflate":  # the bare RFC 1951 stream, without zlib's wrapper
        return zlib.compress(data)[2:-4]
    return zlib.compress(data)


def sent_as(coding: str) -> dict[str, str]:
    return {"Content-Encoding": "deflate" if coding == "raw deflate" else coding}


@pytest.mark.parametrize(
    ("coding", "cut"),
    [
        pytest.param("gzip", 8, id="gzip without its trailer"),
        pytest.param("gzip", 4, id="gzip without its length"),
        pytest.param("gzip", 40, id="gzip cut mid-stream"),
        pytest.param("deflate", 4, id="deflate without its checksum"),
        pytest.param("deflate", 40, id="deflate cut mid-stream"),
        pytest.param("raw deflate", 10, id="raw deflate cut mid-stream"),
    ],
)
async def test_a_compressed_body_cut_short_is_a_400_naming_the_body_and_its_coding(
    ingress: Ingress, coding: str, cut: int
) -> None:
    """A gzip body without its trailer (CRC-32, length) was taken as whole: a 202; one cut
    inside its JSON was "not valid JSON"."""
    body = compressed(coding, json.dumps(seed_params()).encode())[:-cut]

    errors = await refused(ingress, body, 400, headers=sent_as(coding))

    assert errors == [{"field": "body", "message": cut_short(sent_as(coding)["Content-Encoding"])}]
    metrics = await (await ingress.client.get("/metrics")).text()
    assert 'talkstream_ingress_requests_total{outcome="400"} 1.0' in metrics


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_cut_short_after_its_headers_is_refused_at_once(
    ingress_with: StartIngress, coding: str
) -> None:
    """A deflate body that arrived after its headers (the handler reading it already) waited
    for the body timeout, a 408, when aiohttp's parser refused it where the handler never
    saw. The body is sent once the ingress has answered ``100 Continue``: the handler is
    reading it then."""
    ingress = await ingress_with(ingress_body_timeout_seconds=30)
    body = compressed(coding, json.dumps(seed_params()).encode())[:-4]
    server = ingress.client.server
    assert server.host is not None and server.port is not None
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        # well within the body timeout: refused as the body ends
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()

    assert raw.startswith(b"HTTP/1.1 400 "), raw[:2000]
    _, _, answered = raw.partition(b"\r\n\r\n")
    assert json.loads(answered) == {"errors": [{"field": "body", "message": cut_short(coding)}]}
    assert ingress.sink.produced == []


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate"])
async def test_a_whole_compressed_body_is_taken(ingress: Ingress, coding: str) -> None:
    plain = json.dumps(seed_params()).encode()
    reference = await taken(ingress, seed_params())

    status, answered = await answer(ingress, compressed(coding, plain), headers=sent_as(coding))

    assert (status, answered) == (202, {"request_id": reference.request_id})


async def test_a_gzip_body_of_several_members_is_taken(ingress: Ingress) -> None:
    """Each member ends with its trailer; the next one starts afresh (RFC 1952 2.2)."""
    plain = json.dumps(seed_params()).encode()
    reference = await taken(ingress, seed_params())
    members = gzip.compress(plain[:100]) + gzip.compress(plain[100:])

    status, answered = await answer(ingress, members, headers={"Content-Encoding": "gzip"})

    assert (status, answered) == (202, {"request_id": reference.request_id})
    cut = members[:-8]
    errors = await refused(ingress, cut, 400, headers={"Content-Encoding": "gzip"})
    assert errors == [{"field": "body", "message": cut_short("gzip")}]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_that_does_not_decode_is_a_400(
    ingress: Ingress, coding: str
) -> None:
    whole = compressed(coding, json.dumps(seed_params()).encode())
    broken = whole[:12] + bytes(b ^ 0xFF for b in whole[12:20]) + whole[20:]

    errors = await refused(ingress, broken, 400, headers={"Content-Encoding": coding})

    assert errors == [
        {"field": "body", "message": "cannot be decoded as its Content-Encoding says"}
    ]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_over_the_limit_once_decoded_is_a_413(
    ingress_with: StartIngress, coding: str
) -> None:
    """A few hundred bytes that inflate past ``MAX_BODY_BYTES``: refused as a body sent so
    large is, without holding more than the limit of it."""
    ingress = await ingress_with(max_body_bytes=4096)
    tree = seed_params()
    tree["openai"]["messages"][0]["content"] = "x" * 5000
    body = compressed(coding, json.dumps(tree).encode())
    assert len(body) < 4096

    errors = await refused(ingress, body, 413, headers={"Content-Encoding": coding})

    assert errors == [{"field": "body", "message": "larger than 4096 bytes once decoded"}]


@pytest.mark.parametrize("coding", ["br", "zstd"])
async def test_a_coding_the_ingress_does_not_decode_itself_is_a_415(
    ingress: Ingress, coding: str
) -> None:
    """aiohttp decoded br and zstd only with libraries talkstream does not install; the
    ingress decodes gzip and deflate alone."""
    errors = await refused(
        ingress, json.dumps(seed_params()).encode(), 415, headers={"Content-Encoding": coding}
    )

    assert errors == [{"field": "content-encoding", "message": CODINGS[2]}]


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["gzip", "gzip"], id="gzip twice"),
        pytest.param(["gzip", "x-foo"], id="gzip then an unknown coding"),
        pytest.param(["identity", "gzip"], id="identity then gzip"),
    ],
)
async def test_a_content_encoding_given_twice_is_two_codings_a_415(
    ingress: Ingress, lines: list[str]
) -> None:
    """Two lines of a header are one list (RFC 9110 5.3), as ``gzip, gzip`` in one line, a
    415: the first line alone was read, and a body sent as gzip then gzip (or ``x-foo``) was
    decoded once, and taken (202) or refused as not UTF-8 (400)."""
    body = gzip.compress(json.dumps(seed_params()).encode())
    header = "".join(f"Content-Encoding: {line}\r\n" for line in lines)

    raw = await sent_until_closed(
        ingress.client.server,
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{header}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )

    assert raw.startswith(b"HTTP/1.1 415 "), raw[:2000]
    _, _, answered = raw.partition(b"\r\n\r\n")
    assert json.loads(answered) == {
        "errors": [{"field": "content-encoding", "message": CODINGS[2]}]
    }
    assert ingress.sink.produced == []


async def test_the_connection_serves_the_next_request_after_a_body_cut_short(
    ingress: Ingress,
) -> None:
    """Answered by the handler: the connection goes on (a deflate body cut short was refused
    as a malformed request, and the connection closed)."""
    plain = json.dumps(seed_params()).encode()
    cut, whole = zlib.compress(plain)[:-4], zlib.compress(plain)

    def request(body: bytes, last: bool = False) -> bytes:
        return (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: deflate\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if last else "")
            + "\r\n"
        ).encode() + body

    raw = await sent_until_closed(ingress.client.server, request(cut) + request(whole, last=True))

    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert statuses == [b"400", b"202"], raw[:2000]
    assert len(ingress.sink.produced) == 1


# --- 8. a body the client stops sending ----------------------------------------------------


class ServedUncancelled(Served):
    """Served as ``talkstream ingress`` serves it in this too: a handler goes on when its
    client's connection is lost (aiohttp's TestServer cancels it, ``run_app`` does not)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return await super()._make_runner(**{**kwargs, "handler_cancellation": False})


@pytest.fixture
async def uncancelled(tmp_path: Path) -> AsyncIterator[Ingress]:
    settings = make_settings(tmp_path, ingress_body_timeout_seconds=30)
    sink = RecordingSink()
    server = ServedUncancelled(build_ingress(settings, sink, secret_box()))
    await server.start_server(access_log_class=AccessLogger)
    client = TestClient(server)
    await client.start_server()
    yield Ingress(client, sink, secret_box(), settings)
    await client.close()


@pytest.mark.parametrize(
    "framing",
    [pytest.param("Content-Length: 5000", id="a Content-Length"), "Transfer-Encoding: chunked"],
)
async def test_a_connection_closed_before_the_body_ends_is_no_server_error(
    uncancelled: Ingress, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes the connection midway through its body (its own timeout, a
    crash): nobody is left to answer, but the ingress counted a 500, and aiohttp logged an
    ERROR with a traceback, as for a bug of ours. It is a 400 of a body cut short. The body
    is sent once the ingress has answered ``100 Continue``: the handler is reading it then."""
    ingress = uncancelled
    caplog.set_level(logging.WARNING)
    part = json.dumps(seed_params()).encode()[:50]
    sent = part if framing.startswith("Content-Length") else b"%x\r\n%s\r\n" % (len(part), part)
    server = ingress.client.server
    assert server.host is not None and server.port is not None
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{framing}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(sent)
        writer.write_eof()  # nothing more from the client
        await asyncio.wait_for(reader.read(), 10)  # the server closes it
    finally:
        writer.close()

    async def counted() -> str:
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the handler counts it once it has seen the connection close
            metrics = await (await ingress.client.get("/metrics")).text()
            if "talkstream_ingress_requests_total{" in metrics:
                return metrics
            assert asyncio.get_running_loop().time() < deadline, metrics
            await asyncio.sleep(0.05)

    metrics = await counted()
    assert 'talkstream_ingress_requests_total{outcome="400"} 1.0' in metrics
    assert 'outcome="500"' not in metrics
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert ingress.sink.produced == []


# --- 4. the webhook's path with a trailing slash; a path not served -------------------------


async def test_the_webhooks_path_with_a_trailing_slash_is_the_same_endpoint(
    ingress: Ingress,
) -> None:
    """A webhook URL configured with a trailing slash was a 404 at every call."""
    body = json.dumps(seed_params()).encode()
    reference = await taken(ingress, seed_params())

    response = await ingress.client.post(SLASHED, data=body, headers={"Content-Type": JSON})
    other = await ingress.client.get(SLASHED)

    assert (response.status, await response.json()) == (202, {"request_id": reference.request_id})
    assert len(ingress.sink.produced) == 2
    assert (other.status, other.headers["Allow"]) == (405, "POST")
    metrics = await (await ingress.client.get("/metrics")).text()
    assert 'talkstream_ingress_requests_total{outcome="202"} 2.0' in metrics
    assert 'talkstream_ingress_requests_total{outcome="405"} 1.0' in metrics


async def test_a_path_not_served_is_a_404_counted_as_refused(ingress: Ingress) -> None:
    for path in (PATH + "//", "/chat-gpt/generate/x", "/chat-gpt", "/"):
        response = await ingress.client.post(path, data=b"{}", headers={"Content-Type": JSON})
        assert response.status == 404, path
        assert await response.json() == {"errors": [{"field": "path", "message": "no such path"}]}
    wrong_method = await ingress.client.post("/metrics")
    assert wrong_method.status == 405

    metrics = await (await ingress.client.get("/metrics")).text()

    assert 'talkstream_ingress_refused_total{status="404"} 4.0' in metrics
    assert 'talkstream_ingress_refused_total{status="405"} 1.0' in metrics
    assert "talkstream_ingress_requests_total{" not in metrics  # no webhook was answered


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["gzip, chunked"], id="gzip then chunked"),
        pytest.param(["deflate, chunked"], id="deflate then chunked"),
        pytest.param(["x-foo, chunked"], id="an unknown coding then chunked"),
    ],
)
async def test_a_transfer_coding_other_than_chunked_is_a_501(
    ingress: Ingress, lines: list[str]
) -> None:
    """aiohttp reads a body whose last transfer coding is ``chunked`` as chunked, and passed
    it on with the codings before it ignored: a plain body sent as ``gzip, chunked`` was taken
    (202). A transfer coding the server does not implement is a 501 (RFC 9112 6.1), before the
    body is read, and counted."""
    body = json.dumps(seed_params()).encode()
    header = "".join(f"Transfer-Encoding: {line}\r\n" for line in lines)

    raw = await sent_until_closed(
        ingress.client.server,
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{header}"
        f"Connection: close\r\n\r\n{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n",
    )

    assert raw.startswith(b"HTTP/1.1 501 "), raw[:2000]
    _, _, answered = raw.partition(b"\r\n\r\n")
    assert json.loads(answered) == {
        "errors": [{"field": "transfer-encoding", "message": TRANSFER_CODINGS[2]}]
    }
    assert ingress.sink.produced == []
    metrics = await (await ingress.client.get("/metrics")).text()
    assert 'talkstream_ingress_requests_total{outcome="501"} 1.0' in metrics


async def test_a_chunked_body_alone_is_taken(ingress: Ingress) -> None:
    body = json.dumps(seed_params()).encode()

    raw = await sent_until_closed(
        ingress.client.server,
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n",
    )

    assert raw.startswith(b"HTTP/1.1 202 "), raw[:2000]
    assert len(ingress.sink.produced) == 1

"""What the ingress answers a request aiohttp refuses itself (its parser, router and body
reader): the webhook's error shape, ``{"errors": [{"field", "message"}]}``, with a 4xx naming
the part that is wrong, and nothing of the request in it, nor in the log.

Raw bytes over a real socket to the real ingress app, served as ``talkstream ingress`` serves
it (``streams.refusals``). aiohttp's own answers were text quoting the bytes it choked on:
the request line with its query string (a webhook sent as a GET or a form carries
``api_key`` there), a header's value, the body left past a short Content-Length.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
from unittest import mock

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy

from streams.ingress import OTHER_PATH, PATH, SERVED_PATHS
from streams.refusals import CODINGS, EXPECTATION, refusal, too_long
from tests.functional.conftest import (
    OPENAI_KEY,
    SECRETS,
    TALKABLE_KEY,
    Answer,
    Ingress,
    StartIngress,
    exchange,
    seed_params,
    sent_until_closed,
)

QUERY = f"?site=acme&api_key={TALKABLE_KEY}&openai[api_key]={OPENAI_KEY}"
LINE = f"{PATH}{QUERY}"
LONG = "x" * 9000
HEADER_SECRET = "hdr-secret-FUNCTIONAL-a5d2"
BODY_SECRET = "body-secret-FUNCTIONAL-0e7c"
BAIT = (*SECRETS, HEADER_SECRET, BODY_SECRET, "api_key", PATH, "acme")

# what aiohttp's parser refuses, and the answer: status, field
MALFORMED: dict[str, tuple[str, int, str]] = {
    "a header without a colon": (
        f"GET {LINE} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        400,
        "headers",
    ),
    "a control character in a header's value": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nX-Key: a\x01{HEADER_SECRET}\r\n\r\n",
        400,
        "headers",
    ),
    "a method that is no token": (f"GE(T {LINE} HTTP/1.1\r\nHost: x\r\n\r\n", 400, "method"),
    "an HTTP version that is none": (
        f"POST {LINE} HTTP/9.Z\r\nHost: x\r\n\r\n",
        400,
        "request line",
    ),
    "a space in the target": (
        f"POST {LINE} {BODY_SECRET} HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "request line",
    ),
    "a target that is no URL": (
        f"POST http://[{QUERY} HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "path",
    ),
    "a request line too long": (
        f"POST {LINE}&pad={LONG} HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "request line",
    ),
    "a request line too long, its end not sent": (f"POST {LINE}&pad={LONG}", 414, "request line"),
    "a header too long": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nX-Key: {HEADER_SECRET}{LONG}\r\n\r\n",
        431,
        "headers",
    ),
    "a header's name too long": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nX-{HEADER_SECRET}{LONG}: 1\r\n\r\n",
        431,
        "headers",
    ),
    "a trailer too long": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\nX-Key: {HEADER_SECRET}{LONG}"
        "\r\n\r\n",
        431,
        "headers",
    ),
    "too many headers": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"X-{i}: {HEADER_SECRET}\r\n" for i in range(200))
        + "\r\n",
        431,
        "headers",
    ),
    "both Content-Length and chunked": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "headers",
    ),
    "Content-Type given twice": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "content-type",
    ),
    "a chunk size that is no number": (
        f"POST {LINE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{BODY_SECRET}\r\n0\r\n\r\n",
        400,
        "body",
    ),
}


def refused(answer: Answer, status: int, field: str) -> str:
    """The answer is ``status`` with one error naming ``field``, in JSON, quoting nothing of
    the request; its message."""
    assert answer.status == status, answer.raw[:2000]
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    [error] = json.loads(answer.body)["errors"]
    assert error["field"] == field, error
    said = answer.raw.decode("latin-1")
    assert [bait for bait in BAIT if bait in said] == [], said
    return str(error["message"])


def quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing of the request in the log, and no ERROR: a client's fault, not ours."""
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    assert [bait for bait in (*SECRETS, HEADER_SECRET, BODY_SECRET) if bait in text] == [], text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], text


@pytest.mark.parametrize("case", MALFORMED)
async def test_a_request_the_parser_refuses_is_answered_in_json_quoting_none_of_it(
    case: str, ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw, status, field = MALFORMED[case]

    answer = await exchange(ingress.client.server, raw.encode("latin-1"))

    refused(answer, status, field)
    quiet(caplog)
    assert ingress.sink.produced == []
    # counted, as what the webhook's handler answers is: it was counted nowhere
    metrics = await (await ingress.client.get("/metrics")).text()
    assert f'talkstream_ingress_refused_total{{status="{status}"}} 1.0' in metrics


async def test_a_content_type_given_twice_says_so(ingress: Ingress) -> None:
    """It was "headers: a header is malformed", naming neither the header nor what was wrong."""
    raw, status, field = MALFORMED["Content-Type given twice"]

    answer = await exchange(ingress.client.server, raw.encode())

    assert refused(answer, status, field) == "given more than once: send one"


async def test_too_many_headers_says_how_many_are_taken(ingress: Ingress) -> None:
    raw, status, field = MALFORMED["too many headers"]

    answer = await exchange(ingress.client.server, raw.encode())

    assert refused(answer, status, field) == "more than 128 headers"


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("a request line too long", 414, "longer than 8190 bytes"),
        ("a header too long", 431, "a header is longer than 8190 bytes"),
    ],
)
async def test_a_line_too_long_says_the_limit(
    ingress: Ingress, case: str, status: int, message: str
) -> None:
    raw, _, field = MALFORMED[case]

    answer = await exchange(ingress.client.server, raw.encode())

    assert refused(answer, status, field) == message


# the parser the servers use (aiohttp's compiled one, when it has it) and the pure-Python one
PARSERS = {"served": HttpRequestParser, "pure-Python": HttpRequestParserPy}


@pytest.mark.parametrize("parser", PARSERS.values(), ids=PARSERS.keys())
@pytest.mark.parametrize(
    ("raw", "part"),
    [
        (f"GET /?{LONG} HTTP/1.1\r\nHost: x\r\n\r\n", "request line"),
        (f"GET /?{LONG}", "request line"),
        (f"GET / HTTP/1.1\r\nX-{LONG}: 1\r\n\r\n", "headers"),
        (f"GET / HTTP/1.1\r\nX-Key: {LONG}\r\n\r\n", "headers"),
        (f"GET / HTTP/1.1\r\nX-Key: {LONG}", "headers"),
    ],
    ids=["request line", "unfinished request line", "name", "value", "unfinished value"],
)
async def test_both_of_aiohttps_parsers_say_which_line_was_too_long(
    parser: type[HttpRequestParser], raw: str, part: str
) -> None:
    """aiohttp raises the same LineTooLong, with the same limit, for a request line and for a
    header: the compiled parser (the one served, when aiohttp has it) and the pure-Python one
    (``AIOHTTP_NO_EXTENSIONS``) are each told apart; an aiohttp that raises them elsewhere
    fails here, not by answering 400 again."""
    reading = parser(
        mock.create_autospec(BaseProtocol, instance=True),
        asyncio.get_running_loop(),
        2**16,
        max_line_size=8190,
        max_field_size=8190,
    )

    with pytest.raises(LineTooLong) as raised:
        reading.feed_data(raw.encode())

    assert too_long(raised.value) == part


async def test_a_body_past_its_content_length_is_not_quoted_back(ingress: Ingress) -> None:
    """The bytes past a short Content-Length are read as a next request, refused as one: its
    "request line" was the rest of the body, keys and all."""
    rest = json.dumps({"api_key": TALKABLE_KEY, "openai": {"api_key": OPENAI_KEY}})

    answer = await exchange(
        ingress.client.server,
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: 3\r\n\r\n{rest}".encode(),
    )

    assert "Content-Length" in refused(answer, 400, "method")
    assert ingress.sink.produced == []


async def test_a_body_whose_compression_breaks_is_a_400_naming_the_body(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp takes the request and the handler's read fails: it was an unhandled exception,
    a 500 ("Server got itself in trouble") and a traceback at ERROR."""
    caplog.set_level(logging.DEBUG)
    gzipped = gzip.compress(json.dumps(seed_params()).encode())
    response = await ingress.client.post(
        PATH, data=gzipped, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert response.status == 202, await response.text()  # refused is a broken encoding
    body = b"not gzip " + BODY_SECRET.encode()

    answer = await exchange(
        ingress.client.server,
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body,
    )

    assert refused(answer, 400, "body") == "cannot be decoded as its Content-Encoding says"
    quiet(caplog)
    metrics = await (await ingress.client.get("/metrics")).text()
    assert 'talkstream_ingress_requests_total{outcome="400"} 1.0' in metrics
    assert 'outcome="500"' not in metrics


async def test_an_unknown_path_is_a_404_naming_the_path_without_quoting_it(
    ingress: Ingress,
) -> None:
    answer = await exchange(
        ingress.client.server,
        f"GET /nope{QUERY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )

    assert refused(answer, 404, "path") == "no such path"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(f"POST {PATH}/{OPENAI_KEY}", id="a key after the webhook's path"),
        pytest.param(f"POST /{TALKABLE_KEY}{PATH}", id="a key before it"),
        pytest.param(f"POST {PATH};api_key={TALKABLE_KEY}", id="a key as a path parameter"),
    ],
)
async def test_a_key_in_a_request_line_the_ingress_does_not_serve_stays_out_of_the_log(
    line: str, ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    # a webhook URL written with a key in its path (the key has to go somewhere, and the path
    # looked like the place): the access log wrote every path as sent, query aside
    caplog.set_level(logging.DEBUG)
    answer = await exchange(
        ingress.client.server, f"{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )

    assert answer.status in (404, 405), answer.raw[:2000]
    quiet(caplog)
    logged = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert logged == [f"POST {OTHER_PATH} 404 {logged[0].split()[-1]}"], logged


async def test_the_access_log_names_the_paths_the_ingress_serves(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for path in sorted(SERVED_PATHS):
        await ingress.client.get(path)

    logged = [r.getMessage().split()[:3] for r in caplog.records if r.name == "aiohttp.access"]
    assert [line[:2] for line in logged] == [["GET", path] for path in sorted(SERVED_PATHS)]
    assert {line[2] for line in logged} <= {"200", "405", "503"}, logged


async def test_a_method_a_path_does_not_take_is_a_405_saying_which_it_takes(
    ingress: Ingress,
) -> None:
    answer = await exchange(
        ingress.client.server,
        f"PROPFIND /healthz{QUERY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )

    assert refused(answer, 405, "method") == "not allowed here; allowed: GET, HEAD"
    assert answer.headers["allow"] == "GET,HEAD"


async def test_a_bug_of_ours_is_a_500_in_json_saying_nothing_of_it(
    ingress_with: StartIngress, caplog: pytest.LogCaptureFixture
) -> None:
    ingress = await ingress_with()
    ingress.sink.outage = RuntimeError(f"a bug holding {OPENAI_KEY}")  # not BrokerUnavailable
    response = await ingress.client.post(PATH, json=seed_params())

    assert response.status == 500
    assert await response.json() == {"errors": [{"field": "server", "message": "internal error"}]}
    assert OPENAI_KEY not in await response.text()


def webhook_head(expect: str, length: int) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: {expect}\r\n\r\n"
    ).encode()


async def test_an_expectation_other_than_100_continue_is_a_417_in_json_quoting_none_of_it(
    ingress: Ingress, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answered it itself, before any middleware: text quoting the header ("Unknown
    Expect: ..."), and counted nowhere."""
    caplog.set_level(logging.DEBUG)
    body = json.dumps(seed_params()).encode()

    answer = await exchange(
        ingress.client.server, webhook_head(f"x-{HEADER_SECRET}", len(body)) + body
    )

    assert refused(answer, 417, "expect") == "not supported; only 100-continue is"
    quiet(caplog)
    metrics = await (await ingress.client.get("/metrics")).text()
    assert 'talkstream_ingress_requests_total{outcome="417"} 1.0' in metrics
    assert ingress.sink.produced == []


# what a webhook's request line and headers alone refuse, whatever its body: its method and
# headers ("{big}": a length over the limit), a body to send with them, the answer: status, field
REFUSED_BY_HEADERS: dict[str, tuple[str, tuple[str, ...], bytes, int, str]] = {
    "a declared length over the limit": (
        "POST",
        ("Content-Type: application/json", "Content-Length: {big}"),
        b"",  # {big} bytes
        413,
        "body",
    ),
    "a content coding the ingress does not decode": (
        "POST",
        ("Content-Type: application/json", "Content-Encoding: br", "Content-Length: 2"),
        b"{}",
        415,
        "content-encoding",
    ),
    "a transfer coding but chunked": (
        "POST",
        ("Content-Type: application/json", "Transfer-Encoding: gzip, chunked"),
        b"0\r\n\r\n",
        501,
        "transfer-encoding",
    ),
    "a transfer coding that is not chunked": (  # refused by aiohttp's parser, as it was
        "POST",
        ("Content-Type: application/json", "Transfer-Encoding: gzip"),
        b"0\r\n\r\n",
        400,
        "headers",
    ),
    "a content type no body is read in": (  # its body not gzip either: not read to tell
        "POST",
        ("Content-Type: text/plain", "Content-Encoding: gzip", "Content-Length: 2"),
        b"{}",
        415,
        "content-type",
    ),
    "a form not in UTF-8": (
        "POST",
        (
            "Content-Type: application/x-www-form-urlencoded; charset=iso-8859-1",
            "Content-Length: 3",
        ),
        b"a=1",
        415,
        "content-type",
    ),
    "another method than POST": (
        "PUT",
        ("Content-Type: application/json", "Content-Length: 2"),
        b"{}",
        405,
        "method",
    ),
}


@pytest.mark.parametrize("case", REFUSED_BY_HEADERS)
async def test_what_the_headers_alone_refuse_is_answered_before_100_continue(
    case: str, ingress: Ingress
) -> None:
    """The client asks whether to send the body (curl does for a large one): told the refusal
    at once, it need not send it, and it is the answer the same request gets without asking.
    aiohttp said "100 Continue" to each (the ingress's own handler then refused the body on its
    way), then only to a length within the limit, and still to the rest."""
    method, lines, body, status, field = REFUSED_BY_HEADERS[case]
    big = ingress.settings.max_body_bytes + 1
    headers = "".join(f"{line}\r\n" for line in lines).format(big=big)
    server = ingress.client.server
    assert server.host is not None and server.port is not None
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:  # the head alone: the body is sent only if the server says to
        writer.write(
            f"{method} {PATH} HTTP/1.1\r\nHost: x\r\n{headers}Expect: 100-continue\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert re.match(rb"HTTP/1\.[01] %d " % status, head), head  # not "100 Continue"
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        rest = await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    _, *said = head.decode("latin-1").split("\r\n")
    answer = Answer(status, dict(line.lower().split(": ", 1) for line in said if line), rest, head)

    message = refused(answer, status, field)
    unasked = await exchange(
        server,
        f"{method} {PATH} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()
        + (body or b"x" * big),
    )
    assert refused(unasked, status, field) == message
    if status == 413:
        assert message == f"larger than {ingress.settings.max_body_bytes} bytes"
    metrics = await (await ingress.client.get("/metrics")).text()
    parsed = field != "headers"  # else aiohttp's parser refused it: no handler saw it
    counted = "requests_total{outcome" if parsed else "refused_total{status"
    assert f'talkstream_ingress_{counted}="{status}"}} 2.0' in metrics
    assert ingress.sink.produced == []


async def test_a_webhook_that_expects_100_continue_gets_it_and_is_accepted(
    ingress: Ingress,
) -> None:
    body = json.dumps(seed_params()).encode()
    head = webhook_head("100-continue", len(body)).replace(
        b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
    )

    raw = await sent_until_closed(ingress.client.server, head + body)

    interim, _, final = raw.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue", raw[:200]
    assert final.startswith(b"HTTP/1.1 202 "), raw[:400]
    assert len(ingress.sink.produced) == 1


@pytest.mark.parametrize("coding", ["x-gzip", "compress", "gzip, gzip", "snappy"])
async def test_a_body_in_a_coding_the_ingress_does_not_decode_is_a_415_naming_it(
    ingress: Ingress, coding: str
) -> None:
    """aiohttp decodes gzip, deflate (and br, zstd with their libraries) and hands a body in
    any other coding over as it came: read so, ``x-gzip`` (gzip's old name) was a 400 "body:
    not valid UTF-8, UTF-16 or UTF-32", and a plain body under a made-up coding was taken."""
    body = gzip.compress(json.dumps(seed_params()).encode())

    answer = await exchange(
        ingress.client.server,
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body,
    )

    assert refused(answer, 415, "content-encoding") == CODINGS[2]
    assert ingress.sink.produced == []
    metrics = await (await ingress.client.get("/metrics")).text()
    assert 'talkstream_ingress_requests_total{outcome="415"} 1.0' in metrics


def test_a_coding_whose_decoder_is_not_installed_is_a_415_not_a_broken_body() -> None:
    """aiohttp refuses br without Brotli, zstd without backports.zstd, before the handler,
    with the ContentEncodingError it raises for a body that does not decode: answered 400
    "body: cannot be decoded as its Content-Encoding says", of a body that may be fine."""
    for library in ("brotli (br). Please install `Brotli`", "zstandard (zstd). Please install"):
        missing = ContentEncodingError(f"Can not decode content-encoding: {library}")
        assert refusal(missing, 0) == CODINGS
    # what it raises for a gzip body that does not decode: the body's fault
    broken = ContentEncodingError("Can not decode content-encoding: gzip")
    assert refusal(broken, 0) == (400, "body", "cannot be decoded as its Content-Encoding says")


@pytest.mark.parametrize("path", ["/healthz", "/nope"])
async def test_an_unknown_expectation_elsewhere_is_a_417_in_json_quoting_none_of_it(
    ingress: Ingress, path: str
) -> None:
    """Outside the webhook (its own handler answers there) aiohttp answered it, in text
    quoting the header: "Unknown Expect: ..."."""
    answer = await exchange(
        ingress.client.server,
        f"GET {path} HTTP/1.1\r\nHost: x\r\nExpect: x-{HEADER_SECRET}\r\n\r\n".encode(),
    )

    assert refused(answer, 417, "expect") == EXPECTATION[2]


@pytest.mark.parametrize(
    ("method", "path", "status", "field", "message"),
    [
        ("POST", "/nope", 404, "path", "no such path"),
        ("POST", "/chat-gpt/generatex", 404, "path", "no such path"),
        ("POST", "/healthz", 405, "method", "not allowed here; allowed: GET, HEAD"),
        ("PUT", "/metrics", 405, "method", "not allowed here; allowed: GET, HEAD"),
    ],
)
async def test_a_path_not_served_is_refused_before_100_continue(
    ingress: Ingress, method: str, path: str, status: int, field: str, message: str
) -> None:
    """A webhook URL mistyped, sent by a client that asks before its body (curl for a large
    one): aiohttp said "100 Continue" to it, had the body sent, and only then answered 404
    (405 for a method the path does not take). It is refused at once, with the answer the
    same request gets without asking, and counted as the router's refusals are."""
    server = ingress.client.server
    assert server.host is not None and server.port is not None
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:  # the head alone: the body is sent only if the server says to
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert re.match(rb"HTTP/1\.1 %d " % status, head), head  # not "100 Continue"
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        rest = await asyncio.wait_for(reader.readexactly(length), 10)
        assert b"\r\nConnection: close\r\n" in head  # its body, if sent anyway, is not read
    finally:
        writer.close()
    _, *said = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in said if line)
    answer = Answer(status, {k.lower(): v for k, v in headers.items()}, rest, head)
    assert refused(answer, status, field) == message
    unasked = await exchange(
        server,
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode(),
    )
    assert (refused(unasked, status, field), unasked.headers.get("allow")) == (
        message,
        answer.headers.get("allow"),
    )
    metrics = await (await ingress.client.get("/metrics")).text()
    assert f'talkstream_ingress_refused_total{{status="{status}"}} 2.0' in metrics
    assert ingress.sink.produced == []

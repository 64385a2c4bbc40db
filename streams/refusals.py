"""What talkstream's HTTP servers (the ingress, the console) answer a request that aiohttp
refuses itself, before or outside any handler of ours: the product's error shape,
``{"errors": [{"field": ..., "message": ...}]}``, naming the part of the request that is wrong
and echoing none of it.

aiohttp answers these in text of its own, and its parser's answers quote the bytes it choked
on: a malformed request line quoted whole, query string included (a webhook configured as a
GET or a form may carry ``api_key`` there), a header's value, the body bytes left past a short
``Content-Length``, an ``Expect`` header. Four places answer for aiohttp, and each is covered
here:

- its HTTP parser (a malformed request line or header, a request line too long (414), a
  header too long or too many (431), a broken chunked or compressed body that arrives with
  its headers; the ingress decodes its compressed bodies itself, ``streams.codings``): the
  connection's
  ``RequestHandler.handle_error``, which no middleware sees. aiohttp offers no hook for it
  (aio-libs/aiohttp#3287), so :class:`AppRunner` serves the app on connections whose
  ``handle_error`` answers in JSON; ``run_app`` is aiohttp's ``web.run_app`` on it.
- its router and body limit (404 for a path, 405 for a method, 413 past ``client_max_size``)
  and a body whose encoding breaks while a handler reads it: the :func:`refusals`
  middleware.
- a bug of ours (500) and a handler that timed out (504): ``handle_error`` again, in JSON
  too, with nothing of the request or the exception in it (the log has the traceback).
  Headers an app gives every answer (:data:`ANSWER_HEADERS`: the console's) are given to
  ``handle_error``'s answers too.
- an ``Expect`` other than ``100-continue`` (417), which aiohttp answers before any
  middleware, and a ``100-continue`` its router refuses (404, 405), which aiohttp answered
  "100 Continue" before the refusal: :class:`AppRunner` serves the app's handling wrapped to
  answer them.

What aiohttp logs of a refused request is kept to the fact alone by
:class:`streams.logs.RedactBadRequests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
Refusal = tuple[int, str, str]  # status, field, message

MALFORMED: Refusal = (400, "request", "not a valid HTTP request")
MALFORMED_HEADER: Refusal = (400, "headers", "a header is malformed")
# the bytes left past a body's Content-Length are read as the next request, and their first
# word as its method
NO_METHOD: Refusal = (
    400,
    "method",
    "not an HTTP method (or the bytes past a body's Content-Length, read as a next request)",
)
CHUNKS: Refusal = (400, "body", "its chunked transfer encoding is malformed")
EXPECTATION: Refusal = (417, "expect", "not supported; only 100-continue is")
# a content coding this server cannot decode (RFC 9110 15.5.16: 415); aiohttp hands a body in
# one it does not know (``x-gzip``, ``compress``, two codings) to the handler as it came
CODINGS: Refusal = (
    415,
    "content-encoding",
    "not supported; send the body uncompressed, or as gzip or deflate",
)

# a transfer coding other than chunked (RFC 9112 6.1: a server that does not understand one
# answers 501). aiohttp reads a body whose last coding is chunked (``gzip, chunked``) as
# chunked, the codings before it ignored, and hands it on so; one whose last coding is not
# chunked its parser refuses (400, RFC 9112 6.3: its length cannot be told)
TRANSFER_CODINGS: Refusal = (
    501,
    "transfer-encoding",
    "not implemented; send the body as is (Content-Length) or chunked, with no other transfer "
    "coding (compress it with Content-Encoding instead)",
)

# a body that does not decode as its Content-Encoding says (aiohttp's parser; the ingress's
# own decoder, ``streams.codings``)
UNDECODABLE: Refusal = (400, "body", "cannot be decoded as its Content-Encoding says")

# the parser's refusals by their class, most specific first
BY_CLASS: tuple[tuple[type[HttpProcessingError], Refusal], ...] = (
    (BadHttpMethod, NO_METHOD),
    (BadStatusLine, (400, "request line", "not a valid HTTP request line")),
    (InvalidURLError, (400, "path", "not a valid URL")),
    (InvalidHeader, MALFORMED_HEADER),
    (TransferEncodingError, CHUNKS),
    (ContentLengthError, (400, "body", "shorter than its Content-Length")),
    (ContentEncodingError, UNDECODABLE),
    (PayloadEncodingError, (400, "body", "malformed")),
)
# llhttp says the rest as BadHttpMessage("<reason>:\n\n  <the bytes>"): by words of the
# reason (only ever to choose one of these answers, never quoted)
BY_REASON: tuple[tuple[str, Refusal], ...] = (
    ("chunk", CHUNKS),
    ("content-length", (400, "headers", "Content-Length is malformed or conflicts")),
    ("transfer-encoding", (400, "headers", "Transfer-Encoding is malformed or conflicts")),
    # aiohttp refuses a header of one value given twice ("Duplicate 'Content-Type' header
    # found."): the body's type is the one a webhook's sender can get wrong so (a client's and
    # a proxy's), and was told only "a header is malformed"
    ("duplicate 'content-type'", (400, "content-type", "given more than once: send one")),
    ("header", MALFORMED_HEADER),
    ("method", NO_METHOD),
)
# the compiled parser's callbacks that raise LineTooLong, by what they read
SPANS = {
    "cb_on_url": "request line",
    "cb_on_header_field": "headers",
    "cb_on_header_value": "headers",
}


def body(field: str, message: str) -> dict[str, list[dict[str, str]]]:
    return {"errors": [{"field": field, "message": message}]}


def refusal(exc: BaseException | None, max_headers: int) -> Refusal:
    """What to answer for an error of aiohttp's HTTP parser (or one it caused)."""
    while exc is not None and not isinstance(exc, HttpProcessingError):
        exc = exc.__cause__  # RequestPayloadError: the parser's error is its cause
    if exc is None:
        return MALFORMED
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        longer = f"longer than {limit} bytes" if limit else "too long"
        part = too_long(exc)
        if part == "request line":  # RFC 9112 3: a target longer than the server parses
            return 414, "request line", longer
        if part == "headers":  # RFC 6585 5
            return 431, "headers", f"a header is {longer}"
        return 400, "request", f"its request line or a header is {longer}"
    # aiohttp's for a coding it knows but whose decoder is not installed (br without Brotli,
    # zstd without backports.zstd: "... Please install ..."): the body may be fine, only this
    # server cannot read it. A body that does not decode is "Can not decode ...: gzip".
    if isinstance(exc, ContentEncodingError) and "please install" in str(exc).lower():
        return CODINGS
    for kind, answer in BY_CLASS:
        if isinstance(exc, kind):
            return answer
    if isinstance(exc, BadHttpMessage):
        reason = exc.message.partition(":")[0].lower()
        if reason.startswith("too many headers"):
            return 431, "headers", f"more than {max_headers} headers"
        for word, answer in BY_REASON:
            if word in reason:
                return answer
    return MALFORMED


def too_long(exc: LineTooLong) -> str | None:
    """What the parser was reading when a line ran past its limit: ``"request line"``,
    ``"headers"``, or None when that cannot be told.

    aiohttp raises the one ``LineTooLong``, with the same limit (8190 bytes for both by
    default) and the same message, for a request line and for a header, so it is told by where
    it was raised: the compiled parser's callback for llhttp's span (``cb_on_url``, or
    ``cb_on_header_field`` / ``cb_on_header_value``, a trailer's too), or the pure-Python
    parser's lines of the message so far (none: this is its request line). A chunk's line,
    which only the pure-Python parser limits, is neither."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    where = frame.f_code.co_name.rpartition(".")[2]
    if where in SPANS:
        return SPANS[where]
    lines = getattr(frame.f_locals.get("self"), "_lines", None)
    if where == "feed_data" and isinstance(lines, list):
        return "headers" if lines else "request line"
    return None


def _answer(status: int, field: str, message: str, headers: Any = None) -> web.Response:
    return web.json_response(body(field, message), status=status, headers=headers)


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's answers for an unknown path (404), a method a path does not take (405) and a
    body past ``client_max_size`` (413), and a body whose encoding breaks while it is read (a
    400, not the 500 of an unhandled exception), in the product's shape. Their headers stay
    (``Allow``; the console's security headers). Each is counted by an app's ``REFUSED``, if
    it has one (the ingress's ``talkstream_ingress_refused_total``)."""
    try:
        return await handler(request)
    except RequestPayloadError as exc:
        status, field, message = refusal(exc, 0)
        response = _answer(status, field, message)
        response.force_close()  # the rest of the body cannot be read either
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        response = _routed(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        # aiohttp's own words: "Maximum request body size N exceeded." or "Maximum number of
        # form fields N exceeded."
        limit = re.search(r"\d+", exc.text or "")
        if "field" in (exc.text or "") and limit:
            message = f"more than {limit[0]} form fields"
        else:
            message = f"larger than {limit[0] if limit else request.client_max_size} bytes"
        response = _answer(413, "body", message, _kept(exc))
    # no handler of the app answered it (its router's refusals, a page's unread body): counted
    # by the app that counts them (the ingress: a 404 was counted nowhere)
    counted = request.app.get(REFUSED)
    if counted is not None:
        counted(response.status)
    return response


def _routed(exc: web.HTTPException) -> web.Response:
    """The router's refusal (a path not served: 404; a method it does not take: 405)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _answer(405, "method", f"not allowed here; allowed: {allowed}", _kept(exc))
    return _answer(404, "path", "no such path", _kept(exc))


def _kept(exc: web.HTTPException) -> CIMultiDict[str]:
    dropped = {hdrs.CONTENT_TYPE.lower(), hdrs.CONTENT_LENGTH.lower()}
    return CIMultiDict((k, v) for k, v in exc.headers.items() if k.lower() not in dropped)


# an app's own count of the requests its server refused before any handler ran (what its
# handlers answer, they count themselves): called with the status answered
Refused = Callable[[int], None]
REFUSED: web.AppKey[Refused] = web.AppKey("refused")
# an app that decodes its requests' bodies itself (the ingress: ``streams.codings``), served by
# :class:`AppRunner` with aiohttp's decoding off (its public ``auto_decompress``): its handlers
# read a body as sent, in its Content-Encoding
RAW_BODIES: web.AppKey[bool] = web.AppKey("raw_bodies")
# what an app puts in the headers of every answer (the console's security headers), also of
# those its server answers itself (:meth:`_Connection.handle_error`: a parser's refusal, a
# bug's 500), which its middlewares never see
ANSWER_HEADERS: web.AppKey[Callable[[web.StreamResponse], None]] = web.AppKey("answer_headers")


class _Connection(web.RequestHandler):
    """aiohttp's connection, whose own error answers are the product's JSON."""

    refused: Refused | None = None
    headers: Callable[[web.StreamResponse], None] | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's: logs it (``RedactBadRequests`` keeps the bytes out) and refuses once an
        # answer has begun; its text answer, which may quote the request, is not sent
        super().handle_error(request, status, exc, message)
        if status >= 500:
            what = "timed out" if status == 504 else "internal error"
            answer = _answer(status, "server", what)
        else:
            answer = _answer(*refusal(exc, self.max_headers))
            if self.refused is not None:  # the parser's: no handler has seen it
                self.refused(answer.status)
        if self.headers is not None:
            self.headers(answer)
        answer.force_close()
        return answer

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """A stop gives the request in progress ``timeout`` in all, then closes its connection
        unanswered. aiohttp's waits ``timeout`` for it, then cancels only the reading of its
        body and waits ``timeout`` again for its handler: one that reads no more (a webhook
        waiting for Kafka's acknowledgement) held a stop twice ``INGRESS_SHUTDOWN_SECONDS``
        (31 s of the default 15) before the producer's 10 s. Past ``timeout`` its handler is
        cancelled, which ends aiohttp's waits at once."""
        if timeout is None:
            await super().shutdown(timeout)
            return
        stopping = asyncio.ensure_future(super().shutdown(timeout))
        try:
            done, _ = await asyncio.wait([stopping], timeout=timeout)
        except asyncio.CancelledError:
            stopping.cancel()
            raise
        if not done and self._task_handler is not None:
            self._task_handler.cancel()
        await stopping


class _Server(web.Server):
    refused: Refused | None = None
    headers: Callable[[web.StreamResponse], None] | None = None

    def __call__(self) -> web.RequestHandler:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        connection.refused = self.refused
        connection.headers = self.headers
        return connection


async def _expecting(
    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    app: web.Application,
    request: web.BaseRequest,
) -> web.StreamResponse:
    """aiohttp's answer to an ``Expect`` it does not take (anything but ``100-continue``), which
    it raises before any middleware, in text quoting the header ("Unknown Expect: ..."): in
    the product's shape. (The ingress's webhook answers its own, and counts it.)

    A request that expects ``100-continue`` of a path not served (or with a method its path
    does not take) is refused before its body is asked for, as :func:`refusals` refuses it
    (404, 405; counted, given the app's :data:`ANSWER_HEADERS`): aiohttp said "100 Continue"
    to it (its default expect handler is every unrouted request's), and the refusal came
    once the body was on its way."""
    expects = request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue"
    if expects and request.version >= HttpVersion11 and isinstance(request, web.Request):
        unrouted = (await app.router.resolve(request)).http_exception
        if isinstance(unrouted, web.HTTPNotFound | web.HTTPMethodNotAllowed):
            answer = _routed(unrouted)
            answer.force_close()  # its body, if sent anyway, is not read
            counted = app.get(REFUSED)
            if counted is not None:
                counted(answer.status)
            secured = app.get(ANSWER_HEADERS)
            if secured is not None:
                secured(answer)
            return answer
    try:
        return await handle(request)
    except web.HTTPExpectationFailed:
        answer = _answer(*EXPECTATION)
        answer.force_close()
        return answer


class AppRunner(web.AppRunner):
    """aiohttp's runner, serving on :class:`_Connection` s (tests serve the apps on it too);
    an app's bodies as sent when it says it decodes them itself (:data:`RAW_BODIES`)."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        options = dict(made._kwargs)
        if self.app.get(RAW_BODIES, False):
            options["auto_decompress"] = False
        server = _Server(
            functools.partial(_expecting, made.request_handler, self.app),
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **options,
        )
        server.refused = self.app.get(REFUSED)
        server.headers = self.app.get(ANSWER_HEADERS)
        return server


def run_app(
    app: web.Application | Awaitable[web.Application],
    *,
    host: str,
    port: int,
    print: Callable[[str], None],
    shutdown_timeout: float = 60.0,
    keepalive_timeout: float = 75.0,
    **kwargs: Any,
) -> None:
    """``web.run_app(app, host=..., port=..., ...)`` on :class:`AppRunner`: serves until
    SIGINT or SIGTERM, then stops as aiohttp's does: no new connections, ``shutdown_timeout``
    for the requests in progress, then the app's cleanup (the ingress's producer), and only
    then is what is left cancelled. ``print`` gets aiohttp's banner."""

    async def serve() -> None:
        built = app if isinstance(app, web.Application) else await app
        runner = AppRunner(
            built, shutdown_timeout=shutdown_timeout, keepalive_timeout=keepalive_timeout, **kwargs
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
            await stop.wait()
        finally:
            await runner.cleanup()
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C before the handlers are set
        asyncio.run(serve())

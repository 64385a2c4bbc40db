"""A compressed request body must end as its coding says: a gzip body cut short is refused.

aiohttp decodes a ``Content-Encoding: gzip`` (or ``deflate``) body as it arrives, and at its
end checks that a deflate stream ended, but not a gzip one: a gzip body that stops before its
stream does (its 8-byte trailer, CRC-32 and length, missing; or cut mid-stream, with a prefix
that happens to read as the whole params) was taken as the body, unverified. It cannot check
it as deflate's is checked: once a gzip member ends it starts a fresh decompressor for a next
one, so "ended" and "not begun" look alike at the end of the body.

:func:`install` (run on import of ``streams.refusals``, whose servers are the ingress and the
console) makes aiohttp's gzip decoder of a *request* body (never a client's response: the
OpenAI and Talkable adapters read theirs as before) remember whether its current member has
begun, and the body's end, one begun and not ended, fail the body's reader with
``RequestPayloadError`` caused by :class:`StreamCutShort`, as a body that does not decode
fails it. A deflate body cut short, which aiohttp refused with a parser error the handler
reading it never saw (it waited for the rest until its timeout), fails so too. The handler
answers it (``streams.refusals.refusal``: 400 naming the body and its coding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.compression_utils import ZLibDecompressor
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.http_parser import DeflateBuffer
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

# the codings whose stream's end is checked (``DeflateBuffer.encoding``)
CHECKED = ("gzip", "deflate")


class StreamCutShort(ContentEncodingError):
    """A compressed body ended before its stream did; ``coding`` is ``gzip`` or ``deflate``."""

    def __init__(self, coding: str) -> None:
        super().__init__(f"the {coding} stream ends before its end")
        self.coding = coding


class _Member:
    """One member's zlib decompressor, which knows whether it has been fed a byte."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.begun = False

    def decompress(self, data: Any, max_length: int = 0) -> bytes:
        if len(data):
            self.begun = True
        result: bytes = self._inner.decompress(data, max_length)
        return result

    def flush(self, *args: int) -> bytes:
        result: bytes = self._inner.flush(*args)
        return result

    @property
    def eof(self) -> bool:
        return bool(self._inner.eof)

    @property
    def unconsumed_tail(self) -> bytes:
        return bytes(self._inner.unconsumed_tail)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._inner.unused_data)


class _TrackedGzip(ZLibDecompressor):
    """aiohttp's gzip decompressor whose members say whether they have begun."""

    def _new_decompressor(self) -> Any:
        return _Member(super()._new_decompressor())

    def cut_short(self) -> bool:
        member = self._decompressor
        return isinstance(member, _Member) and member.begun and not member.eof


def _cut_short(buffer: DeflateBuffer) -> bool:
    if buffer.size <= 0 or buffer.encoding not in CHECKED:
        return False
    decompressor = buffer.decompressor
    if isinstance(decompressor, _TrackedGzip):
        return decompressor.cut_short()
    return buffer.encoding == "deflate" and not decompressor.eof


def _serving(out: Any) -> bool:
    """Whether the body is a request's, read by a server (its stream's protocol)."""
    return isinstance(getattr(out, "_protocol", None), RequestHandler)


def install() -> None:
    """aiohttp's ``DeflateBuffer`` (its C parser's too: it builds the same class) decodes a
    request's gzip with :class:`_TrackedGzip`, and fails a stream cut short at the body's end.
    Once."""
    if getattr(DeflateBuffer, "_talkstream_checked", False):
        return
    init: Callable[..., None] = DeflateBuffer.__init__
    feed_eof: Callable[[DeflateBuffer], None] = DeflateBuffer.feed_eof

    def __init__(self: DeflateBuffer, out: Any, *args: Any, **kwargs: Any) -> None:
        init(self, out, *args, **kwargs)
        self._talkstream_request = _serving(out)  # type: ignore[attr-defined]
        if (
            self._talkstream_request  # type: ignore[attr-defined]
            and self.encoding == "gzip"
            and type(self.decompressor) is ZLibDecompressor
        ):
            self.decompressor = _TrackedGzip(encoding="gzip")

    def checked_feed_eof(self: DeflateBuffer) -> None:
        if getattr(self, "_talkstream_request", False) and _cut_short(self):
            cut = StreamCutShort(str(self.encoding))
            # as aiohttp fails a body that does not decode: its reader raises; and the body has
            # ended (nothing left to read, no lingering read of it after the answer)
            set_exception(self.out, RequestPayloadError(str(cut)), cut)
            self.out.feed_eof()
            return
        feed_eof(self)

    DeflateBuffer.__init__ = __init__  # type: ignore[method-assign]
    DeflateBuffer.feed_eof = checked_feed_eof  # type: ignore[method-assign]
    DeflateBuffer._talkstream_checked = True  # type: ignore[attr-defined]

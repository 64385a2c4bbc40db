"""A webhook's body decoded from its ``Content-Encoding`` by the ingress itself: ``gzip`` and
``deflate`` (RFC 9110 8.4.1), read whole, each stream checked to its end.

aiohttp decodes a request's body as it arrives, and checks at its end that a deflate stream
ended, but not a gzip one: a gzip body without its trailer (CRC-32 and length) was taken as
whole, its checksum never read. And a deflate body cut short failed aiohttp's parser, whose
error the handler reading the body never sees: a body that arrived after its headers waited
for the body timeout (a 408) instead of being refused. Patching aiohttp's private decoder to
tell was reverted (an upgrade could break every compressed body), so the ingress is served
with aiohttp's decoding off (``streams.refusals.RAW_BODIES``), reads the body as sent, and
decodes it here with :mod:`zlib`, as aiohttp did: concatenated streams (several gzip members)
read one after the other, a deflate body with or without its zlib wrapper (RFC 1950; some
clients send the bare RFC 1951 stream). What it refuses:

- a stream that does not end where the body does (cut short): 400 naming the body and its
  coding;
- bytes that are not the coding's: 400, as aiohttp's parser answered (``streams.refusals``);
- more than ``limit`` bytes once decoded (a small body can inflate a thousandfold): 413, as
  aiohttp's ``client_max_size`` answered a decoded body over it;
- any other coding: 415 (``streams.refusals.CODINGS``). ``br`` and ``zstd``, which aiohttp
  decoded only with libraries talkstream does not install, are among them.

A transfer coding (``Transfer-Encoding``) but ``chunked``, which aiohttp leaves undecoded, is
a 501 (``streams.refusals.TRANSFER_CODINGS``).
"""

from __future__ import annotations

import zlib
from typing import Final

from models.params import FieldError, ParamsError
from models.problems import Problem
from streams.refusals import CODINGS, TRANSFER_CODINGS, UNDECODABLE

# the codings a body may arrive in; any other (or two) is refused
PLAIN: Final = frozenset({"", "identity"})
DECODED: Final = frozenset({"gzip", "deflate"})


def cut_short(coding: str) -> str:
    return (
        f"cut short: its {coding} stream (Content-Encoding: {coding}) does not end (its end "
        "or trailer is missing)"
    )


def coding_of(lines: list[str]) -> str:
    """The coding ``Content-Encoding`` names, from every line of it (RFC 9110 5.3: two lines
    are one list, ``gzip`` twice is ``gzip, gzip``, refused as two codings), trimmed and
    lower-cased. Its first line alone took a body sent as ``gzip`` then ``x-foo`` as gzip."""
    return ", ".join(line.strip() for line in lines if line.strip()).lower()


def refuse_unknown(coding: str) -> None:
    """A coding the ingress does not decode: 415, before the body is read."""
    if coding not in PLAIN and coding not in DECODED:
        _, field, message = CODINGS
        raise ParamsError(Problem.UNSUPPORTED, [FieldError(field=field, message=message)])


def refuse_transfer(lines: list[str]) -> None:
    """A transfer coding but ``chunked`` (``Transfer-Encoding: gzip, chunked``): 501, before
    the body is read. aiohttp's parser refuses a list whose last coding is not ``chunked``
    (400); one that ends in it, it reads as chunked, and the codings before it were ignored:
    a body sent so was read as if it had none."""
    codings = [coding.strip().lower() for line in lines for coding in line.split(",")]
    if [coding for coding in codings if coding] not in ([], ["chunked"]):
        _, field, message = TRANSFER_CODINGS
        raise ParamsError(Problem.UNIMPLEMENTED, [FieldError(field=field, message=message)])


def decoded(coding: str, body: bytes, limit: int) -> bytes:
    """``body`` as sent in ``coding`` (one :func:`refuse_unknown` let through), decoded: at
    most ``limit`` bytes, every stream whole. Raises :class:`ParamsError`."""
    if coding in PLAIN or not body:  # an empty body is empty in any coding (as aiohttp's)
        return body
    if coding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif body[0] & 0x0F == 8:  # RFC 1950's header: compression method 8, deflate
        wbits = zlib.MAX_WBITS
    else:  # a bare deflate stream, as aiohttp took it
        wbits = -zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:  # one stream (a gzip member) after another
        stream = zlib.decompressobj(wbits)
        try:
            while rest and not stream.eof:
                part = stream.decompress(rest, limit + 1 - size)  # never more than the limit
                size += len(part)
                if size > limit:
                    raise _error(Problem.TOO_LARGE, f"larger than {limit} bytes once decoded")
                parts.append(part)
                rest = stream.unconsumed_tail
        except zlib.error:
            raise _error(Problem.UNREADABLE, UNDECODABLE[2]) from None
        if not stream.eof:
            raise _error(Problem.UNREADABLE, cut_short(coding))
        rest = stream.unused_data
    return b"".join(parts)


def _error(problem: Problem, message: str) -> ParamsError:
    return ParamsError(problem, [FieldError(field="body", message=message)])

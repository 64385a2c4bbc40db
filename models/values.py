"""Values as Liquid renders them, typed: every value of a webhook arrives as a string.

Integers accept ints and digit strings (:data:`NonNegativeInt`, :data:`PositiveInt`,
:data:`SignedInt`), numbers their JSON type or a string of it (:data:`FiniteFloat`), flags
``true``/``false`` (:data:`Flag`); a key (:data:`Secret`) must be sendable as an HTTP header.
Error messages never repeat the value: a secret cannot leak through them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr

INT64_MAX = 2**63 - 1

_SIGNED_INT = re.compile(r"-?[0-9]{1,19}")
_DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# a Talkable site slug (its Site ID, ``my-store``): printable ASCII without spaces, and no ``:``,
# which ends the site in the person's key. A letter outside ASCII, a bidi control (U+202E) or
# an invisible one (U+200B) is no slug Talkable gives a site: sent on, the webhook cost an
# OpenAI call before Talkable refused the write-back
SITE_SLUG = re.compile(r"[\x21-\x39\x3b-\x7e]+")
SITE_SLUG_RULE = (
    "must be a site slug (Talkable's Site ID): printable ASCII (letters, digits, '-', '_', "
    "'.'), no spaces, control characters or ':'"
)
# Unicode's control, format (bidi controls, zero-width characters), surrogate, private-use and
# unassigned characters, and its line and paragraph separators: invisible in Talkable's
# dashboard, never what a campaign means to write
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
INVISIBLE_RULE = (
    "must not contain control, format (bidi or zero-width), private-use or unassigned characters"
)
# what Liquid leaves of a template it did not render: a value holding it was never filled in
LIQUID = re.compile(r"\{\{|\{%")
UNRENDERED = "holds Liquid markup ({{ ... }} or {% ... %}) that was not rendered"
MAX_KEY_LENGTH = 1024
_HEADER_TOKEN = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")
# OpenAI's pattern for a message's ``name`` ("^[a-zA-Z0-9_-]+$" in its 400), at most 64 long
_PARTICIPANT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def digits(value: Any) -> Any:
    """Liquid renders integers as strings: accept ``"3"``, refuse ``"3.5"``, ``"-1"``, ``""``."""
    return _integer(value, "a non-negative integer")


def positive(value: Any) -> Any:
    """As :func:`digits`, and at least 1: every refusal says so (a count of 0 too, which
    "non-negative" would have told to send)."""
    count = _integer(value, "a positive integer")
    if isinstance(count, int) and count < 1:
        raise ValueError("must be a positive integer (at least 1)")
    return count


def _integer(value: Any, kind: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be {kind}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"must be {kind} (a string of digits)")
        if len(text.lstrip("0")) > 19:
            raise ValueError("is too large")
        return int(text)
    if isinstance(value, int):
        return value
    raise ValueError(f"must be {kind}")


def signed(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, str):
        text = value.strip()
        if not _SIGNED_INT.fullmatch(text):
            raise ValueError("must be an integer (a string of digits)")
        return int(text)
    if isinstance(value, int):
        return value
    raise ValueError("must be an integer")


def number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise ValueError("must be a number")
        value = float(text)
    elif isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            raise ValueError("is too large") from None
    if not isinstance(value, float):
        raise ValueError("must be a number")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


def no_stream(value: bool) -> bool:
    if value:
        raise ValueError("streaming is not supported")
    return value


def secret_text(value: Any) -> Any:
    """A key is sent as an HTTP header value (``Authorization: Bearer <key>``): after trimming,
    printable ASCII without spaces or control characters, or no upstream call could carry it."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        if not _HEADER_TOKEN.fullmatch(value):
            raise ValueError(
                "must be printable ASCII without spaces or control characters "
                f"(at most {MAX_KEY_LENGTH} characters): it is sent as a header"
            )
        rendered(value)
    return value


def participant_name(value: Any) -> Any:
    """A message's ``name``, as OpenAI takes it: 1 to 64 ASCII letters, digits, underscores or
    hyphens (its 400 otherwise: "string does not match pattern"). Trimmed; blank is absent
    (Liquid renders a missing first name so)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if not value:
        return None
    if not _PARTICIPANT_NAME.fullmatch(rendered(value)):
        raise ValueError(
            "must be 1 to 64 letters (a-z, A-Z), digits, underscores or hyphens, no spaces: "
            "OpenAI's rule for a message's name"
        )
    return value


def invisible(value: str) -> bool:
    """Whether ``value`` holds a character of :data:`_INVISIBLE` (ASCII's controls included)."""
    return not value.isprintable() and any(unicodedata.category(c) in _INVISIBLE for c in value)


def rendered(value: str) -> str:
    """A value Talkable rendered: no Liquid markup left in it (``{{ site.api_key }}``)."""
    if LIQUID.search(value):
        raise ValueError(UNRENDERED)
    return value


def lower_text(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


NonNegativeInt = Annotated[int, BeforeValidator(digits), Field(ge=0, le=INT64_MAX)]
PositiveInt = Annotated[int, BeforeValidator(positive), Field(gt=0, le=INT64_MAX)]
SignedInt = Annotated[int, BeforeValidator(signed), Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
FiniteFloat = Annotated[float, BeforeValidator(number)]
Flag = Annotated[bool, BeforeValidator(flag)]
Secret = Annotated[SecretStr, BeforeValidator(secret_text), Field(min_length=1)]

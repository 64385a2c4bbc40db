"""What an upstream says about its limits, read from its answers.

OpenAI sends, on every response (429s included)::

    x-ratelimit-limit-requests: 300        x-ratelimit-limit-tokens: 40000
    x-ratelimit-remaining-requests: 299    x-ratelimit-remaining-tokens: 39850
    x-ratelimit-reset-requests: 200ms      x-ratelimit-reset-tokens: 6m0s

(limits per minute; resets as Go-style durations), and in a 429 body the limit it hit and
when to try again ("... on requests per min (RPM): Limit 300, Used 300, Requested 1. Please
try again in 1.234s", or "20ms"; a server or proxy that sends no such headers may still pass
the body on). Those limits are the organisation's, which every key of it shares: every answer
names it (``openai-organization: org-...``), and so does a 429 body ("Rate limit reached for
gpt-4o in organization org-... on ..."; ``user-...`` for a key of no organisation's, or an
organisation's slug: letters, digits, ``-`` and ``_``). Anyone may send ``retry-after-ms`` or
``retry-after`` (seconds, or an HTTP date: the wait until then by this machine's clock).
Talkable publishes no limits and only asks clients to back off.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_TRY_AGAIN = re.compile(r"try again in\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)
# "... on requests per min (RPM): Limit 600, Used 600, Requested 1." (never a day's limit)
# "Rate limit reached for gpt-4o in organization org-abc123 on requests per min ..."
_SAID_ORGANIZATION = re.compile(r"\bin organization (org-[A-Za-z0-9_-]+)")
# an organisation as OpenAI names one ("org-AbC123...", "user-abc123...", a slug): anything
# else, or longer, is not one (a proxy's, an upstream's that echoes what it was sent)
_ORGANIZATION = re.compile(r"[A-Za-z0-9_-]{1,64}")
# a key, as an OpenAI-compatible API's may start ("sk-proj-...", "key_..."), at the start of a
# word ("risk-team", "monkey-works" are names)
_KEY_START = re.compile(r"(?<![A-Za-z0-9])(?:sk|key)[-_]", re.IGNORECASE)
_KEY_FRAGMENT = 8  # an organisation this long found in the call's key is a part of it
_SAID_LIMIT = re.compile(
    r"on (requests|tokens) per min \((?:RPM|TPM)\):\s*Limit (\d+(?:\.\d+)?)", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Limits:
    """One answer's view of a target's limits; None where the answer said nothing."""

    requests_per_minute: float | None = None
    remaining_requests: float | None = None
    requests_reset_s: float | None = None
    tokens_per_minute: float | None = None
    remaining_tokens: float | None = None
    tokens_reset_s: float | None = None
    retry_after_s: float | None = None
    organization: str | None = None  # whose limits they are (OpenAI's organisation id)

    @property
    def said_anything(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute))


def duration_seconds(text: str | None) -> float | None:
    """``"6m0s"``, ``"1.5s"``, ``"20ms"``, ``"1h2m"`` → seconds; None if it is not one."""
    if not text:
        return None
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _number(value: str | None) -> float | None:
    """A header's finite number ("inf" or "nan" would pause a target for ever, or pace it
    by nothing); None for anything else."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``retry-after-ms`` (OpenAI) or ``retry-after`` in seconds, or as an HTTP date (the wait
    from ``now``, this machine's clock by default, until then; a date past is no wait)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        seconds = _number(headers.get(name))
        if seconds is not None and seconds >= 0:
            return seconds * scale
    return _until_date(headers.get("retry-after"), time.time() if now is None else now)


def _until_date(value: str | None, now: float) -> float | None:
    if not value or value.strip()[:1].isdigit():  # a number, read (or refused) above
        return None
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:  # an HTTP date is GMT
        at = at.replace(tzinfo=datetime.UTC)
    return max(at.timestamp() - now, 0.0)


def try_again_in(message: str | None) -> float | None:
    """The wait an OpenAI 429 body asks for ("Please try again in 1.234s")."""
    found = _TRY_AGAIN.search(message or "")
    return duration_seconds(found.group(1)) if found else None


def limit_said(message: str | None, lane: str) -> float | None:
    """The limit a minute an OpenAI 429 body names for ``lane`` ("requests", "tokens"):
    "... on tokens per min (TPM): Limit 40000, Used ..." (what a server or proxy that sends
    no ``x-ratelimit-*`` headers still passes on)."""
    for found in _SAID_LIMIT.finditer(message or ""):
        if found.group(1).lower() == lane:
            return _number(found.group(2)) or None
    return None


def organization_said(
    headers: Mapping[str, str], message: str | None = None, secret: str = ""
) -> str | None:
    """The organisation whose limits an answer speaks of: its ``openai-organization`` header,
    else the one its 429 body names (a proxy may drop the header and pass the body on).

    It becomes the Kafka key of the commands forwarded to its executor and words of a log
    line: one that is not an organisation's (:data:`_ORGANIZATION`), or holds the call's key
    (``secret``), a part of it or anything that looks like a key, is none named."""
    said = _organization((headers.get("openai-organization") or "").strip(), secret)
    if said is None:
        found = _SAID_ORGANIZATION.search(message or "")
        said = _organization(found.group(1), secret) if found else None
    return said


def _organization(said: str, secret: str) -> str | None:
    if not _ORGANIZATION.fullmatch(said) or _KEY_START.search(said):
        return None
    if secret and (secret in said or (len(said) >= _KEY_FRAGMENT and said in secret)):
        return None
    return said


def read_limits(
    headers: Mapping[str, str],
    message: str | None = None,
    now: float | None = None,
    *,
    secret: str = "",
) -> Limits:
    """Everything the answer said: the ``x-ratelimit-*`` headers, ``retry-after(-ms)``, and
    of an error message the "try again in" (the longer of the two waits) and the limit a
    minute it names, where no header gave it; and whose limits they are (never ``secret``,
    the call's key: :func:`organization_said`)."""
    waits = [w for w in (retry_after(headers, now), try_again_in(message)) if w is not None]
    requests = _number(headers.get("x-ratelimit-limit-requests"))
    tokens = _number(headers.get("x-ratelimit-limit-tokens"))
    return Limits(
        requests_per_minute=requests if requests is not None else limit_said(message, "requests"),
        remaining_requests=_number(headers.get("x-ratelimit-remaining-requests")),
        requests_reset_s=duration_seconds(headers.get("x-ratelimit-reset-requests")),
        tokens_per_minute=tokens if tokens is not None else limit_said(message, "tokens"),
        remaining_tokens=_number(headers.get("x-ratelimit-remaining-tokens")),
        tokens_reset_s=duration_seconds(headers.get("x-ratelimit-reset-tokens")),
        retry_after_s=max(waits) if waits else None,
        organization=organization_said(headers, message, secret),
    )

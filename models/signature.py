"""Talkable's request signature (DESIGN.md §2).

A Custom App request carries ``x-talkable-signature`` =
Base64(hex(HMAC-SHA256(site security key, raw body))): the Base64 of the ASCII hex digest, not
of the raw digest. Verify over the raw body bytes exactly as received, before any parsing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_HEADER = "x-talkable-signature"


def expected_signature(key: bytes, body: bytes) -> str:
    """The signature Talkable sends for ``body`` signed with ``key``."""
    hex_digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    return base64.b64encode(hex_digest.encode("ascii")).decode("ascii")


def verify_signature(key: bytes, body: bytes, header: str | None) -> bool:
    """Does ``header`` carry the right signature? Constant-time; a missing header is wrong."""
    if header is None:
        return False
    expected = expected_signature(key, body).encode("ascii")
    given = header.strip().encode("utf-8", errors="replace")
    return hmac.compare_digest(expected, given)

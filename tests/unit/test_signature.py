"""The Custom App signature: Base64 of the hex HMAC-SHA256 of the raw body."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.signature import expected_signature, verify_signature

KEY = b"site-security-key"
BODY = b'{"site":"acme-store","email":"alice@example.com"}'


def test_the_signature_is_base64_of_the_ascii_hex_digest() -> None:
    hex_digest = hmac.new(KEY, BODY, hashlib.sha256).hexdigest()

    signature = expected_signature(KEY, BODY)

    assert base64.b64decode(signature) == hex_digest.encode("ascii")
    assert len(signature) == 88  # 64 hex chars, base64-encoded


def test_a_known_vector() -> None:
    # HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231-style vector
    hex_digest = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    body = b"The quick brown fox jumps over the lazy dog"

    assert expected_signature(b"key", body) == base64.b64encode(hex_digest.encode()).decode()


def test_the_right_signature_verifies() -> None:
    assert verify_signature(KEY, BODY, expected_signature(KEY, BODY))
    assert verify_signature(KEY, BODY, f" {expected_signature(KEY, BODY)}\n")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "not-a-signature",
        expected_signature(b"other-key", BODY),
        expected_signature(KEY, BODY + b" "),
        expected_signature(KEY, BODY).lower(),
        base64.b64encode(hmac.new(KEY, BODY, hashlib.sha256).digest()).decode(),  # raw digest
        hmac.new(KEY, BODY, hashlib.sha256).hexdigest(),  # hex without base64
        expected_signature(KEY, BODY)[:-1],
        "é" * 88,
        "\ud800",
    ],
)
def test_a_missing_or_wrong_signature_fails(header: str | None) -> None:
    assert not verify_signature(KEY, BODY, header)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=64), st.binary(max_size=256), st.text(max_size=100) | st.none())
def test_only_the_expected_signature_verifies(key: bytes, body: bytes, header: str | None) -> None:
    assert verify_signature(key, body, expected_signature(key, body))
    assert verify_signature(key, body, header) == (
        header is not None and header.strip() == expected_signature(key, body)
    )

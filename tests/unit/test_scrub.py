"""Upstream messages kept as a request's reason hold no key, not even a masked one."""

from __future__ import annotations

import pytest

from streams.clients.openai_chat import scrub

KEY = "tk-MARKER-0123456789abcdef"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (
            # OpenAI's 401 echoes the key masked; a compatible API's keys need not start "sk"
            "Incorrect API key provided: tk-MARK**************cdef. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "Incorrect API key provided: [redacted]. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        (
            "Incorrect API key provided: sk-proj-abc1****************wxyz.",
            "Incorrect API key provided: [redacted].",
        ),
        (f"bad key {KEY} refused", "bad key [redacted] refused"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: [redacted]"),
        ("leaked sk-live-0123456789", "leaked [redacted]"),
        (
            "The api_key client option must be set (OPENAI_API_KEY environment variable)",
            "The api_key client option must be set (OPENAI_API_KEY environment variable)",
        ),
    ],
    ids=["masked-other-prefix", "masked-sk", "the-key", "bearer", "sk-token", "words"],
)
def test_a_message_keeps_its_words_and_loses_every_key(message: str, kept: str) -> None:
    assert scrub(message, KEY) == kept

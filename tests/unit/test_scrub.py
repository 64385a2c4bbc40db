"""Upstream messages kept as a request's reason hold no key, not even a masked one."""

from __future__ import annotations

from urllib.parse import quote, quote_plus, urlencode

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


# a sentinel with characters a URL or a form encodes (not key-like to the pattern: only the
# key itself, in each of its forms, can take it out), and one outside ASCII
ENCODED = "Sentinel/Key+9=a&b c:0123~é"


@pytest.mark.parametrize(
    "form",
    [
        ENCODED,
        quote(ENCODED),  # a path's: "/" kept
        quote(ENCODED, safe=""),  # a query value's
        quote(ENCODED, safe="").replace("%2F", "%2f").replace("%C3%A9", "%c3%a9"),  # lower hex
        quote_plus(ENCODED),  # a form's: the space as "+"
        urlencode({"api_key": ENCODED}).removeprefix("api_key="),
    ],
    ids=["as-is", "path", "query", "lower-hex", "form", "urlencode"],
)
def test_a_key_is_scrubbed_however_a_url_or_a_form_encoded_it(form: str) -> None:
    """An upstream that echoes the URL it was called with (a Talkable ``?api_key=...``, a
    proxy's error page) quotes the key percent-encoded: it was kept whole in the reason."""
    message = f"refused https://example.test/api/v2/origins/event?api_key={form}&site=s (401)"
    assert scrub(message, ENCODED) == (
        "refused https://example.test/api/v2/origins/event?api_key=[redacted]&site=s (401)"
    )


def test_a_short_key_takes_only_itself_in_each_form() -> None:
    """The forms are the key's, character for character: a key "a b" does not take "a%2Bb"
    (the "+" of another string) nor a differently cased "A B"."""
    assert scrub("a+b, a%20b, a b, a%2Bb, A B", "a b") == (
        "[redacted], [redacted], [redacted], a%2Bb, A B"
    )

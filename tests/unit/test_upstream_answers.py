"""What a 200 from OpenAI holds (``streams.clients.openai_chat.answer_text``, ``token_count``):
a text to publish, or why it is none. Real answers that carry no text: a refusal, a tool call,
content OpenAI's filter flagged, no choices, an error envelope, content that is empty or only
whitespace (published, it would replace the person's text in Talkable with nothing), no text
before the completion's cap. Those that another call would answer the same (a refusal, a
filtered text, a tool call, a cap too low) each have their own reason: they are not asked
again, each call being billed."""

from __future__ import annotations

from typing import Any

import pytest

from streams.agents.work import text_too_large
from streams.clients.openai_chat import EMPTY_COMPLETION as EMPTY
from streams.clients.openai_chat import answer_text, filtered_prompt, shown_url, token_count


def completion(content: Any = "A verse", finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12},
    }


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (completion("A verse for Ada"), "A verse for Ada"),
        # cut at the campaign's max_tokens: a text all the same, its cap
        (completion("A verse that stops", "length"), "A verse that stops"),
        # emoji, right-to-left, newlines and Liquid-looking braces are the text, unchanged
        (
            completion("Hi 🎉 שלום\n{{ person.first_name }} {% if x %}"),
            "Hi 🎉 שלום\n{{ person.first_name }} {% if x %}",
        ),
        (completion("  padded  "), "  padded  "),
    ],
)
def test_a_text_is_the_first_choices_content(body: dict[str, Any], text: str) -> None:
    answer = answer_text(body)
    assert answer.text == text
    # a text cut at the cap is published, and says so (TextGenerated's ``truncated``)
    assert answer.truncated == (body["choices"][0]["finish_reason"] == "length")


@pytest.mark.parametrize(
    ("body", "why", "reason"),
    [
        # another call may hold a text: asked again (EmptyCompletion)
        (completion(""), "the content is empty", "EmptyCompletion"),
        (completion(" \n\t "), "the content is only whitespace", "EmptyCompletion"),
        (completion([{"type": "text", "text": "hi"}]), "the content is not a string", EMPTY),
        (completion(None), "the content is absent", "EmptyCompletion"),
        ({**completion(), "choices": []}, "no choices in the answer", "EmptyCompletion"),
        (
            {"error": {"message": "The server had an error", "type": "server_error"}},
            "an error in a 200: The server had an error",
            "EmptyCompletion",
        ),
        ([completion()], "the answer is not a chat completion", "EmptyCompletion"),
        ("just a string", "the answer is not a chat completion", "EmptyCompletion"),
        # the same prompt and params get the same answer: each its own reason, not asked again
        (
            completion(None, refusal="I'm sorry, I can't help with that."),
            "the model refused: I'm",
            "Refused",
        ),
        (completion(None, "content_filter"), "finish_reason content_filter", "ContentFiltered"),
        # what the filter left of a text is not published either
        (
            completion("The first half of a", "content_filter"),
            "finish_reason content_filter",
            "ContentFiltered",
        ),
        (
            completion(None, "tool_calls", tool_calls=[{"id": "t", "type": "function"}]),
            "a tool call, not a text",
            "ToolCall",
        ),
        # a reasoning model that spent max_completion_tokens on reasoning: no text, at length
        (
            completion("", "length"),
            "the content is empty and finish_reason is length",
            "MaxTokensTooLow",
        ),
        (
            completion(None, "length"),
            "the content is absent and finish_reason is",
            "MaxTokensTooLow",
        ),
    ],
)
def test_an_answer_without_a_text_says_what_it_held_and_whether_to_ask_again(
    body: Any, why: str, reason: str
) -> None:
    text, said, said_reason, _ = answer_text(body)
    assert text is None
    assert said.startswith(why), said
    assert said_reason == reason


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (12, 12),
        (12.0, 12),
        (None, 0),
        ("12", 0),
        ("abc", 0),
        (-3, 0),
        (1.5, 0),
        (True, 0),
        (10**30, 0),
        ({"n": 1}, 0),
    ],
)
def test_a_token_count_that_is_not_one_is_zero_not_a_lost_text(value: Any, count: int) -> None:
    """An answer with its text and a malformed ``usage`` ended ``InternalError`` ("unexpected
    ValueError making the call"): a text made and paid for, given up on as a bug."""
    assert token_count(value) == count


@pytest.mark.parametrize(
    ("text", "limit", "too_large"),
    [
        ("a" * 1024, 1024, False),
        ("a" * 1025, 1024, True),
        ("ש" * 512, 1024, False),  # two bytes each: counted as UTF-8 carries them
        ("ש" * 513, 1024, True),
        ("🎉" * 257, 1024, True),
    ],
)
def test_a_text_is_too_large_by_its_utf8_bytes(text: str, limit: int, too_large: bool) -> None:
    """The person's ledger entry holds the text of each publication in flight or parked: two
    texts of 600 kB made it a record Kafka refuses, and the worker crashed at each start."""
    error = text_too_large(text, limit)
    assert (error is not None) == too_large
    if error is not None:
        assert (error.reason, error.retriable) == ("TextTooLarge", False)
        assert f"more than TALKSTREAM_MAX_TEXT_BYTES ({limit:,})" in str(error)
        assert text[:10] not in str(error)  # the text itself is not repeated


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("http://user:pass@proxy:8080/v1", "http://***@proxy:8080/v1"),
        ("https://proxy/v1?token=sk-abc123456#frag", "https://proxy/v1?***#***"),
        ("http://[::1]:8081/v1", "http://[::1]:8081/v1"),
    ],
)
def test_a_base_url_is_shown_without_what_may_be_a_secret(url: str, shown: str) -> None:
    """A 404's hint names the base URL to check: never its credentials, query or fragment,
    where a proxy's token may ride."""
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    ("body", "flagged"),
    [
        # Chat Completions: the categories under ``innererror``
        (
            {"error": {"code": "content_filter", "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"sexual": {"filtered": False, "severity": "safe"},
                                          "self_harm": {"filtered": True, "severity": "high"}}}}},
            ": self_harm high",
        ),
        # the Responses API's list; a verdict without a severity (a jailbreak is "detected")
        (
            {"code": "content_filter", "content_filters": [{"blocked": True,
             "content_filter_results": {"jailbreak": {"detected": True, "filtered": True},
                                        "hate": {"filtered": False, "severity": "safe"}}}]},
            ": jailbreak",
        ),
        # no verdicts (a proxy's shorter envelope): the refusal all the same, nothing named
        ({"error": {"code": "content_filter", "message": "filtered"}}, ""),
        ({"error": {"code": "content_filter", "innererror": "odd"}}, ""),
    ],
)  # fmt: skip
def test_azures_content_filter_refusal_names_what_it_flagged(body: Any, flagged: str) -> None:
    assert filtered_prompt(body) == (
        f"Azure OpenAI's content filter refused the prompt{flagged}; no text was generated, and"
        " the same prompt is refused again: change it, or the deployment's content filter"
    )

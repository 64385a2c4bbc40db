"""The OpenAI and Talkable adapters against the stand-ins on loopback: one call each, and every
answer classified (what the scheduler and the ledger act on), keys never in a message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from models.events import ChatRequest, PublishCompletion
from streams.clients.openai_chat import ChatClient, Completion
from streams.clients.talkable import Publication, TalkableClient
from streams.dev import openai_standin, talkable_standin
from streams.dev.openai_standin import OpenAIStandinConfig
from streams.dev.standin_common import StandinHandle
from streams.dev.talkable_standin import TalkableStandinConfig
from streams.errors import GenerationError, PublishError
from tests.support import free_port

KEY = "sk-clients-test-0001"
CHAT = ChatRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "a verse"}], max_tokens=20
)


@pytest.fixture
async def oai() -> AsyncIterator[StandinHandle[OpenAIStandinConfig]]:
    handle = await openai_standin.serve(OpenAIStandinConfig())
    yield handle
    await handle.close()


@pytest.fixture
async def chat(oai: StandinHandle[OpenAIStandinConfig]) -> AsyncIterator[ChatClient]:
    client = ChatClient(oai.url, timeout=10)
    yield client
    await client.close()


@pytest.fixture
async def tk() -> AsyncIterator[StandinHandle[TalkableStandinConfig]]:
    handle = await talkable_standin.serve(TalkableStandinConfig())
    yield handle
    await handle.close()


@pytest.fixture
async def talkable(tk: StandinHandle[TalkableStandinConfig]) -> AsyncIterator[TalkableClient]:
    client = TalkableClient(tk.url, timeout=10)
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def serving(routes: dict[str, Any]) -> AsyncIterator[str]:
    """An HTTP server on a free port answering a POST to each path with its handler: its base
    URL, while the block runs."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def failure_at(base: str) -> GenerationError:
    """How a call to the Chat Completions at ``base`` fails (a client of its own)."""
    client = ChatClient(base, timeout=10)
    try:
        with pytest.raises(GenerationError) as caught:
            await client.complete(CHAT, KEY)
    finally:
        await client.close()
    return caught.value


async def test_a_completion_comes_with_the_keys_limits(oai, chat) -> None:
    oai.config.key_limits = {KEY: {"rpm": 300, "tpm": 40_000}}
    completion, limits = await chat.complete(CHAT, KEY)
    assert completion.text and completion.completion_tokens > 0
    assert (limits.requests_per_minute, limits.tokens_per_minute) == (300, 40_000)
    assert limits.remaining_requests is not None and limits.requests_reset_s is not None


async def test_a_rate_limit_429_waits_for_what_the_message_asks(oai, chat) -> None:
    oai.config.key_limits = {KEY: {"rpm": 60}}  # one a second
    await chat.complete(CHAT, KEY)
    with pytest.raises(GenerationError) as caught:
        await chat.complete(CHAT, KEY)
    error = caught.value
    assert (error.reason, error.status, error.retriable, error.throttle) == (
        "RateLimited",
        429,
        True,
        True,
    )
    assert error.limits is not None and 0 < (error.limits.retry_after_s or 0) <= 1.0
    assert error.limits.requests_per_minute == 60


async def test_an_answer_names_the_organization_whose_limits_it_says(oai, chat) -> None:
    """OpenAI's limits are an organisation's, which all its keys share: an answer names it
    (``openai-organization``), a 429 too, and a 429 whose headers a proxy dropped in its body
    ("Rate limit reached for ... in organization org-... on ...")."""
    oai.config.organizations = {"org-agency": {KEY}}
    oai.config.key_limits = {"org-agency": {"rpm": 60}}  # one a second
    _, limits = await chat.complete(CHAT, KEY)
    assert limits.organization == "org-agency"
    for headers in (True, False):
        oai.config.limit_headers = headers
        with pytest.raises(GenerationError) as caught:
            await chat.complete(CHAT, KEY)
        assert caught.value.reason == "RateLimited"
        assert caught.value.limits is not None
        assert caught.value.limits.organization == "org-agency"


@pytest.mark.parametrize("key", [KEY, "abcdef0123456789abcdef"])  # (an unprefixed key too)
async def test_an_organization_that_echoes_the_key_is_none_named(oai, chat, key: str) -> None:
    """An upstream (or a proxy) that names the call's key as its organisation: the key would
    be the Kafka key of the commands forwarded to the organisation's executor, and words of
    a log line. No organisation is named; the call, and its limits, are as ever."""
    oai.config.organizations = {key: {key}}
    oai.config.key_limits = {key: {"rpm": 60}}  # one a second
    completion, limits = await chat.complete(CHAT, key)
    assert completion.text and limits.requests_per_minute == 60
    assert limits.organization is None
    for headers in (True, False):  # its 429, with its headers, and as a proxy passes it on
        oai.config.limit_headers = headers
        with pytest.raises(GenerationError) as caught:
            await chat.complete(CHAT, key)
        assert caught.value.reason == "RateLimited" and key not in str(caught.value)
        assert caught.value.limits is not None and caught.value.limits.organization is None


async def test_a_call_larger_than_a_minute_of_tokens_is_final_at_once(oai, chat) -> None:
    """OpenAI's 429 "Request too large ... The input or output tokens must be reduced": a
    rate_limit_exceeded no wait fixes, so it is not a throttle; its headers tell the limit."""
    oai.config.key_limits = {KEY: {"rpm": 600, "tpm": 1_000}}
    with pytest.raises(GenerationError) as caught:
        await chat.complete(CHAT.model_copy(update={"max_tokens": 5_000}), KEY)
    error = caught.value
    assert (error.reason, error.status, error.retriable, error.throttle, error.refuses) == (
        "RequestTooLarge",
        429,
        False,
        False,
        "request",
    )
    assert "Request too large" in str(error) and "Limit 1000, Requested 5005." in str(error)
    assert error.limits is not None and error.limits.tokens_per_minute == 1_000
    assert KEY not in str(error)


@pytest.mark.parametrize(
    ("setup", "reason", "refuses"),
    [
        ({"insufficient_quota_keys": [KEY]}, "InsufficientQuota", "key"),
        # OpenAI's other answers for an account no wait lets call: billing_not_active and
        # access_terminated are 429s without insufficient_quota in them, and were taken for
        # a rate limit, each request waited out to its QueueTimeout; billing_hard_limit_reached
        # a 400 of one request, called again for each of the key's requests
        *(
            ({"insufficient_quota_keys": [KEY], "quota_answer": code}, reason, "key")
            for code, reason in (
                ("credit_balance_exhausted", "InsufficientQuota"),
                ("organization_spend_limit_exceeded", "InsufficientQuota"),
                ("project_spend_limit_exceeded", "InsufficientQuota"),
                ("organization_usage_limit_exceeded", "InsufficientQuota"),
                ("billing_not_active", "InsufficientQuota"),
                ("billing_hard_limit_reached", "InsufficientQuota"),
                ("access_terminated", "Forbidden"),
            )
        ),
        ({"unauthorized_keys": [KEY]}, "Unauthorized", "key"),
        ({"unknown_models": ["gpt-4o-mini"]}, "ModelNotFound", "model"),
        # an OpenAI-compatible server's missing model, without OpenAI's code: it was a
        # BadRequest, so the model was called again at every request for it
        (
            {"unknown_models": ["gpt-4o-mini"], "unknown_model_answer": "ollama"},
            "ModelNotFound",
            "model",
        ),
        (
            {"unknown_models": ["gpt-4o-mini"], "unknown_model_answer": "vllm"},
            "ModelNotFound",
            "model",
        ),
        (
            {"unknown_models": ["gpt-4o-mini"], "unknown_model_answer": "litellm"},
            "ModelNotFound",
            "model",
        ),
        # LocalAI's 500 "could not load model" with no file for it: it was an outage, waited
        # out (retried, the circuit opened) until the request's maximum wait
        (
            {"unknown_models": ["gpt-4o-mini"], "unknown_model_answer": "localai"},
            "ModelNotFound",
            "model",
        ),
        # Azure OpenAI's 404 DeploymentNotFound: it was a BadRequest, a call for each request
        (
            {"unknown_models": ["gpt-4o-mini"], "unknown_model_answer": "azure"},
            "ModelNotFound",
            "model",
        ),
    ],
)
async def test_what_no_retry_fixes_is_final_and_says_what_it_covers(
    oai, chat, setup, reason, refuses
) -> None:
    for name, value in setup.items():
        setattr(oai.config, name, set(value) if isinstance(value, list) else value)
    with pytest.raises(GenerationError) as caught:
        await chat.complete(CHAT, KEY)
    error = caught.value
    assert (error.reason, error.retriable, error.refuses) == (reason, False, refuses)
    assert "TALKSTREAM_OPENAI_BASE_URL" not in str(error)  # the model, not the base URL
    assert KEY not in str(error)
    assert KEY[:8] not in str(error) and KEY[-4:] not in str(error)  # nor OpenAI's masked echo
    assert oai.calls.count == 1  # one call, no retry of its own


@pytest.mark.parametrize(
    ("setup", "reason", "why"),
    [
        ("refusal_keys", "Refused", "the model refused: I'm sorry, I can't help with that."),
        (
            "content_filter_keys",
            "ContentFiltered",
            "finish_reason content_filter (OpenAI's content filter flagged the text)",
        ),
    ],
)
async def test_a_200_no_retry_changes_is_final_and_an_answer(oai, chat, setup, reason, why) -> None:
    """The model's refusal and a text OpenAI's filter cut were asked three times, each
    billed, as if another answer might hold a text: final now, for this request only (the
    key's other prompts may be answered), and an answer (the key is up)."""
    setattr(oai.config, setup, {KEY})
    with pytest.raises(GenerationError) as caught:
        await chat.complete(CHAT, KEY)
    error = caught.value
    assert (error.reason, error.retriable, error.answered, error.refuses) == (
        reason, False, True, "request",
    )  # fmt: skip
    assert str(error) == f"OpenAI returned no text: {why}"
    assert error.limits is not None and error.limits.said_anything  # the key's limits
    assert KEY not in str(error) and oai.calls.count == 1


async def test_a_404_of_the_api_itself_names_the_base_url_to_check(oai) -> None:
    """A base URL without ``/v1`` was answered 404 (a web server's page, or OpenAI's "Invalid
    URL"), and every request failed "OpenAI answered 404: Error code: 404": nothing said to
    look at the base URL. A missing model's 404 stays about the model."""
    root = oai.url.removesuffix("/v1")
    for base, hint in (
        (root, "OpenAI's API ends in /v1, e.g. https://api.openai.com/v1"),
        (f"{root}/openai/v1", "is it OpenAI's API?"),
    ):
        error = await failure_at(base)
        assert (error.reason, error.status, error.retriable) == ("BadRequest", 404, False)
        assert str(error) == (
            f"OpenAI answered 404 (no Chat Completions at TALKSTREAM_OPENAI_BASE_URL {base}: "
            f"{hint}): a body that is not OpenAI's JSON (text/plain)"
        )
    oai.config.unknown_models = {"gpt-4o-mini"}
    for server, said in (
        ("openai", "404 model_not_found: The model `gpt-4o-mini` does not exist or you do not"),
        ("ollama", '404: model "gpt-4o-mini" not found, try pulling it first'),
        ("vllm", "404: The model `gpt-4o-mini` does not exist."),
        ("litellm", "400: {'error': '/chat/completions: Invalid model name passed in model="),
        ("localai", "500: could not load model - all backends returned error: 2 errors"),
        ("azure", "404 DeploymentNotFound: The API deployment for this resource does not exist."),
    ):
        oai.config.unknown_model_answer = server  # type: ignore[assignment]
        error = await failure_at(oai.url)
        assert (error.reason, error.refuses) == ("ModelNotFound", "model"), server
        assert str(error).startswith(f"OpenAI answered {said}")


async def test_a_base_url_with_credentials_fails_at_once_without_a_call(oai) -> None:
    """The HTTP library refuses a base URL carrying ``user:password@`` beside the key's
    header (a ValueError before any call): it was taken for an outage ("a body that is not
    JSON", retriable), so each request waited out ``MAX_WAIT_SECONDS`` and ended
    ``QueueTimeout``. It is the client's error, final; the URL is shown without them."""
    base = oai.url.replace("http://", "http://proxy-user:proxy-secret@")
    error = await failure_at(base)
    assert (error.reason, error.retriable, error.answered) == ("ClientError", False, False)
    assert "credentials encoded in URL" in str(error)
    assert f"TALKSTREAM_OPENAI_BASE_URL is {oai.url.replace('http://', 'http://***@')}" in str(
        error
    )
    assert "proxy-secret" not in str(error) and KEY not in str(error)
    assert oai.calls.count == 0


async def test_a_server_error_is_an_outage(oai, chat) -> None:
    oai.config.fail_next = [503]
    with pytest.raises(GenerationError) as caught:
        await chat.complete(CHAT, KEY)
    assert (caught.value.reason, caught.value.retriable, caught.value.throttle) == (
        "ServerError",
        True,
        False,
    )


async def test_an_answer_without_text_is_an_answer_not_an_outage(oai, chat) -> None:
    """A 200 whose body has no text (here the stand-in's injected 200, an error envelope): the
    key is up and the call may have been billed; the scheduler asks again a few times only."""
    oai.config.fail_next = [200]
    with pytest.raises(GenerationError) as caught:
        await chat.complete(CHAT, KEY)
    error = caught.value
    assert (error.reason, error.retriable, error.answered) == ("EmptyCompletion", True, True)
    await chat.complete(CHAT, KEY)  # (the next call answers)


async def test_a_campaigns_max_completion_tokens_is_the_cap_sent_alone(oai, chat) -> None:
    """Reasoning models (o1 and later) refuse ``max_tokens``: a campaign that gives
    ``max_completion_tokens`` for one gets its text, capped by it, not a 400 for the default
    ``max_tokens`` sent beside it."""
    reasoning = ChatRequest(
        model="o3-mini",
        messages=[{"role": "user", "content": "a verse about a long walk by the sea"}],
        max_tokens=3,  # the cap, which the ingress reads from max_completion_tokens
        extra={"max_completion_tokens": 3},
    )
    completion, _ = await chat.complete(reasoning, KEY)
    assert len(completion.text.split()) == 3
    sent = oai.calls.records[-1]
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (None, 3)


@pytest.mark.parametrize(
    "model",
    ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5.1", "ft:o4-mini-2025-04-16:acme::x1"],
)
async def test_a_reasoning_models_cap_is_sent_as_max_completion_tokens(oai, chat, model) -> None:
    """A campaign for a reasoning model that gives no ``max_completion_tokens`` (no cap at
    all: the default, or its ``max_tokens``) gets its text, capped by that, not OpenAI's 400
    for ``max_tokens``, which these models refuse ("Use 'max_completion_tokens' instead")."""
    reasoning = ChatRequest(
        model=model,
        messages=[{"role": "user", "content": "a verse about a long walk by the sea"}],
        max_tokens=3,
    )
    completion, _ = await chat.complete(reasoning, KEY)
    assert len(completion.text.split()) == 3
    sent = oai.calls.records[-1]
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (None, 3)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo", "gpt-oss:20b", "llama3.2"])
async def test_another_models_cap_is_sent_as_max_tokens(oai, chat, model) -> None:
    """Every other model gets ``max_tokens``: OpenAI's chat models take it, and the
    OpenAI-compatible servers (Ollama, LM Studio) know no other name for the cap."""
    await chat.complete(CHAT.model_copy(update={"model": model}), KEY)
    sent = oai.calls.records[-1]
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (20, None)


async def test_a_reasoning_model_by_another_name_is_sent_max_completion_tokens_once_it_says(
    oai, chat
) -> None:
    """A reasoning model deployed under a name of its own (Azure's deployments) is not known
    by its name: its first call sends the cap as ``max_tokens``, and OpenAI's 400 for it ("Use
    'max_completion_tokens' instead") asks for the call again (``resend``: it generated
    nothing), which sends the same cap as ``max_completion_tokens``, as does every later call
    of the model with that key. Every request for such a model failed, until its campaign
    gave ``max_completion_tokens``."""
    oai.config.reasoning_deployments = {"verse-writer"}
    deployed = CHAT.model_copy(update={"model": "verse-writer"})
    with pytest.raises(GenerationError) as caught:
        await chat.complete(deployed, KEY)
    error = caught.value
    assert (error.reason, error.status, error.retriable, error.resend) == (
        "BadRequest",
        400,
        False,
        True,
    )
    assert "max_completion_tokens" in str(error)
    for _ in range(2):  # the call again, and a later one
        completion, _ = await chat.complete(deployed, KEY)
        assert completion.text
    sent = [(c["max_tokens"], c["max_completion_tokens"], c["status"]) for c in oai.calls.records]
    assert sent == [(20, None, 400), (None, 20, 200), (None, 20, 200)]

    other_key = "sk-clients-test-0002"  # learned for the key that was told
    with pytest.raises(GenerationError) as caught:
        await chat.complete(deployed, other_key)
    assert caught.value.resend
    await chat.complete(deployed, other_key)

    given = CHAT.model_copy(
        update={"model": "verse-writer", "extra": {"max_completion_tokens": 20}}
    )
    completion, _ = await chat.complete(given, "sk-clients-test-0003")  # sent as given
    assert completion.text
    assert oai.calls.records[-1]["max_completion_tokens"] == 20


async def test_only_the_refusal_of_max_tokens_asks_for_the_call_again(oai, chat) -> None:
    """Any other 400 is the refusal it was: the request fails, nothing is learned. A message's
    name OpenAI does not take, for the deployment; a ``max_tokens`` it does not take (below 1),
    for another model; a campaign's ``max_completion_tokens`` the deployment refuses."""
    oai.config.reasoning_deployments = {"verse-writer"}
    bad_name = [{"role": "user", "content": "a verse", "name": "Ada Lovelace"}]
    refused = [
        CHAT.model_copy(update={"model": "verse-writer", "messages": bad_name}),
        CHAT.model_copy(update={"max_tokens": 0}),
        CHAT.model_copy(update={"model": "verse-writer", "extra": {"max_completion_tokens": 0}}),
    ]
    for chat_request in refused:
        with pytest.raises(GenerationError) as caught:
            await chat.complete(chat_request, KEY)
        assert (caught.value.reason, caught.value.status) == ("BadRequest", 400)
        assert not caught.value.resend, caught.value
    with pytest.raises(GenerationError) as caught:  # nothing learned: max_tokens, refused
        await chat.complete(CHAT.model_copy(update={"model": "verse-writer"}), KEY)
    assert caught.value.resend
    assert oai.calls.records[-1]["max_tokens"] == 20


async def test_a_lone_surrogate_from_openai_becomes_a_replacement_character() -> None:
    """JSON may escape half an emoji ("\\ud83d"): kept, the text could not be encoded into
    the generator's result (UTF-8), which would never be reported, nor reach Talkable."""
    half = '"cut \\ud83d there, whole \\ud83d\\ude00"'

    async def completions(request: web.Request) -> web.Response:
        if (await request.json())["model"] == "refused":
            body = '{"error": {"message": "bad \\udc00", "type": "invalid_request_error"}}'
            return web.Response(text=body, status=400, content_type="application/json")
        message = '{"role": "assistant", "content": ' + half + "}"
        body = (
            '{"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices":'
            ' [{"index": 0, "message": ' + message + ', "finish_reason": "length"}],'
            ' "usage": {"prompt_tokens": 1, "completion_tokens": 2}}'
        )
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = ChatClient(f"http://127.0.0.1:{runner.addresses[0][1]}/v1", timeout=10)
    try:
        completion, _ = await client.complete(CHAT, KEY)
        with pytest.raises(GenerationError) as refused:
            await client.complete(CHAT.model_copy(update={"model": "refused"}), KEY)
    finally:
        await client.close()
        await runner.cleanup()
    assert completion.text == "cut \ufffd there, whole \U0001f600"
    assert completion.text.encode() and str(refused.value).encode()
    assert "bad \ufffd" in str(refused.value)


def command(key_site: str = "acme", number: str = "n-1") -> PublishCompletion:
    return PublishCompletion(
        request_id="r-1",
        person=f"{key_site}:a@example.com",
        site=key_site,
        email="a@example.com",
        attempt=1,
        issued_at_ms=0,
        event_number=number,
        custom_properties={"generated_text": "hi"},
        talkable_api_key="sealed",
    )


@pytest.mark.parametrize("status", [400, 200])
async def test_another_requests_event_under_the_own_number_gets_the_text_under_the_other(
    tk, talkable, status
) -> None:
    """The same params a month later, their person forgotten by the ledger: the same id, so
    the request's own number is the earlier request's, whose event (other data) Talkable keeps.
    The text goes under the command's other number, once; asked again (its answer lost), the
    same event again. Before, the "Duplicate entity" counted as landed and the text never did.
    The same when it comes as a 200 whose envelope says it (``"ok": false``): that was a
    ``BadRequest``, and the text was not written under the other number."""
    tk.config.duplicate_status = status
    number, other = "generate_text_complete-r-1", "generate_text_complete-r-1~d-2"
    earlier = command(number=number).model_copy(
        update={"custom_properties": {"generated_text": "last month's"}}
    )
    await talkable.publish(earlier, "tk-key")
    now = command(number=number).model_copy(update={"other_event_number": other})
    landed, _ = await talkable.publish(now, "tk-key")
    assert landed == Publication(duplicate=False, event_number=other)
    again, _ = await talkable.publish(now, "tk-key")
    assert again == Publication(duplicate=False, event_number=other)
    written = {e["event_number"]: e for e in talkable_standin.events(tk)}
    assert sorted(written) == [number, other]
    assert written[other]["custom_properties"] == {"generated_text": "hi"}
    # and Talkable's first event, with its own data, is the request's own earlier attempt's
    # only when it says so the second time too: then it landed, as before
    held = now.model_copy(update={"custom_properties": {"generated_text": "other again"}})
    duplicate, _ = await talkable.publish(held, "tk-key")
    assert duplicate == Publication(duplicate=True, event_number=other)
    assert len(talkable_standin.events(tk)) == 2


async def test_talkable_answers_are_classified(tk, talkable) -> None:
    published, _ = await talkable.publish(command(), "tk-key")
    assert not published.duplicate
    again, _ = await talkable.publish(command(), "tk-key")  # identical: Talkable answers ok
    assert not again.duplicate
    own = command(number="generate_text_complete-r-1")  # the request's own number
    await talkable.publish(own, "tk-key")
    changed = own.model_copy(update={"custom_properties": {"generated_text": "other"}})
    duplicate, _ = await talkable.publish(changed, "tk-key")  # "Duplicate entity": it landed
    assert duplicate.duplicate
    # the campaign's own number, held by another request's event: this text did not land
    other = command().model_copy(update={"request_id": "r-2", "custom_properties": {"x": "y"}})
    with pytest.raises(PublishError) as taken:
        await talkable.publish(other, "tk-key")
    assert (taken.value.reason, taken.value.status, taken.value.retriable) == (
        "DuplicateEventNumber",
        400,
        False,
    )
    assert "n-1" not in str(taken.value) and "tk-key" not in str(taken.value)

    tk.config.api_keys = {"acme": "the-right-key"}
    with pytest.raises(PublishError) as refused:
        await talkable.publish(command(number="n-2"), "a-wrong-key")
    assert (refused.value.reason, refused.value.refuses, refused.value.retriable) == (
        "Unauthorized",
        "key",
        False,
    )
    assert "a-wrong-key" not in str(refused.value)

    tk.config.api_keys = None
    tk.config.fail_next = [429, 503]
    with pytest.raises(PublishError) as throttled:
        await talkable.publish(command(number="n-3"), "tk-key")
    assert throttled.value.throttle and throttled.value.limits is not None
    assert throttled.value.limits.retry_after_s == 1.0
    with pytest.raises(PublishError) as down:
        await talkable.publish(command(number="n-3"), "tk-key")
    assert (down.value.reason, down.value.retriable, down.value.throttle) == (
        "ServerError",
        True,
        False,
    )
    assert down.value.limits is not None and down.value.limits.retry_after_s == 1.0  # waited

    # a 408: Talkable gave up on receiving the request, so nothing was written; asked again
    # as after an outage, not a publication failed for good
    tk.config.fail_next = [408]
    with pytest.raises(PublishError) as timed_out:
        await talkable.publish(command(number="n-4"), "tk-key")
    assert (timed_out.value.reason, timed_out.value.status, timed_out.value.retriable) == (
        "ServerError",
        408,
        True,
    )


@pytest.fixture
async def moved() -> AsyncIterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """A Talkable that moved (``/old`` redirects to ``/new`` on another origin, as http to
    https does), and one whose 2xx carries Talkable's error envelope (``/refusing``)."""
    calls: list[tuple[str, str, str | None]] = []

    async def record(request: web.Request) -> None:
        calls.append((request.method, request.path, request.headers.get("Authorization")))

    async def old(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPMovedPermanently(new_origin + "/new/api/v2/origins/event")

    async def new(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": False, "error_message": "Unauthorized"}, status=401)

    async def refusing(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": False, "error_message": "Email isn't valid"})

    app = web.Application()
    app.router.add_route("*", "/old/api/v2/origins/event", old)
    app.router.add_route("*", "/new/api/v2/origins/event", new)
    app.router.add_post("/refusing/api/v2/origins/event", refusing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    new_origin = f"http://localhost:{port}"  # another origin than 127.0.0.1's
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_a_redirect_is_not_followed_and_says_where_talkable_moved(moved) -> None:
    """Followed, the POST would go on as a GET without its body, and without the key to
    another origin: a refused key (401), where the base URL is what is wrong."""
    base, calls = moved
    error = await refused_at(base + "/old/api/v2")
    assert calls == [("POST", "/old/api/v2/origins/event", "Bearer tk-key")]
    assert (error.reason, error.status, error.retriable, error.refuses) == (
        "BadRequest",
        301,
        False,
        "request",
    )
    assert "/new/api/v2/origins/event" in str(error) and "TALKABLE_BASE_URL" in str(error)


async def test_a_404_that_is_not_talkables_names_the_base_url_to_check(tk) -> None:
    """A base URL without ``/api/v2`` was answered a web server's 404, said as "Talkable
    answered 404: Not Found", like a site Talkable does not know. Talkable's own 404 (its
    JSON) is about the site, and says so."""
    root = tk.url.removesuffix("/api/v2")
    error = await refused_at(root)
    assert (error.reason, error.status, error.retriable) == ("BadRequest", 404, False)
    assert str(error) == (
        f"Talkable answered 404: Not Found (no Talkable API at TALKSTREAM_TALKABLE_BASE_URL "
        f"{root}: it ends in /api/v2, e.g. https://www.talkable.com/api/v2)"
    )
    tk.config.unknown_sites = ["acme"]
    error = await refused_at(tk.url)
    assert (error.reason, error.status, error.refuses) == ("SiteNotFound", 404, "site")
    assert str(error).startswith("Talkable answered 404 (it has no site `acme`, the webhook's")
    assert str(error).endswith("): No site found by `site_slug`.")


async def test_a_short_key_is_scrubbed_from_talkables_words_not_from_what_we_add(tk) -> None:
    """Scrubbed with Talkable's words, a short key cut the hint talkstream adds: a webhook
    whose api_key was "k" (as one tries make dev) failed "no Tal[redacted]able API at ...
    https://www.tal[redacted]able.com/api/v2". The key is scrubbed from what Talkable said
    only; the hint holds no key."""
    root = tk.url.removesuffix("/api/v2")
    error = await refused_at(root, api_key="k")
    assert str(error) == (
        f"Talkable answered 404: Not Found (no Talkable API at TALKSTREAM_TALKABLE_BASE_URL "
        f"{root}: it ends in /api/v2, e.g. https://www.talkable.com/api/v2)"
    )
    # what Talkable says is still scrubbed of the key, however short
    error = await refused_at(root, api_key="Found")
    assert str(error).startswith("Talkable answered 404: Not [redacted] (no Talkable API at")


async def test_a_405_of_a_web_site_names_the_talkable_base_url_to_check(edges) -> None:
    """A base URL at a web site that takes no POST there: its 405 page is not Talkable's."""
    error = await refused_at(f"{edges}/website")
    assert (error.reason, error.status, error.retriable) == ("BadRequest", 405, False)
    assert str(error) == (
        "Talkable answered 405: Method Not Allowed (no Talkable API at "
        f"TALKSTREAM_TALKABLE_BASE_URL {edges}/website: it ends in /api/v2, e.g. "
        "https://www.talkable.com/api/v2)"
    )


async def test_a_2xx_with_talkables_error_envelope_is_not_a_success(moved) -> None:
    base, calls = moved
    error = await refused_at(base + "/refusing/api/v2")
    assert len(calls) == 1
    assert (error.reason, error.status, error.retriable) == ("BadRequest", 200, False)
    assert "Email isn't valid" in str(error)


async def refused_at(base_url: str, api_key: str = "tk-key") -> PublishError:
    """What a publication to ``base_url`` fails with."""
    client = TalkableClient(base_url, timeout=10)
    try:
        with pytest.raises(PublishError) as caught:
            await client.publish(command(), api_key)
    finally:
        await client.close()
    return caught.value


async def test_talkable_unreachable_names_the_os_error_as_openais_does() -> None:
    """A Talkable nobody listens at said only ``ClientConnectorError``, while OpenAI's said
    ``ClientConnectorError (ConnectionRefusedError)``: the OS-level cause tells a refused
    port from a name that does not resolve. Names only, never the key."""
    error = await refused_at(f"http://127.0.0.1:{free_port()}/api/v2", "tk-key")
    assert (error.reason, error.retriable, error.answered) == ("Unreachable", True, False)
    assert str(error) == "Talkable unreachable: ClientConnectorError (ConnectionRefusedError)"


async def test_a_key_that_cannot_be_a_header_fails_at_once_without_a_call(tk, talkable) -> None:
    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        await talkable.publish(command(), "tk-key\r\nX-Evil: 1")
    assert (caught.value.reason, caught.value.retriable) == ("InvalidKey", False)
    assert "X-Evil" not in str(caught.value)
    assert time.monotonic() - started < 5  # classified, not left to a deadline
    assert tk.calls.count == 0


async def test_a_call_within_a_minute_of_tokens_is_admitted_at_its_pace(oai, chat) -> None:
    """A call larger than the key's second of tokens but within its minute runs, as it does on
    OpenAI (which refuses only what is more than the minute's limit): the stand-in's bucket,
    holding a second's worth (16 tokens of 1,000 a minute), once never admitted a 100-token
    call, and answered each try "try again in 5.4s" for ever. Full, it admits one; the next
    waits until the bucket is full again, and is told so truthfully."""
    oai.config.key_limits = {KEY: {"rpm": 600, "tpm": 1_000}}
    big = CHAT.model_copy(update={"max_tokens": 100})
    completion, _ = await chat.complete(big, KEY)
    assert completion.text
    with pytest.raises(GenerationError) as caught:
        await chat.complete(big, KEY)
    asked = caught.value.limits.retry_after_s if caught.value.limits else None
    assert caught.value.reason == "RateLimited" and asked is not None
    assert 6.0 < asked < 8.0  # the 108 tokens it took, at 1,000 a minute, refill the bucket


@pytest.fixture
async def edges() -> AsyncIterator[str]:
    """Answers real upstreams give that no stand-in gives: OpenAI's 200s without a text to
    publish (``/empty``, ``/refusal``) or with a ``usage`` that is not counts (``/usage``);
    Talkable behind a proxy: a 200 that is an HTML page (``/html``), an empty 200 (``/blank``),
    a 201 cut off mid-body (``/cut``), and its real 201 (``/created``)."""

    def chat_answer(content: str | None, **message: object) -> web.Response:
        choice = {"index": 0, "finish_reason": "stop"}
        choice["message"] = {"role": "assistant", "content": content, **message}
        body = {"id": "c", "object": "chat.completion", "model": "gpt-4o-mini"}
        return web.json_response({**body, "choices": [choice], "usage": {"prompt_tokens": 3}})

    async def empty(request: web.Request) -> web.Response:
        return chat_answer("")

    async def refusal(request: web.Request) -> web.Response:
        return chat_answer(None, refusal="I'm sorry, I can't help with that.")

    async def no_model(request: web.Request) -> web.Response:
        # an OpenAI-compatible server's 404 for a model it does not serve (vLLM's shape)
        body = {"object": "error", "message": "The model `gpt-4o-mini` does not exist.",
                "type": "NotFoundError", "param": None, "code": 404}  # fmt: skip
        return web.json_response(body, status=404)

    async def echo(request: web.Request) -> web.Response:
        # a proxy before an OpenAI-compatible API that names the key it refuses in the code
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = {"error": {"code": f"invalid key {key}", "message": "refused", "type": None}}
        return web.json_response(body, status=401)

    async def azure_filtered(request: web.Request) -> web.Response:
        # Azure OpenAI's refusal of a prompt its content filter flags (its content filtering
        # docs, "an input prompt ... classified at a filtered category and severity level")
        verdicts = {"hate": {"filtered": True, "severity": "high"},
                    "self_harm": {"filtered": False, "severity": "safe"},
                    "violence": {"filtered": True, "severity": "medium"}}  # fmt: skip
        error = {"message": AZURE_FILTERED, "type": None, "param": "prompt",
                 "code": "content_filter", "status": 400,
                 "innererror": {"code": "ResponsibleAIPolicyViolation",
                                "content_filter_result": verdicts}}  # fmt: skip
        return web.json_response({"error": error}, status=400)

    async def usage(request: web.Request) -> web.Response:
        answer = chat_answer("A verse")
        body = json.loads(answer.text or "{}")
        body["usage"] = {"prompt_tokens": "n/a", "completion_tokens": -1}
        return web.json_response(body)

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Welcome</body></html>", content_type="text/html")

    async def blank(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def cut(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(status=201, headers={"Content-Length": "500"})
        answer.content_type = "application/json"
        await answer.prepare(request)
        await answer.write(b'{"ok": true, "res')
        assert request.transport is not None
        request.transport.close()
        return answer

    async def created(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "result": {"origin": {"id": 1}}}, status=201)

    app = web.Application()
    for name, handler in (("empty", empty), ("refusal", refusal), ("usage", usage), ("echo", echo)):
        app.router.add_post(f"/{name}/v1/chat/completions", handler)
    app.router.add_post("/portal/v1/chat/completions", html)  # a captive portal's 200
    app.router.add_post("/compatible/v1/chat/completions", no_model)
    app.router.add_post("/azure-filtered/v1/chat/completions", azure_filtered)
    app.router.add_get("/website/v1/chat/completions", html)  # a POST is answered 405
    app.router.add_get("/website/origins/event", html)  # (Talkable's base URL at a web site)
    for name, handler in (("html", html), ("blank", blank), ("cut", cut), ("created", created)):
        app.router.add_post(f"/{name}/api/v2/origins/event", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


AZURE_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry."
)


async def test_azure_openais_content_filter_refusing_the_prompt_is_content_filtered(edges) -> None:
    """Azure OpenAI answers a prompt its content filter flags with a 400 ``content_filter``,
    not a 200 ``finish_reason: content_filter``: it was a ``BadRequest`` ("fix the params"),
    while the same filter cutting the text was ``ContentFiltered``. It is the filter's
    refusal of the prompt, final for this request, and says what the filter flagged."""
    error = await answer_of(f"{edges}/azure-filtered/v1")
    assert isinstance(error, GenerationError)
    assert (error.reason, error.status, error.retriable, error.refuses) == (
        "ContentFiltered", 400, False, "request",
    )  # fmt: skip
    assert str(error) == (
        "OpenAI answered 400 content_filter (Azure OpenAI's content filter refused the prompt:"
        " hate high, violence medium; no text was generated, and the same prompt is refused"
        f" again: change it, or the deployment's content filter): {AZURE_FILTERED}"
    )
    assert KEY not in str(error)


async def answer_of(base_url: str) -> Any:
    """What the OpenAI adapter makes of the answer at ``base_url``: a completion or the error."""
    client = ChatClient(base_url, timeout=10)
    try:
        return (await client.complete(CHAT, KEY))[0]
    except GenerationError as error:
        return error
    finally:
        await client.close()


async def test_a_200_without_a_text_to_publish_says_what_it_held(edges) -> None:
    """An empty content was a text: published, it replaced the person's text in Talkable with
    nothing; a refusal said only "no text"."""
    empty, refused = await answer_of(f"{edges}/empty/v1"), await answer_of(f"{edges}/refusal/v1")
    assert isinstance(empty, GenerationError) and isinstance(refused, GenerationError)
    assert (empty.reason, empty.retriable, empty.answered) == ("EmptyCompletion", True, True)
    # asked again, the model refuses again: no retry (each billed) changes it
    assert (refused.reason, refused.retriable, refused.answered) == ("Refused", False, True)
    assert str(empty) == "OpenAI returned no text: the content is empty"
    assert str(refused) == (
        "OpenAI returned no text: the model refused: I'm sorry, I can't help with that."
    )


async def test_an_answer_that_is_not_json_names_the_base_url_to_check(edges) -> None:
    """A 200 HTML page (a portal, a web site at the base URL) said only "OpenAI answered with
    a body that is not JSON", and a web site's 405 to the POST "OpenAI answered 405: Error code:
    405": neither said where to look. (The 200 is still asked again: a proxy's page may be
    passing.)"""
    portal = await answer_of(f"{edges}/portal/v1")
    assert isinstance(portal, GenerationError)
    assert (portal.reason, portal.retriable, portal.answered) == ("BadAnswer", True, True)
    assert str(portal) == (
        "OpenAI answered 200 with a body that is not JSON (text/html): is "
        f"TALKSTREAM_OPENAI_BASE_URL {edges}/portal/v1 OpenAI's API?"
    )
    website = await answer_of(f"{edges}/website/v1")
    assert isinstance(website, GenerationError)
    assert (website.reason, website.status, website.retriable) == ("BadRequest", 405, False)
    assert str(website).startswith(
        f"OpenAI answered 405 (no Chat Completions at TALKSTREAM_OPENAI_BASE_URL {edges}/website"
        "/v1: is it OpenAI's API?): a body that is not OpenAI's JSON (text/plain)"
    )


async def test_a_404_about_the_model_does_not_point_at_the_base_url(edges) -> None:
    """A compatible API's 404 for a model it does not serve has no OpenAI code: it says
    what it says, without the base URL hint a 404 of the path gets, and the model is refused
    a while, as OpenAI's ``model_not_found`` refuses it (it was a ``BadRequest``: called again
    at every request for it)."""
    error = await answer_of(f"{edges}/compatible/v1")
    assert isinstance(error, GenerationError)
    assert (error.reason, error.status, error.refuses) == ("ModelNotFound", 404, "model")
    assert str(error) == "OpenAI answered 404: The model `gpt-4o-mini` does not exist."


async def test_an_error_code_is_scrubbed_of_the_key_as_its_message_is(edges) -> None:
    """The code of an error answer is shown beside its message ("OpenAI answered 401
    invalid_api_key: ..."), and was shown as the upstream sent it: a key in it went on into
    the lifecycle topic, the projection, the dead letter and the log."""
    error = await answer_of(f"{edges}/echo/v1")
    assert isinstance(error, GenerationError)
    assert (error.reason, error.status) == ("Unauthorized", 401)
    assert str(error) == "OpenAI answered 401 invalid key [redacted]: refused"


async def test_a_text_with_a_usage_that_is_not_counts_is_still_the_text(edges) -> None:
    completion = await answer_of(f"{edges}/usage/v1")
    assert isinstance(completion, Completion), completion
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == (
        "A verse",
        0,
        0,
    )


async def test_a_2xx_that_is_not_talkables_json_is_not_a_publication(edges) -> None:
    """A proxy's HTML page or an empty 200 said nothing of the event, and was taken for
    a success (``published``, with nothing in Talkable); a 201 cut off mid-body is an outage,
    not an answer. Each is asked again (the publication is idempotent)."""
    for path, content_type in (("html", "text/html"), ("blank", "application/octet-stream")):
        error = await refused_at(f"{edges}/{path}/api/v2")
        assert (error.reason, error.status, error.retriable, error.answered) == (
            "BadAnswer",
            200,
            True,
            True,
        )
        assert f"not its API's JSON ({content_type})" in str(error)
        assert "TALKSTREAM_TALKABLE_BASE_URL" in str(error)
    cut = await refused_at(f"{edges}/cut/api/v2")
    assert (cut.reason, cut.retriable, cut.answered) == ("Unreachable", True, False)

    client = TalkableClient(f"{edges}/created/api/v2", timeout=10)
    try:
        published, _ = await client.publish(command(), "tk-key")
    finally:
        await client.close()
    assert not published.duplicate


async def test_a_call_that_got_no_answer_says_whether_it_timed_out_or_never_connected() -> None:
    """The SDK's aiohttp transport raises every connection error as a timeout: a port nobody
    listens on, a connection closed without an answer read "OpenAI timed out" (``Timeout``:
    counted as a slow generation's, three of which end a request as too slow, "raise
    OPENAI_TIMEOUT_SECONDS"). They are ``Unreachable``, named; a call that outlasts the
    client's timeout is still ``Timeout``. Both wait (retriable)."""
    released = asyncio.Event()

    async def dropped(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # no status line: the connection ends
        return web.Response()

    async def slow(request: web.Request) -> web.Response:
        await released.wait()
        return web.json_response({})

    routes = {"/dropped/v1/chat/completions": dropped, "/slow/v1/chat/completions": slow}
    async with serving(routes) as base:
        closed = await failure_at(f"http://127.0.0.1:{free_port()}/v1")
        cut = await failure_at(f"{base}/dropped/v1")
        client = ChatClient(f"{base}/slow/v1", timeout=0.2)
        try:
            with pytest.raises(GenerationError) as caught:
                await client.complete(CHAT, KEY)
        finally:
            released.set()
            await client.close()
    assert (closed.reason, closed.retriable) == ("Unreachable", True)
    assert str(closed) == "OpenAI unreachable: ClientConnectorError (ConnectionRefusedError)"
    assert (cut.reason, cut.retriable) == ("Unreachable", True)
    assert str(cut) == "OpenAI unreachable: ServerDisconnectedError"
    timed_out = caught.value
    assert (timed_out.reason, timed_out.retriable, str(timed_out)) == (
        "Timeout",
        True,
        "OpenAI timed out",
    )


async def test_a_base_url_that_redirects_is_said_not_blamed_on_the_key() -> None:
    """The SDK's client follows redirects: a 301 of the POST as a GET without the body
    (answered 405: "is it OpenAI's API?"), a 307 to another origin without the key (OpenAI's
    401 "You didn't provide an API key": ``Unauthorized``, the customer's key refused a while
    for a base URL that moved). Each now ends the request saying where the base URL points;
    a redirect the call survives (a 308 on the same origin) still gets its completion."""
    completion = {"index": 0, "finish_reason": "stop"}
    completion["message"] = {"role": "assistant", "content": "A verse"}
    ports: list[int] = []  # the server's two origins: the base URL's, and another

    async def chat(request: web.Request) -> web.Response:
        if "Authorization" not in request.headers:
            message = "You didn't provide an API key. You need to provide your API key in an"
            error = {"message": message, "type": "invalid_request_error", "code": None}
            return web.json_response({"error": error}, status=401)
        return web.json_response({"model": "gpt-4o-mini", "choices": [completion]})

    def moving(cls: type[web.HTTPRedirection], elsewhere: bool) -> Any:
        async def handler(request: web.Request) -> web.Response:
            raise cls(location=f"http://127.0.0.1:{ports[elsewhere]}/v1/chat/completions")

        return handler

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/elsewhere/v1/chat/completions", moving(web.HTTPTemporaryRedirect, True))
    app.router.add_post("/moved/v1/chat/completions", moving(web.HTTPMovedPermanently, False))
    app.router.add_post("/kept/v1/chat/completions", moving(web.HTTPPermanentRedirect, False))
    runner = web.AppRunner(app)
    await runner.setup()
    for _ in range(2):
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    ports += [address[1] for address in runner.addresses]
    base = f"http://127.0.0.1:{ports[0]}"
    try:
        keyless = await failure_at(f"{base}/elsewhere/v1")
        as_get = await failure_at(f"{base}/moved/v1")
        kept = await answer_of(f"{base}/kept/v1")
    finally:
        await runner.cleanup()
    assert (keyless.reason, keyless.status, keyless.refuses, keyless.retriable) == (
        "BadRequest",
        401,
        "request",
        False,
    )
    assert str(keyless).startswith(
        f"OpenAI answered 401 (redirected to http://127.0.0.1:{ports[1]}/v1/chat/completions:"
        f" set TALKSTREAM_OPENAI_BASE_URL ({base}/elsewhere/v1) to where it points"
    )
    assert (as_get.reason, as_get.status, as_get.refuses) == ("BadRequest", 405, "request")
    assert f"OpenAI answered 405 (redirected to {base}/v1/chat/completions: set" in str(as_get)
    assert isinstance(kept, Completion) and kept.text == "A verse"


async def test_an_error_answer_without_a_body_says_its_status_words() -> None:
    """A load balancer's 503 or a proxy's 429 without a body said "a body that is not
    OpenAI's JSON (no content type)": there was none. It says so, with the status's
    words; how it is handled does not change (both wait, the 429's retry-after read)."""

    async def empty(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        return web.Response(status=status, headers={"retry-after": "3"} if status == 429 else {})

    async with serving({"/{status}/v1/chat/completions": empty}) as base:
        down = await failure_at(f"{base}/503/v1")
        throttled = await failure_at(f"{base}/429/v1")
    assert (down.reason, down.retriable, str(down)) == (
        "ServerError",
        True,
        "OpenAI answered 503: no body (Service Unavailable)",
    )
    assert (throttled.reason, throttled.throttle, str(throttled)) == (
        "RateLimited",
        True,
        "OpenAI answered 429: no body (Too Many Requests)",
    )
    assert throttled.limits is not None and throttled.limits.retry_after_s == 3


async def test_a_refusal_that_is_a_page_says_what_may_stand_between() -> None:
    """A firewall's or a proxy's 403 page (a WAF's "Attention Required") refused the key as
    OpenAI's own 403 does, its message only "a body that is not OpenAI's JSON (text/html)":
    the letter sent the customer to fix a key OpenAI never saw. It says what may stand
    between; OpenAI's JSON refusal reads as it did."""

    async def page(request: web.Request) -> web.Response:
        text = "<html><title>Attention Required! | Cloudflare</title></html>"
        return web.Response(status=403, text=text, content_type="text/html")

    async def openai_403(request: web.Request) -> web.Response:
        error = {"code": "unsupported_country_region_territory", "type": "request_forbidden"}
        error["message"] = "Country, region, or territory not supported"
        return web.json_response({"error": error}, status=403)

    routes = {"/page/v1/chat/completions": page, "/openai/v1/chat/completions": openai_403}
    async with serving(routes) as base:
        firewall = await failure_at(f"{base}/page/v1")
        region = await failure_at(f"{base}/openai/v1")
    assert (firewall.reason, firewall.refuses) == ("Forbidden", "key")
    assert str(firewall) == (
        "OpenAI answered 403 (a page, not OpenAI's JSON: a proxy or a firewall before OpenAI"
        " refuses the call, or OpenAI the key; check what stands between, then the key): a body"
        " that is not OpenAI's JSON (text/html)"
    )
    assert (region.reason, region.refuses, str(region)) == (
        "Forbidden",
        "key",
        "OpenAI answered 403 unsupported_country_region_territory: Country, region, or"
        " territory not supported",
    )

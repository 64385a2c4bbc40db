"""The OpenAI and Talkable stand-ins, on real loopback ports, driven by real clients."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from streams.dev import openai_standin, talkable_standin
from streams.dev.openai_standin import OpenAIStandinConfig
from streams.dev.standin_common import StandinHandle
from streams.dev.talkable_standin import TalkableStandinConfig
from streams.upstream.limits import duration_seconds

KEY = "sk-test-alpha-1234"
MESSAGES = [
    {"role": "system", "content": "You write short referral greetings."},
    {"role": "user", "content": "Write a greeting for Alice who loves hiking"},
]


@pytest.fixture
async def oai() -> AsyncIterator[StandinHandle[OpenAIStandinConfig]]:
    handle = await openai_standin.serve(OpenAIStandinConfig())
    yield handle
    await handle.close()


@pytest.fixture
async def client(oai: StandinHandle[OpenAIStandinConfig]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=oai.url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def complete(sdk: openai.AsyncOpenAI, **kwargs: object) -> str:
    response = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)  # type: ignore[call-overload]
    return str(response.choices[0].message.content)


# --- OpenAI ---------------------------------------------------------------------------------


async def test_sdk_gets_deterministic_text_and_usage(oai, client) -> None:
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    second = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    text = first.choices[0].message.content
    assert text is not None
    assert text.startswith("Generated for: Write a greeting for Alice who loves hiking [")
    assert second.choices[0].message.content == text
    assert first.id.startswith("chatcmpl-") and first.model == "gpt-4o-mini"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    # about a token for every 4 characters (it counted words: 11 and 13)
    assert (len(text), first.usage.completion_tokens) == (69, 18)
    assert first.usage.prompt_tokens == 20  # of the messages' 79 characters
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    other = [{"role": "user", "content": "Write a greeting for Bob"}]
    different = await client.chat.completions.create(model="gpt-4o-mini", messages=other)
    assert different.choices[0].message.content != text


@pytest.mark.parametrize(
    ("content", "prompt_tokens"),
    [("x" * 6000, 1500), ("word " * 1200, 1500), ("ab", 1), ("", 1)],
)
async def test_usage_counts_about_a_token_for_every_four_characters(
    client, content: str, prompt_tokens: int
) -> None:
    """A 6,000-character prompt was 2 prompt tokens (its whitespace-split words): what the
    worker's metrics, the projection, `stats` and the console's token columns add up was a
    fraction of what OpenAI would have billed for it. At least 1, as OpenAI's."""
    response = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
    )
    assert response.usage is not None
    assert response.usage.prompt_tokens == prompt_tokens
    text = response.choices[0].message.content
    assert response.usage.completion_tokens == max(len(text.split()), -(-len(text) // 4))


async def test_max_tokens_cuts_text_and_reports_length(client) -> None:
    response = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=3
    )
    assert response.choices[0].message.content == "Generated for: Write"
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 3


@pytest.mark.parametrize("model", ["o1", "o3-mini", "gpt-5", "ft:o4-mini:acme::x1", "a-deployment"])
async def test_a_reasoning_model_refuses_max_tokens_as_openai_does(oai, client, model) -> None:
    oai.config.reasoning_deployments = {"a-deployment"}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "max_tokens")
    assert "Use 'max_completion_tokens' instead" in caught.value.message

    response = await client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=3
    )
    assert response.choices[0].message.content == "Generated for: Write"


async def test_a_messages_name_is_taken_as_openai_takes_it(client) -> None:
    """OpenAI's optional ``name`` of a message's participant: letters, digits, ``_``, ``-``;
    part of the prompt (another name, another text)."""
    named = [MESSAGES[0], {**MESSAGES[1], "name": "Alice_Hiker-1"}]
    response = await client.chat.completions.create(model="gpt-4o-mini", messages=named)  # type: ignore[arg-type]
    text = response.choices[0].message.content
    assert text is not None and text.startswith("Generated for: Write a greeting for Alice")
    assert text != await complete(client)

    for name, code in [
        ("Alice Hiker", "invalid_value"),
        ("x" * 65, "invalid_value"),
        (7, "invalid_type"),
    ]:
        bad = [MESSAGES[0], {**MESSAGES[1], "name": name}]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=bad)  # type: ignore[arg-type]
        assert (caught.value.code, caught.value.param) == (code, "messages[1].name")


async def test_a_bad_role_is_refused_naming_the_field_and_what_it_takes_never_the_value(
    client,
) -> None:
    """The 400 for a message's role echoed it (``Invalid value: 'sk-live-...'``): a key pasted
    into the wrong field ended in the client's log. It names the field, the roles it takes and
    what kind of value came, as the ``/_control`` 400 does; not the value."""
    for role, kind in [("sk-live-0123456789abcdef", "a string"), (7, "a number")]:
        bad = [MESSAGES[0], {**MESSAGES[1], "role": role}]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=bad)  # type: ignore[arg-type]
        error = caught.value
        assert (error.code, error.param) == ("invalid_value", "messages[1].role")
        said = error.message
        assert "'messages[1].role'" in said and "expected one of system, developer, user" in said
        assert f"got {kind}" in said
        assert "0123456789abcdef" not in said and "0123456789abcdef" not in str(error.body)


async def test_unauthorized_key_raises_authentication_error(oai, client) -> None:
    oai.config.unauthorized_keys.add(KEY)
    with pytest.raises(openai.AuthenticationError) as caught:
        await complete(client)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


async def test_missing_key_is_401_with_openai_error_envelope(oai, http) -> None:
    async with http.post(f"{oai.url}/chat/completions", json={"model": "m"}) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


async def test_invalid_body_raises_bad_request(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert caught.value.param == "messages"


async def test_every_nth_call_is_rate_limited_with_retry_after(oai, client) -> None:
    oai.config.rate_limit_every = 2
    oai.config.retry_after = "7"
    assert await complete(client)
    with pytest.raises(openai.RateLimitError) as caught:
        await complete(client)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert await complete(client)


async def test_an_injected_429_says_the_keys_own_limits(oai, http) -> None:
    """``rate_limit_every``'s and ``rate_limit_fraction``'s 429s said a limit of 10,000
    requests a minute whatever the key's: a pacer takes the limit an answer says, so a key of
    60 a minute, 30% of its calls answered so, was sent 203 calls for 30 texts, 161 of them
    refused by its own limit. They say the organisation's limits, as every answer does, and
    that nothing is left."""
    oai.config.key_limits = {KEY: {"rpm": 600, "tpm": 60000}}  # 10 calls a second: room
    oai.config.rate_limit_every = 2

    async def call() -> tuple[int, dict[str, str]]:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(f"{oai.url}/chat/completions", json=body, headers=headers) as resp:
            await resp.read()
            return resp.status, {name.lower(): value for name, value in resp.headers.items()}

    (ok, answered), (refused, injected) = await call(), await call()
    assert (ok, refused) == (200, 429)
    limits = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "openai-organization")
    assert [injected[name] for name in limits] == [answered[name] for name in limits]
    assert injected["x-ratelimit-limit-requests"] == "600"
    assert injected["x-ratelimit-remaining-requests"] == "0"
    assert injected["retry-after"] == oai.config.retry_after


async def outcomes_of(client: openai.AsyncOpenAI, calls: int) -> list[str]:
    """What each of ``calls`` calls in a row was answered: ok, 429 or 500."""
    outcomes = []
    for _ in range(calls):
        try:
            await complete(client)
            outcomes.append("ok")
        except openai.RateLimitError:
            outcomes.append("429")
        except openai.InternalServerError:
            outcomes.append("500")
    return outcomes


async def test_rate_limit_fraction_is_deterministic(oai, client) -> None:
    oai.config.rate_limit_fraction = 0.5
    assert await outcomes_of(client, 6) == ["ok", "429"] * 3


async def test_fail_next_queue_then_recovers(oai, client) -> None:
    oai.config.fail_next = [500, 503]
    with pytest.raises(openai.InternalServerError):
        await complete(client)
    with pytest.raises(openai.InternalServerError) as caught:
        await complete(client)
    assert caught.value.status_code == 503
    assert await complete(client)


async def test_fail_500_every(oai, client) -> None:
    oai.config.fail_500_every = 3
    assert await complete(client)
    assert await complete(client)
    with pytest.raises(openai.InternalServerError):
        await complete(client)


async def test_each_periodic_fault_counts_the_calls_that_reach_it(oai, client) -> None:
    # the 429s answer every even call; the 500s count the calls the 429s left: counted over
    # every call, fail_500_every 2 (even calls) fell on 429s only, and no 500 ever came
    oai.config.rate_limit_fraction = 0.5
    oai.config.fail_500_every = 2
    assert await outcomes_of(client, 8) == ["ok", "429", "500", "429"] * 2
    assert oai.calls.stats()["by_fault"] == {"rate_limit": 4, "fail_500": 2}


async def test_hang_makes_client_time_out_and_close_is_prompt(oai) -> None:
    oai.config.hang_every = 1
    async with openai.AsyncOpenAI(base_url=oai.url, api_key=KEY, max_retries=0, timeout=0.3) as sdk:
        with pytest.raises(openai.APITimeoutError):
            await complete(sdk)
    started = time.monotonic()
    await oai.close()
    assert time.monotonic() - started < 2.0


async def test_calls_recorded_with_key_tail_only(oai, client, http) -> None:
    oai.config.unauthorized_keys.add("sk-revoked-9999")
    oai.config.refusal_keys.add("sk-refused-8888")
    oai.config.content_filter_keys.add("sk-filtered-7777")
    await complete(client, user="ada-7")  # the caller's end-user id: a test's tag of its call
    async with http.get(f"{oai.root_url}/_calls") as resp:
        raw = await resp.text()
    async with http.get(f"{oai.root_url}/_control") as resp:
        raw_config = await resp.text()
    assert KEY not in raw and "sk-revoked-9999" not in raw_config
    assert "sk-refused-8888" not in raw_config and "sk-filtered-7777" not in raw_config
    (call,) = oai.calls.records
    assert call["key_tail"] == "1234" and call["status"] == 200
    assert (call["method"], call["path"], call["model"], call["user"]) == (
        "POST",
        "/v1/chat/completions",
        "gpt-4o-mini",
        "ada-7",
    )


async def test_keys_of_one_organization_share_its_limits_and_say_its_id(oai, http) -> None:
    """OpenAI limits an organisation, not a key: two keys listed under one share its buckets,
    every answer names it (``openai-organization``) and says its buckets' headers, and its
    429s name it; a key not listed is an organisation of its own (an id that is not the key)."""
    first, second, alone = "sk-agency-site-a-0001", "sk-agency-site-b-0002", "sk-alone-site-0003"
    control = {
        "organizations": {"org-agency": [first, second]},
        "key_limits": {"org-agency": {"rpm": 120}, alone: {"rpm": 120}},  # 2 a second each
    }
    async with http.post(f"{oai.root_url}/_control", json=control) as resp:
        shown = await resp.text()
    assert resp.status == 200
    assert first not in shown and second not in shown and "org-agency" in shown

    async def call(key: str) -> tuple[int, dict[str, str], str]:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
        headers = {"Authorization": f"Bearer {key}"}
        async with http.post(f"{oai.url}/chat/completions", json=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.text()

    # the organisation's bucket holds 2 calls: one of each key, then the next is refused
    answers = [await call(first), await call(second), await call(first), await call(second)]
    assert [status for status, _, _ in answers] == [200, 200, 429, 429]
    assert {headers["openai-organization"] for _, headers, _ in answers} == {"org-agency"}
    assert answers[0][1]["x-ratelimit-limit-requests"] == "120"
    assert "in organization org-agency on requests per min (RPM)" in answers[2][2]
    # a key of its own: its own bucket, its own id, which is not the key
    status, headers, _ = await call(alone)
    own = headers["openai-organization"]
    assert status == 200 and own.startswith("org-") and own != "org-agency"
    assert alone not in own and alone[-4:] not in own
    assert (await call(alone))[1]["openai-organization"] == own


async def test_control_endpoint_reconfigures_and_resets(oai, client, http) -> None:
    control = {"fail_next": [429], "retry_after": "3", "latency_seconds": 0}
    async with http.post(f"{oai.root_url}/_control", json=control) as resp:
        assert resp.status == 200
        assert (await resp.json())["fail_next"] == [429]
    with pytest.raises(openai.RateLimitError) as caught:
        await complete(client)
    assert caught.value.response.headers["retry-after"] == "3"
    assert await complete(client)
    async with http.get(f"{oai.root_url}/_stats") as resp:
        stats = await resp.json()
    assert stats["calls"] == 2 and stats["by_status"] == {"429": 1, "200": 1}
    async with http.post(f"{oai.root_url}/_control", json={"no_such": 1}) as resp:
        assert resp.status == 400
    async with http.post(f"{oai.root_url}/_control", json={"hang_every": "x"}) as resp:
        assert resp.status == 400
    # a server it does not imitate is refused, not taken for OpenAI's answer
    answer = {"unknown_model_answer": "tgi"}
    async with http.post(f"{oai.root_url}/_control", json=answer) as resp:
        assert resp.status == 400
        said = "expected one of ['openai', 'ollama', 'vllm', 'litellm', 'localai', 'azure']"
        assert said in await resp.text()
    async with http.post(f"{oai.root_url}/_control", json={"unknown_model_answer": "vllm"}) as resp:
        assert (resp.status, (await resp.json())["unknown_model_answer"]) == (200, "vllm")
    async with http.delete(f"{oai.root_url}/_calls") as resp:
        assert resp.status == 200
    async with http.get(f"{oai.root_url}/_calls") as resp:
        assert await resp.json() == []


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.02, "20ms"),
        (1.234, "1.234s"),
        (360, "6m0s"),
        # it wrote "1000ms", "1m60s" and "61m3.5s", never OpenAI's (Go's) way
        (0.9996, "1s"),
        (119.6, "1m59.6s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_the_stand_in_writes_a_wait_as_openai_does(seconds: float, said: str) -> None:
    """Resets and "try again in" as OpenAI writes them: Go's durations, each unit below the
    largest under its own bound."""
    assert openai_standin.duration(seconds) == said
    assert duration_seconds(said) == pytest.approx(seconds, abs=0.001)


# --- Talkable -------------------------------------------------------------------------------

SITE = "my-store"
TKEY = "talkable-key-5678"


@pytest.fixture
async def tk() -> AsyncIterator[StandinHandle[TalkableStandinConfig]]:
    handle = await talkable_standin.serve(TalkableStandinConfig(api_keys={SITE: TKEY}))
    yield handle
    await handle.close()


def event(number: str = "req-1", text: str = "Hello Alice") -> dict[str, object]:
    return {
        "site_slug": SITE,
        "data": {
            "email": "alice@example.com",
            "event_category": "generate_text_complete",
            "event_number": number,
            "subtotal": 0,
            "custom_properties": {"generated_text": text, "__current_usage_amount": "1"},
        },
    }


async def post_event(
    http: aiohttp.ClientSession, tk: StandinHandle[TalkableStandinConfig], body: object, key=TKEY
) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.post(f"{tk.url}/origins/event", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_event_accepted_and_properties_attach_to_person(tk, http) -> None:
    status, body = await post_event(http, tk, event())
    assert status == 201 and body["ok"] is True
    origin = body["result"]["origin"]  # type: ignore[index]
    assert origin["type"] == "Event" and origin["event_number"] == "req-1"
    assert origin["email"] == "alice@example.com"

    async with http.get(f"{tk.root_url}/_events") as resp:
        (accepted,) = await resp.json()
    assert accepted["custom_properties"]["generated_text"] == "Hello Alice"
    assert accepted["event_category"] == "generate_text_complete"

    url = f"{tk.url}/people/alice@example.com"
    headers = {"Authorization": f"Bearer {TKEY}"}
    async with http.get(url, params={"site_slug": SITE}, headers=headers) as resp:
        person = (await resp.json())["result"]["person"]
    assert person["custom_properties"] == {
        "generated_text": "Hello Alice",
        "__current_usage_amount": "1",
    }


async def test_repeated_identical_event_is_idempotent(tk, http) -> None:
    _, first = await post_event(http, tk, event())
    status, again = await post_event(http, tk, event())
    assert status == 200 and again == first
    assert len(talkable_standin.events(tk)) == 1


async def test_same_event_number_different_data_is_duplicate_entity(tk, http) -> None:
    await post_event(http, tk, event(text="Hello Alice"))
    status, body = await post_event(http, tk, event(text="Hi again"))
    assert status == 400 and body["ok"] is False
    assert str(body["error_message"]).startswith("Duplicate entity")
    assert [e["custom_properties"]["generated_text"] for e in talkable_standin.events(tk)] == [
        "Hello Alice"
    ]


async def test_a_stand_in_left_running_keeps_only_its_newest_events(
    http, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(talkable_standin, "KEPT_EVENTS", 3)
    tk = await talkable_standin.serve(TalkableStandinConfig(api_keys={SITE: TKEY}))
    try:
        ids = [
            (await post_event(http, tk, event(number=f"req-{n}")))[1]["result"]["origin"]["id"]  # type: ignore[index]
            for n in range(5)
        ]
        status, again = await post_event(http, tk, event(number="req-4"))

        assert ids == [1, 2, 3, 4, 5]  # each origin its own id, though older ones are gone
        assert status == 200 and again["result"]["origin"]["id"] == 5  # type: ignore[index]
        kept = [e["event_number"] for e in talkable_standin.events(tk)]
        assert kept == ["req-2", "req-3", "req-4"]
        assert len(tk.app[talkable_standin.STATE].origins) == 3
        async with http.get(f"{tk.root_url}/_events") as resp:
            assert [e["event_number"] for e in await resp.json()] == kept
    finally:
        await tk.close()


@pytest.mark.parametrize("key", ["wrong-key-0000", None])
async def test_bad_or_missing_bearer_is_401(tk, http, key) -> None:
    status, body = await post_event(http, tk, event(), key=key)
    assert status == 401 and body["ok"] is False and body["error_message"]
    assert talkable_standin.events(tk) == []
    assert tk.calls.records[0]["key_tail"] == ("0000" if key else None)


async def test_any_key_accepted_when_no_keys_configured(tk, http) -> None:
    tk.config.api_keys = None
    status, _ = await post_event(http, tk, event(), key="whatever-key")
    assert status == 201


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["data"].pop("event_category"), "`event_category` is required"),
        (lambda b: b["data"].update(email="not-an-email"), "Email isn't valid"),
        (lambda b: b.update(type="Purchase"), '`type` must be within ["Event"]'),
        (lambda b: b.pop("data"), "`data` is required"),
    ],
)
async def test_invalid_event_is_400_with_error_message(tk, http, mutate, message) -> None:
    body = event()
    mutate(body)
    status, answer = await post_event(http, tk, body)
    assert (status, answer) == (400, {"ok": False, "error_message": message})


async def test_down_answers_503_until_turned_off_via_control(tk, http) -> None:
    async with http.post(f"{tk.root_url}/_control", json={"down": True}) as resp:
        assert resp.status == 200
    status, body = await post_event(http, tk, event())
    assert status == 503 and body["ok"] is False
    async with http.post(f"{tk.root_url}/_control", json={"down": False}) as resp:
        assert resp.status == 200
    status, _ = await post_event(http, tk, event())
    assert status == 201
    async with http.get(f"{tk.root_url}/_stats") as resp:
        assert (await resp.json())["by_status"] == {"503": 1, "201": 1}


async def test_fail_next_429_carries_retry_after(tk, http) -> None:
    tk.config.fail_next = [429]
    tk.config.retry_after = "2"
    headers = {"Authorization": f"Bearer {TKEY}"}
    async with http.post(f"{tk.url}/origins/event", json=event(), headers=headers) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "2"
    status, _ = await post_event(http, tk, event())
    assert status == 201


async def test_put_person_merges_custom_properties(tk, http) -> None:
    await post_event(http, tk, event())
    headers = {"Authorization": f"Bearer {TKEY}"}
    body = {"site_slug": SITE, "data": {"custom_properties": {"__start_time": "1700000000"}}}
    async with http.put(f"{tk.url}/people/alice@example.com", json=body, headers=headers) as r:
        assert r.status == 200
        props = (await r.json())["result"]["person"]["custom_properties"]
    assert props["__start_time"] == "1700000000" and props["generated_text"] == "Hello Alice"
    bad = {"site_slug": SITE, "data": {"foo": 1}}
    async with http.put(f"{tk.url}/people/bob@example.com", json=bad, headers=headers) as r:
        assert (await r.json())["error_message"] == "found unpermitted parameter: :foo"
    params = {"site_slug": SITE}
    async with http.get(f"{tk.url}/people/bob@example.com", params=params, headers=headers) as r:
        assert r.status == 400


async def test_calls_record_event_fields_and_key_tail_only(tk, http) -> None:
    await post_event(http, tk, event())
    async with http.get(f"{tk.root_url}/_calls") as resp:
        raw = await resp.text()
        (call,) = await resp.json()
    async with http.get(f"{tk.root_url}/_control") as resp:
        raw_config = await resp.text()
    assert TKEY not in raw and TKEY not in raw_config
    assert call["key_tail"] == "5678" and call["status"] == 201
    assert (call["site_slug"], call["email"], call["event_number"]) == (
        SITE,
        "alice@example.com",
        "req-1",
    )
    assert call["custom_properties"]["generated_text"] == "Hello Alice"
    async with http.delete(f"{tk.root_url}/_calls") as resp:
        assert resp.status == 200
    assert tk.calls.records == type(tk.calls.records)() and tk.calls.count == 0


@pytest.mark.parametrize(
    ("which", "field", "value", "said"),
    [
        ("openai", "latency_seconds", -1, "expected a number, 0 or more, got a negative number"),
        ("openai", "latency_seconds", float("nan"), "0 or more, got a number that is not finite"),
        ("openai", "hang_seconds", float("inf"), "0 or more, got a number that is not finite"),
        ("openai", "latency_seconds", "2", "expected a number, 0 or more, got a string"),
        ("openai", "latency_seconds", "NaN", "expected a number, 0 or more, got a string"),
        ("openai", "hang_every", 1.5, "expected a whole number, 0 or more, got a fraction"),
        ("openai", "quota_answer", 3, "expected one of "),
        ("openai", "unauthorized_keys", "sk-1", "expected a list, got a string"),
        ("talkable", "down", "yes", "expected true or false, got a string"),
        ("talkable", "site_rate_limits", [1], "expected an object, got a list"),
        ("openai", "hang_every", -3, "expected a whole number, 0 or more, got a negative number"),
        ("openai", "key_limits", {"k": {"rpm": -5}}, "0 or more, got a negative number"),
        ("openai", "fail_next", [429, 1000], "an HTTP status, 100 to 599, got a number outside it"),
        ("openai", "default_rpm", 0, "expected a rate above 0, got 0"),
        ("openai", "model_limits", {"m": {"rpm": 60, "tpm": 0}}, "a rate above 0, got 0"),
        ("talkable", "latency_seconds", -0.5, "a number, 0 or more, got a negative number"),
        ("talkable", "site_rate_limits", {"s": float("nan")}, "got a number that is not finite"),
        ("talkable", "fail_status", 42, "an HTTP status, 100 to 599, got a number outside it"),
        ("talkable", "duplicate_status", 600, "100 to 599, got a number outside it"),
    ],
)  # fmt: skip
async def test_control_refuses_a_value_no_knob_takes_naming_the_field(
    which: str, field: str, value: object, said: str, oai, tk, http
) -> None:
    """A negative latency (or NaN, a status no server answers) was taken: a stand-in that
    answered at once, or a 500 of its own at the next call. A 400 names the field, and
    nothing of the request is set (the other field given with it included)."""
    root = (oai if which == "openai" else tk).root_url
    async with http.get(f"{root}/_control") as resp:
        before = await resp.json()
    async with http.post(f"{root}/_control", json={"hang_every": 2, field: value}) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["field"] == field
    assert answer["error"].startswith(f"bad value for {field!r}: ") and said in answer["error"]
    async with http.get(f"{root}/_control") as resp:
        assert await resp.json() == before


@pytest.mark.parametrize(
    ("which", "body", "field", "said"),
    [
        ("openai", {"unauthorized_keys": "sk-live-0123456789abcdef"}, "unauthorized_keys",
         "bad value for 'unauthorized_keys': expected a list, got a string"),
        ("openai", {"unauthorized_keys": [["sk-live-0123456789abcdef"]]}, "unauthorized_keys",
         "bad value for 'unauthorized_keys': expected a string, got a list"),
        ("talkable", {"api_keys": {"acme": ["sk-live-0123456789abcdef"]}}, "api_keys",
         "bad value for 'api_keys': expected a string, got a list"),
        ("openai", {"quota_answer": "sk-live-0123456789abcdef"}, "quota_answer",
         "got a string not one of them"),
    ],
)  # fmt: skip
async def test_control_names_the_field_and_what_it_takes_never_the_value_sent(
    which: str, body: dict, field: str, said: str, oai, tk, http
) -> None:
    """A refused value was echoed in the 400 (``got 'sk-live-...'``): a key sent to the wrong
    knob, or in the wrong shape, ended in the client's log. The field and what it takes are
    said, and what kind of value came; not the value."""
    root = (oai if which == "openai" else tk).root_url
    async with http.post(f"{root}/_control", json=body) as resp:
        assert resp.status == 400
        text = await resp.text()
    answer = json.loads(text)
    assert answer["field"] == field and said in answer["error"], answer
    assert "0123456789abcdef" not in text


async def test_control_refuses_an_unknown_field_naming_those_it_takes(oai, http) -> None:
    async with http.post(f"{oai.root_url}/_control", json={"latency": 1}) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["field"] == "latency"
    assert answer["error"].startswith("unknown config field 'latency' (it takes ")
    assert "latency_seconds" in answer["error"] and "hang_every" in answer["error"]

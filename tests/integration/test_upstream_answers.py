"""Answers real upstreams give and the stand-ins do not, through the whole pipeline: an OpenAI
200 whose content is empty, a Talkable behind a proxy answering 200 with an HTML page, a TLS
certificate that does not verify, and a text of emoji, right-to-left script, newlines and
Liquid-looking braces. Each request ends in the state that is true, with its reason in the
audit and its dead letter, asked again only as often as the README says; the text that lands
is the text OpenAI wrote."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streams.dev.kafka import EmbeddedKafka
from tests.integration.conftest import System, now_s, read_topic
from tests.support import seed_params, usage, wait_until
from tests.tls import self_signed

pytestmark = pytest.mark.integration

TEXT = "Hi Ada 🎉 שלום\nline two {{ person.first_name }} {% if x %} — done"
EMPTY_KEY = "sk-edge-empty-content-0001"
GOOD_KEY = "sk-edge-good-text-0001"
BIG_KEY = "sk-edge-big-text-0001"  # answered with 600 kB of text
ODD_KEY = "sk-edge-odd-model-0001"  # answered with a model name of 1.1 MB
HELD_KEY = "sk-edge-held-0001"  # answered once the test releases it


class EdgeUpstreams:
    """OpenAI and Talkable as one real HTTP server in a thread of its own: OpenAI answers
    ``EMPTY_KEY`` with an empty content, ``BIG_KEY`` with 600 kB of text, ``ODD_KEY`` with a
    model name of 1.1 MB, ``HELD_KEY`` with ``TEXT`` once :meth:`release` is called, any other
    key with ``TEXT``; Talkable answers the site ``proxied``
    with an HTML page (200), the site ``slow`` after a minute, any other with its real 201."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.tls = tls  # HTTPS with this context
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.runner.addresses[0][1]}"

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.released.set)

    def reset(self) -> None:
        """As new: no call recorded, ``HELD_KEY`` held again."""
        asyncio.run_coroutine_threadsafe(self._reset(), self.loop).result(30)

    async def _reset(self) -> None:
        self.calls.clear()
        self.released = asyncio.Event()

    async def _start(self) -> web.AppRunner:
        self.released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/api/v2/origins/event", self._talkable)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.tls).start()
        return runner

    async def _openai(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.calls.append({"upstream": "openai", "key": key})
        if key == HELD_KEY:
            await self.released.wait()
        content = {EMPTY_KEY: "", BIG_KEY: "verse " * 100_000}.get(key, TEXT)
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        model = "m" * 1_100_000 if key == ODD_KEY else "gpt-3.5-turbo"
        return web.json_response(
            {"id": "c", "object": "chat.completion", "model": model,
             "choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 14}}
        )  # fmt: skip

    async def _talkable(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"upstream": "talkable", **body})
        if body["site_slug"] == "slow":
            await asyncio.sleep(60)
        if body["site_slug"] == "proxied":
            return web.Response(text="<html><body>Welcome</body></html>", content_type="text/html")
        return web.json_response({"ok": True, "result": {"origin": {"id": 1}}}, status=201)

    def of(self, upstream: str, **match: Any) -> list[dict[str, Any]]:
        return [
            call
            for call in list(self.calls)
            if call["upstream"] == upstream and all(call.get(k) == v for k, v in match.items())
        ]

    def close(self) -> None:
        self.release()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def _edges() -> Iterator[EdgeUpstreams]:
    upstreams = EdgeUpstreams()
    yield upstreams
    upstreams.close()


@pytest.fixture
def edges(_edges: EdgeUpstreams) -> EdgeUpstreams:
    """The module's one edge server, found as new by each test (no call recorded, its held
    key held again): what a test counts there is its own."""
    _edges.reset()
    return _edges


@pytest.fixture(scope="module")
def _on_edges(
    _edges: EdgeUpstreams, kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    root = tmp_path_factory.mktemp("on-edges")
    urls = {"openai_base_url": f"{_edges.url}/v1", "talkable_base_url": f"{_edges.url}/api/v2"}
    deployment = System(kafka, root, **urls).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def on_edges(_on_edges: System, edges: EdgeUpstreams) -> System:
    """The module's one deployment whose OpenAI and Talkable are the edge server, started once
    for the tests that only send webhooks to it and read what became of them (a start and a
    stop take 10 to 30 s), as ``module_system``: each test's people, keys and request ids are
    its own, and what it counts (calls, dead letters) it counts of its own requests."""
    for name, proc in _on_edges.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{_on_edges.log(name)}"
    return _on_edges


def test_answers_without_a_usable_body_end_truthfully_and_a_text_lands_unchanged(
    on_edges: System, edges: EdgeUpstreams
) -> None:
    system = on_edges
    bodies = {
        "empty": seed_params("empty@example.com", openai_key=EMPTY_KEY),
        "proxied": seed_params("proxied@example.com", site="proxied", openai_key=GOOD_KEY),
        "landed": seed_params("landed@example.com", openai_key=GOOD_KEY),
    }
    ids = {}
    for name, body in bodies.items():
        status, answer = system.post(body)
        assert status == 202, answer
        ids[name] = answer["request_id"]
    rows = system.wait_terminal(list(ids.values()), timeout=120)

    # an empty content is no text: nothing written over the person's text in Talkable
    empty = rows[ids["empty"]]
    assert (empty.state, empty.error_class) == ("generation_failed", "EmptyCompletion")
    assert (empty.error_message or "").startswith("OpenAI returned no text: the content is empty")
    assert len(edges.of("openai", key=EMPTY_KEY)) == 3  # asked again twice, as the README says
    assert not [c for c in edges.of("talkable") if c["data"]["email"] == "empty@example.com"]

    # a 200 HTML page said nothing of the event: not published, asked three times in all
    proxied = rows[ids["proxied"]]
    assert (proxied.state, proxied.error_class) == ("publish_failed", "BadAnswer")
    assert "not its API's JSON (text/html)" in (proxied.error_message or "")
    assert len(edges.of("talkable", site_slug="proxied")) == 3

    # emoji, right-to-left script, newlines and braces reach Talkable as OpenAI wrote them
    assert rows[ids["landed"]].state == "published"
    [landed] = [c for c in edges.of("talkable") if c["data"]["email"] == "landed@example.com"]
    assert landed["data"]["custom_properties"]["generated_text"] == TEXT

    # what an operator sees: the reason in the audit and in the dead letter, and no key
    audit = system.talkstream("audit", "--request-id", ids["empty"])
    assert "EmptyCompletion: OpenAI returned no text: the content is empty" in audit
    preview = system.talkstream("redrive", "--dry-run")
    assert f"would redrive: {ids['proxied']} → the ledger  site=proxied  " in preview
    assert "reason=BadAnswer: Talkable answered 200 with a body that is not its API's" in preview
    for secret in (EMPTY_KEY, GOOD_KEY, "talkable-key-0001"):
        assert secret not in audit + preview
        assert secret not in system.log("worker")


def test_a_refusal_and_a_filtered_text_end_after_one_call_and_a_cut_text_says_so(
    make_system,
) -> None:
    """The model's refusal (``message.refusal``) and a text OpenAI's filter cut
    (``finish_reason: content_filter``) were asked three times, each billed, and then failed
    all the same. Through the stand-in and the broker: one call each, ``generation_failed``
    with its own reason at attempt 1, a dead letter to redrive, the person's slot back. A text
    cut at ``max_tokens`` is published, and its TextGenerated says it was cut."""
    system: System = make_system()
    refusing, filtering = "sk-refused-prompt-0001", "sk-filtered-text-0001"
    system.openai(
        "POST", "/_control", {"refusal_keys": [refusing], "content_filter_keys": [filtering]}
    )
    window = usage(1, now=now_s())  # one text a person: a failure must give its slot back
    bodies = {
        "refused": seed_params("refused@example.com", openai_key=refusing, usage_limit=window),
        "filtered": seed_params("filtered@example.com", openai_key=filtering),
    }
    ids = {}
    for name, body in bodies.items():
        status, answer = system.post(body)
        assert status == 202, answer
        ids[name] = answer["request_id"]
    rows = system.wait_terminal(list(ids.values()), timeout=90)
    said = {
        "refused": ("Refused", "the model refused: I'm sorry, I can't help with that."),
        "filtered": ("ContentFiltered", "finish_reason content_filter (OpenAI's content filter"),
    }
    for name, (reason, why) in said.items():
        row = rows[ids[name]]
        assert (row.state, row.error_class, row.attempts) == ("generation_failed", reason, 1)
        assert (row.error_message or "").startswith(f"OpenAI returned no text: {why}")
    calls = system.openai("GET", "/_calls")
    assert sorted(c["fault"] for c in calls) == ["content_filter", "refusal"]  # one call each
    assert not system.talkable("GET", "/_calls")  # nothing written over the person's text

    # the refused person's slot went back: their next webhook (another prompt) is published
    again = seed_params("refused@example.com", content="another verse", usage_limit=window)
    # a text cut at the campaign's max_tokens is published as it is, and its event says so
    cut = seed_params("cut@example.com", content="a verse of many words")
    cut["openai"]["max_tokens"] = "3"
    published = {}
    for name, body in (("again", again), ("cut", cut)):
        status, answer = system.post(body)
        assert status == 202, answer
        published[answer["request_id"]] = name
    rows = system.wait_terminal(list(published))
    assert {row.state for row in rows.values()} == {"published"}
    lifecycle = f"{system.app_id}-lifecycle"
    generated = {
        published[event["request_id"]]: event
        for event in (json.loads(v) for _, _, _, v in read_topic(system.kafka.bootstrap, lifecycle))
        if event["type"] == "TextGenerated"
    }
    assert (generated["cut"]["truncated"], generated["again"]["truncated"]) == (True, None)
    # and the projection keeps it: the audit and the console say it
    assert {name: rows[rid].truncated for rid, name in published.items()} == {
        "cut": True,
        "again": False,
    }
    [cut_id] = [rid for rid, name in published.items() if name == "cut"]
    assert "(text cut at its token cap)" in system.talkstream("audit", "--request-id", cut_id)
    [landed] = [c for c in system.talkable("GET", "/_calls") if c["email"] == "cut@example.com"]
    assert landed["custom_properties"]["generated_text"] == "Generated for: a"  # 3 words

    preview = system.talkstream("redrive", "--dry-run")
    assert f"would redrive: {ids['refused']} → the ledger  site=test-site  " in preview
    assert "reason=Refused: OpenAI returned no text: the model refused" in preview
    audit = system.talkstream("audit", "--request-id", ids["filtered"])
    assert "ContentFiltered: OpenAI returned no text: finish_reason content_filter" in audit
    for secret in (refusing, filtering):
        assert secret not in audit + preview + system.log("worker")


def test_a_base_url_without_v1_ends_at_once_naming_what_to_check(
    make_system, edges: EdgeUpstreams
) -> None:
    """OPENAI_BASE_URL set without ``/v1``: each request failed "OpenAI answered 404: Error
    code: 404", nothing saying where to look. The operator reads what to fix in the audit."""
    system: System = make_system(openai_base_url=edges.url, talkable_base_url=f"{edges.url}/api/v2")
    status, answer = system.post(seed_params("lost@example.com", openai_key=GOOD_KEY))
    assert status == 202, answer
    request_id = answer["request_id"]
    row = system.wait_terminal([request_id], timeout=90)[request_id]
    assert (row.state, row.error_class, row.attempts) == ("generation_failed", "BadRequest", 1)
    hint = (
        f"OpenAI answered 404 (no Chat Completions at TALKSTREAM_OPENAI_BASE_URL {edges.url}: "
        "OpenAI's API ends in /v1, e.g. https://api.openai.com/v1): a body that is not "
        "OpenAI's JSON (text/plain)"
    )
    assert row.error_message == hint
    assert hint in system.talkstream("audit", "--request-id", request_id)
    assert GOOD_KEY not in system.log("worker")


def test_texts_too_large_for_the_ledger_end_and_the_worker_stays_up(
    on_edges: System, edges: EdgeUpstreams
) -> None:
    """Two texts of 600 kB for one person, their publications in flight: the person's ledger
    entry (which holds each one's text) became a 1.2 MB record, faust's producer refused it
    (MessageSizeTooLargeError) and the worker crashed (``make dev`` stopped everything), and
    would again at each start. A text over ``MAX_TEXT_BYTES`` now ends its request."""
    system = on_edges
    ids = []
    for content in ("a long verse", "a longer verse"):
        body = seed_params("big@example.com", site="slow", openai_key=BIG_KEY, content=content)
        status, answer = system.post(body)
        assert status == 202, answer
        ids.append(answer["request_id"])
    rows = system.wait_terminal(ids, timeout=90)
    for row in rows.values():
        assert (row.state, row.error_class, row.attempts) == (
            "generation_failed",
            "TextTooLarge",
            1,
        )
        assert (row.error_message or "").startswith(
            "OpenAI's text is 600,000 bytes, more than TALKSTREAM_MAX_TEXT_BYTES (65,536)"
        )
    assert len(edges.of("openai", key=BIG_KEY)) == 2
    assert not edges.of("talkable")
    system.wait_ready()  # alive and deciding


def test_webhooks_too_large_for_the_ledger_entry_end_and_the_worker_stays_up(
    on_edges: System, edges: EdgeUpstreams
) -> None:
    """Five webhooks of one person with prompts of 230 kB, their generations in flight: the
    person's ledger entry holds each one's params, became a record of 1.15 MB, faust's
    producer refused it and the worker crashed, and again at each start (it decides the same
    records again). The entry now stays within ``MAX_ENTRY_BYTES`` (768 KiB by default): the
    webhooks that do not fit end ``EntryTooLarge``, dead-lettered, and the rest go on."""
    system = on_edges
    ids = []
    for n in range(5):
        content = f"verse {n}: " + "a" * 230_000
        body = seed_params("wide@example.com", openai_key=HELD_KEY, content=content)
        status, answer = system.post(body)
        assert status == 202, answer
        ids.append(answer["request_id"])
    refused = system.wait_terminal(ids[2:], timeout=90)
    for row in refused.values():
        assert (row.state, row.error_class, row.attempts) == (
            "generation_failed",
            "EntryTooLarge",
            1,
        )
        assert "of MAX_ENTRY_BYTES (786,432) left for them" in (row.error_message or "")
    deadletter = f"{system.app_id}-deadletter"
    letters = [
        letter
        for letter in (json.loads(v) for *_, v in read_topic(system.kafka.bootstrap, deadletter))
        if letter["request_id"] in ids  # (the deployment's other tests' are theirs)
    ]
    assert sorted(letter["request_id"] for letter in letters) == sorted(ids[2:])
    assert all(letter["reason"].startswith("EntryTooLarge: ") for letter in letters)
    # the two that fit are called (the key's first call goes alone for up to a second)
    wait_until(lambda: len(edges.of("openai", key=HELD_KEY)) == 2, 30, what="two calls")
    edges.release()
    rows = system.wait_terminal(ids[:2], timeout=90)
    assert {row.state for row in rows.values()} == {"published"}
    assert len(edges.of("openai", key=HELD_KEY)) == 2  # the refused ones were never called
    system.wait_ready()  # alive and deciding


def test_a_result_larger_than_a_kafka_record_ends_at_once_saying_so(
    on_edges: System, edges: EdgeUpstreams
) -> None:
    """The generator could not report such a result (MessageSizeTooLargeError, logged): the
    request waited out its deadline, was generated again, billed each time, and ended
    ``DeadlineExpired`` ("the work was lost") after every attempt. (A text that large ends
    ``TextTooLarge`` first: here an OpenAI-compatible server's model name is the bulk.)"""
    system = on_edges
    status, answer = system.post(seed_params("odd@example.com", openai_key=ODD_KEY))
    assert status == 202, answer
    request_id = answer["request_id"]
    row = system.wait_terminal([request_id], timeout=90)[request_id]  # long before its deadline
    assert (row.state, row.error_class, row.attempts) == ("generation_failed", "RecordTooLarge", 1)
    assert "Kafka refused the result" in (row.error_message or "")
    assert len(edges.of("openai", key=ODD_KEY)) == 1
    assert not edges.of("talkable")


def test_a_talkable_that_asks_for_no_wait_and_refuses_again_is_not_hammered(make_system) -> None:
    """429s with ``Retry-After: 0``: the publisher called back at once, each time, a thousand
    times in about two seconds (against ``make dev``: 17,900 calls in 30 s), until the maximum
    wait. It backs off now, and the request ends saying what held it."""
    system = make_system(max_wait_seconds="12")
    # the executors' groups joined first: the 12 s are the publication's to wait out; a
    # generation that waited for the join past them ended in its queue (a loaded host)
    system.wait_ready()
    system.talkable("POST", "/_control", {"retry_after": "0", "fail_next": [429] * 1000})
    status, answer = system.post(seed_params("patient@example.com"))
    assert status == 202, answer
    request_id = answer["request_id"]
    row = system.wait_terminal([request_id], timeout=90)[request_id]
    assert (row.state, row.error_class) == ("publish_failed", "QueueTimeout")
    assert "rate limited (Talkable answered 429" in (row.error_message or "")
    calls = system.talkable("GET", "/_calls")
    assert 3 <= len(calls) <= 20, len(calls)


def test_a_certificate_that_does_not_verify_ends_the_request_at_its_first_call(
    make_system, tmp_path: Path
) -> None:
    """An OpenAI or a Talkable base URL whose TLS certificate does not verify (self-signed
    here) was an outage: the command waited in its target's queue, its circuit opening,
    until MAX_WAIT_SECONDS (900 s by default) ended it ``QueueTimeout``. It ends at its first
    call now, ``CertificateError`` saying so, parked for a redrive, no key in what is said."""
    untrusted = EdgeUpstreams(tls=self_signed(tmp_path).server_context())
    try:
        generating = make_system(openai_base_url=f"{untrusted.url}/v1")
        publishing = make_system(talkable_base_url=f"{untrusted.url}/api/v2")
        ids = {}
        for name, system in (("generating", generating), ("publishing", publishing)):
            status, answer = system.post(seed_params(f"{name}@example.com", openai_key=GOOD_KEY))
            assert status == 202, answer
            ids[name] = answer["request_id"]
        generated = generating.wait_terminal([ids["generating"]], timeout=90)[ids["generating"]]
        published = publishing.wait_terminal([ids["publishing"]], timeout=90)[ids["publishing"]]
    finally:
        untrusted.close()
    said = [
        (generated, "generation_failed", "OpenAI", f"{untrusted.url}/v1"),
        (published, "publish_failed", "Talkable", f"{untrusted.url}/api/v2"),
    ]
    for row, state, upstream, base in said:
        assert (row.state, row.error_class, row.attempts) == (state, "CertificateError", 1)
        assert (row.error_message or "").startswith(
            f"{upstream}'s TLS certificate at {base} does not verify: self-signed certificate;"
        )
    assert not untrusted.calls  # no request got past the handshake
    assert len(publishing.openai("GET", "/_calls")) == 1  # its text was made, once
    audit = generating.talkstream("audit", "--request-id", ids["generating"])
    assert "CertificateError: OpenAI's TLS certificate at" in audit
    preview = publishing.talkstream("redrive", "--dry-run")
    assert f"would redrive: {ids['publishing']} → " in preview
    for system in (generating, publishing):
        for secret in (GOOD_KEY, "talkable-key-0001"):
            assert secret not in system.log("worker")
    assert GOOD_KEY not in audit and "talkable-key-0001" not in preview

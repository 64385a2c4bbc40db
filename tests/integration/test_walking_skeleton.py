"""One webhook travels the whole designed path: ingress → Kafka → ledger → OpenAI stand-in →
Talkable stand-in → lifecycle → SQL, on the real broker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from models.events import LifecycleEvent
from streams.codecs import decode
from streams.dev.openai_standin import completion_text
from tests.integration.conftest import System, http, now_s, read_topic
from tests.support import seed_params, usage, wait_until

pytestmark = pytest.mark.integration


def requests_topic_size(system: System) -> int:
    return len(read_topic(system.kafka.bootstrap, f"{system.app_id}-requests"))


def test_seed_request_is_generated_published_and_projected(system: System) -> None:
    now = now_s()
    status, body = system.post(
        seed_params(
            "Ada@Example.com ",
            usage_limit=usage(3, now=now, start=now - 10, used=1),
            talkable_key="talkable-key-seed-7781",
            event_number="order-42-complete",
        )
    )
    assert status == 202, body
    request_id = body["request_id"]

    row = system.wait_terminal([request_id])[request_id]
    assert row.state == "published"
    assert row.site == "test-site"
    assert row.person == "test-site:ada@example.com"
    assert row.model == "gpt-3.5-turbo"
    assert row.prompt_tokens and row.completion_tokens

    events = [e for e in system.talkable("GET", "/_events") if e["email"] == "ada@example.com"]
    assert len(events) == 1
    event = events[0]
    assert event["site_slug"] == "test-site"
    assert event["event_category"] == "generate_text_complete"
    assert event["event_number"] == "order-42-complete"
    props = event["custom_properties"]
    assert props["generated_text"].startswith("Generated for: Write a humorous verse")
    # the snapshot seeded the window: one slot used before, ours makes two; all strings
    assert props["__start_time"] == str(now - 10)
    assert props["__current_usage_amount"] == "2"
    calls = [
        c for c in system.talkable("GET", "/_calls") if c.get("event_number") == "order-42-complete"
    ]
    assert calls and all(c["key_tail"] == "7781" for c in calls)  # Bearer = request's key

    states = [t.state for t in system.projection.transitions(request_id)]
    assert states == ["received", "admitted", "generating", "generated", "publishing", "published"]
    # what joins the request with Talkable's event, the campaign's own number: on its
    # CompletionPublished, and in its SQL row (with the site)
    lifecycle = [
        decode(LifecycleEvent, value)
        for _, _, key, value in read_topic(system.kafka.bootstrap, f"{system.app_id}-lifecycle")
        if key == request_id.encode()
    ]
    assert [(e.type, e.event_number) for e in lifecycle if e.event_number] == [
        ("CompletionPublished", "order-42-complete")
    ]
    # and the number its publication attempted, on its start (lifecycle schema 9)
    assert [(e.type, e.attempted_event_number) for e in lifecycle if e.attempted_event_number] == [
        ("PublicationStarted", "order-42-complete")
    ]
    assert (row.site, row.event_number) == ("test-site", "order-42-complete")


def test_trigger_not_met_is_skipped_without_calling_openai(system: System) -> None:
    status, body = system.post(
        seed_params("skip@example.com", trigger=" ", openai_key="sk-never-called-9931")
    )
    assert status == 202
    row = system.wait_terminal([body["request_id"]])[body["request_id"]]
    assert row.state == "skipped"
    assert not [c for c in system.openai("GET", "/_calls") if c.get("key_tail") == "9931"]


def test_default_event_number_is_unique_per_request(system: System) -> None:
    status, body = system.post(seed_params("nonumber@example.com"))
    assert status == 202
    request_id = body["request_id"]
    row = system.wait_terminal([request_id])[request_id]
    assert row.state == "published"
    assert row.event_number == f"generate_text_complete-{request_id}"
    numbers = [
        e["event_number"]
        for e in system.talkable("GET", "/_events")
        if e["email"] == "nonumber@example.com"
    ]
    assert numbers == [f"generate_text_complete-{request_id}"]


def test_a_reasoning_model_without_a_cap_is_published(system: System) -> None:
    """A campaign for a reasoning model that gives no token cap: the default goes to OpenAI as
    ``max_completion_tokens`` (such models refuse ``max_tokens``: every request failed)."""
    body = seed_params("reasoner@example.com", openai_key="sk-test-reasoning-5501")
    body["openai"]["model"] = "o3-mini"
    del body["openai"]["max_tokens"]
    status, answer = system.post(body)
    assert status == 202, answer
    request_id = answer["request_id"]

    row = system.wait_terminal([request_id])[request_id]
    assert row.state == "published", row.error_message
    calls = [c for c in system.openai("GET", "/_calls") if c.get("key_tail") == "5501"]
    assert [(c["max_tokens"], c["max_completion_tokens"], c["status"]) for c in calls] == [
        (None, 150, 200)
    ]


def test_a_reasoning_deployment_of_its_own_name_is_published(system: System) -> None:
    """A reasoning model deployed under a name of its own (an Azure deployment's) is not known
    by its name: the first call sends the cap as ``max_tokens``, which it refuses (400
    ``unsupported_parameter``, "Use 'max_completion_tokens' instead"); that call is sent again
    at once with ``max_completion_tokens``, in the same attempt, and the key's later webhooks
    for the model send that first. Every such request failed, ``BadRequest``."""
    system.openai("POST", "/_control", {"reasoning_deployments": ["verse-reasoner"]})
    for email in ("deployed@example.com", "deployed-later@example.com"):
        body = seed_params(email, openai_key="sk-test-deployment-5502")
        body["openai"]["model"] = "verse-reasoner"
        status, answer = system.post(body)
        assert status == 202, answer
        request_id = answer["request_id"]

        row = system.wait_terminal([request_id])[request_id]
        assert row.state == "published", row.error_message
        transitions = system.projection.transitions(request_id)
        assert [(t.state, t.attempt) for t in transitions if t.state == "generating"] == [
            ("generating", 1)
        ]
    calls = [c for c in system.openai("GET", "/_calls") if c.get("key_tail") == "5502"]
    assert [(c["max_tokens"], c["max_completion_tokens"], c["status"]) for c in calls] == [
        (150, None, 400),
        (None, 150, 200),
        (None, 150, 200),
    ]


def test_a_messages_name_reaches_openai(system: System) -> None:
    """OpenAI's optional ``name`` of a message's participant goes to OpenAI in the message (it
    was refused at the ingress): the published text is the stand-in's for the named prompt."""
    content = "Write a humorous verse for Ada, who bought a kite."
    body = seed_params("named@example.com", content=content)
    body["openai"]["messages"][0]["name"] = "Ada_Lovelace"
    status, answer = system.post(body)
    assert status == 202, answer
    request_id = answer["request_id"]

    assert system.wait_terminal([request_id])[request_id].state == "published"
    events = [e for e in system.talkable("GET", "/_events") if e["email"] == "named@example.com"]
    sent = [{"role": "user", "content": content, "name": "Ada_Lovelace"}]
    unnamed = [{"role": "user", "content": content}]
    expected, _ = completion_text("gpt-3.5-turbo", sent, 150)
    assert expected != completion_text("gpt-3.5-turbo", unnamed, 150)[0]
    assert [e["custom_properties"]["generated_text"] for e in events] == [expected]


def test_invalid_request_is_refused_and_nothing_is_produced(system: System) -> None:
    before = requests_topic_size(system)
    assert before > 0  # the earlier tests' requests are there: the count is real
    body = seed_params("bad@example.com", usage_limit={"amount": "3"})
    del body["openai"]["messages"]
    status, answer = system.post(body)
    assert status == 422
    fields = {e["field"] for e in answer["errors"]}
    assert {"openai.messages", "usage_limit.current_time"} <= fields
    assert requests_topic_size(system) == before


def test_a_burst_for_one_person_admits_exactly_the_limit(system: System) -> None:
    now = now_s()
    bodies = [
        seed_params("burst@example.com", content=f"verse {i}", usage_limit=usage(3, now=now))
        for i in range(50)
    ]
    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(system.post, bodies))
    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    rows = system.wait_terminal(ids, timeout=120)
    states = [row.state for row in rows.values()]
    assert states.count("published") == 3
    assert states.count("limited") == 47
    events = [e for e in system.talkable("GET", "/_events") if e["email"] == "burst@example.com"]
    assert len(events) == 3


def test_a_site_in_any_case_is_one_person_for_the_limit(system: System) -> None:
    """QA: the same email with a usage limit of 1 under ``Shop``, ``shop`` and ``SHOP`` was
    generated and published three times (three keys: three windows). Talkable's site slugs
    are one site in any case: one is published, the two others are limited, and Talkable is
    called with the site as the webhook typed it."""
    now = now_s()
    sites = ["Shop", "shop", "SHOP"]
    ids = []
    for site in sites:  # one after the other: the first is the one admitted
        status, body = system.post(
            seed_params("Case@Example.com", site=site, usage_limit=usage(1, now=now))
        )
        assert status == 202, body
        ids.append(body["request_id"])
    rows = system.wait_terminal(ids, timeout=120)

    assert [rows[i].state for i in ids] == ["published", "limited", "limited"]
    assert {rows[i].person for i in ids} == {"shop:case@example.com"}
    assert [rows[i].site for i in ids] == sites
    events = [e for e in system.talkable("GET", "/_events") if e["email"] == "case@example.com"]
    assert [(e["site_slug"], e["custom_properties"]["__current_usage_amount"]) for e in events] == [
        ("Shop", "1")
    ]


def test_talkable_retry_of_the_same_webhook_is_processed_once(system: System) -> None:
    body = seed_params("retry@example.com", usage_limit=usage(5, now=now_s()))
    first = system.post(body)
    second = system.post(body)
    assert first[0] == second[0] == 202
    request_id = first[1]["request_id"]
    assert second[1]["request_id"] == request_id
    assert system.wait_terminal([request_id])[request_id].state == "published"

    def duplicate_rows() -> list:
        return [
            r
            for r in system.projection.requests()
            if r.duplicate_of == request_id and r.state == "rejected_duplicate"
        ]

    assert len(wait_until(duplicate_rows, 60, what="the duplicate's lifecycle")) == 1
    events = [e for e in system.talkable("GET", "/_events") if e["email"] == "retry@example.com"]
    assert len(events) == 1


def test_worker_and_ingress_report_health_and_metrics(system: System) -> None:
    status, body = system.post(seed_params("metrics@example.com"))
    assert status == 202
    system.wait_terminal([body["request_id"]])
    assert http("GET", f"{system.worker_url()}/healthz")[0] == 200
    system.wait_ready()
    status, text = http("GET", f"{system.worker_url()}/metrics")
    assert status == 200
    published = [
        line
        for line in text.splitlines()
        if line.startswith('talkstream_transitions_total{state="published"}')
    ]
    assert published and float(published[0].split()[-1]) >= 1
    assert "talkstream_generation_latency_seconds_bucket" in text
    assert 'talkstream_tokens_total{kind="completion"}' in text
    assert "talkstream_consumer_lag{" in text
    status, text = http("GET", f"{system.ingress}/metrics")
    assert 'talkstream_ingress_requests_total{outcome="202"}' in text


def test_the_worker_asks_for_no_topic_it_does_not_have(system: System) -> None:
    # faust's leader election reads a topic of its own, which nothing here uses and the
    # worker does not create: asking for it logged an ERROR at every start
    system.wait_ready()
    log = (system.root / "worker.log").read_text(errors="replace")
    assert "Worker ready" in log  # the start is in it
    assert "not found in cluster metadata" not in log
    assert "__assignor-__leader" not in log

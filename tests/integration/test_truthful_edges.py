"""Every answer means what it says: a 202 is in Kafka, a 503 never will be, even when the
broker is killed and restarted under steady traffic (and the ingress's /readyz says so); a key
that cannot be sent is refused at the door; a worker killed mid-burst repeats no call it
finished and takes its partitions back at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from models.params import from_mapping, request_fingerprint
from streams.dev.kafka import EmbeddedKafka
from streams.errors import BrokerUnavailable
from streams.ingress import KafkaSink
from streams.kafka_options import client_options, diagnose
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.conftest import System, Traffic, create_topic, http, read_topic
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration


def expected_id(body: dict) -> str:
    return request_fingerprint(from_mapping(body))


def test_a_503_is_never_written_and_every_202_is_published(own_broker, tmp_path) -> None:
    system = System(own_broker, tmp_path, kafka_stall_seconds="2").start()
    try:
        system.wait_ready()

        def steady(client: int, i: int) -> dict:  # a steady trickle, about 15 a second
            return seed_params(f"steady{client}-{i}@example.com", content=f"steady {i}")

        with Traffic(system, steady) as traffic:
            wait_until(lambda: traffic.count(202) >= 20, 60, what="steady 202s")
            assert http("GET", f"{system.ingress}/readyz") == (
                200,
                {"ready": True, "status": "ready"},
            )
            pid = own_broker.status().pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: traffic.count(503) >= 5, 60, what="503s while down")
            # not ready while down, saying why (alive all the same), ready again once it is back
            status, why = http("GET", f"{system.ingress}/readyz")
            assert (status, why["ready"]) == (503, False), why
            assert why["status"] in {"Kafka is not acknowledging", "no Kafka broker answered"}, why
            assert http("GET", f"{system.ingress}/healthz")[0] == 200
            own_broker.start(timeout=120)
            wait_until(
                lambda: [a.status for a in traffic.answers[-10:]].count(202) == 10,
                120,
                what="202s again",
            )
            assert http("GET", f"{system.ingress}/readyz")[0] == 200
        # (the request id each body gets, as the ingress derives it; None = no answer)
        answers = [(expected_id(a.body), a.status) for a in traffic.answers]

        by_status = Counter(status for _, status in answers)
        print(f"\nanswers with the broker killed and restarted: {dict(by_status)}")
        written = {
            json.loads(value)["request_id"]
            for _, _, _, value in read_topic(own_broker.bootstrap, f"{system.app_id}-requests")
            if json.loads(value).get("kind") == "request_received"
        }
        refused = {rid for rid, status in answers if status == 503}
        accepted = [rid for rid, status in answers if status == 202]
        assert refused and accepted
        assert refused.isdisjoint(written), "a request answered 503 reached Kafka"
        assert set(accepted) <= written
        rows = system.wait_terminal(accepted, timeout=180)
        assert {row.state for row in rows.values()} == {"published"}
    finally:
        system.stop()


def test_the_ingress_sink_is_ready_only_for_a_topic_with_a_leader_everywhere(kafka) -> None:
    """What /readyz asks the broker, on the real one: a topic it does not have (it creates
    none by itself) is named, one it has is ready."""
    sink = KafkaSink(client_options(Settings(kafka_bootstrap=kafka.bootstrap)))
    topic = f"readiness-{uuid.uuid4().hex[:8]}"

    async def probe() -> tuple[str | None, str | None]:
        try:
            missing = await sink.ready(topic, 10)
            await create_topic(kafka.bootstrap, topic, 3)
            return missing, await sink.ready(topic, 10)
        finally:
            await sink.close()

    missing, present = asyncio.run(probe())
    assert missing == f"topic {topic} does not exist"
    assert present is None


def test_the_ingress_at_the_controllers_port_says_it_is_no_brokers(kafka) -> None:
    """The embedded broker's KRaft controller port as the ingress's bootstrap: its /readyz
    said "cannot connect to a broker", where every command names a controller's listener."""
    controller = f"127.0.0.1:{kafka.controller_port}"
    settings = Settings(kafka_bootstrap=controller)
    sink = KafkaSink(client_options(settings), diagnose=lambda: diagnose(settings))

    async def probe() -> str | None:
        try:
            return await sink.ready(settings.topic("requests"), 30)
        finally:
            await sink.close()

    assert asyncio.run(probe()) == (
        f"Kafka unavailable: Kafka at {controller} answers, but not as a broker: it serves no "
        "Metadata requests, as a KRaft controller's listener does (the controller port, not "
        "the broker's?)"
    )


def test_the_ingress_sink_says_what_the_broker_answered_for_a_topic_it_did_not_describe(
    kafka,
) -> None:
    """aiokafka leaves out of its metadata a topic the broker answered with any error, and
    /readyz said "does not exist" for each (a topic without a leader yet after a restart, one
    the client may not see, a name no topic can have): it says what the broker answered."""
    sink = KafkaSink(client_options(Settings(kafka_bootstrap=kafka.bootstrap)))
    topic = f"no such topic {uuid.uuid4().hex[:8]}"  # a name Kafka refuses (spaces)

    async def probe() -> str | None:
        try:
            return await sink.ready(topic, 10)
        finally:
            await sink.close()

    assert asyncio.run(probe()) == f"Kafka answered InvalidTopicError for topic {topic}"


def test_a_fresh_ingress_is_ready_at_its_first_probe_when_its_topics_exist(kafka) -> None:
    """The first /readyz of a started ingress (its producer starting inside the probe, asking
    for the ledger's changelog) said "topic ... does not exist" of a topic that existed: the
    answer came from a metadata request sent before the topic was asked for."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tfirst{uuid.uuid4().hex[:8]}")
    requests = settings.topic("requests")

    async def first_probe() -> str | None:
        sink = KafkaSink(
            client_options(settings), ledger_changelog=settings.topic("ledger-changelog")
        )
        try:
            return await sink.ready(requests, 10)
        finally:
            await sink.close()

    asyncio.run(ensure_topics(settings))
    assert [asyncio.run(first_probe()) for _ in range(3)] == [None, None, None]


def test_webhooks_are_refused_once_partitions_were_added_to_requests(kafka) -> None:
    """Partitions added to a live deployment's [requests] (``kafka-topics.sh --alter``): its
    producer would map people to partitions whose ledger has none of their state, or that no
    ledger reads (accepted, never decided). The ingress says so and writes nothing."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tsplit{uuid.uuid4().hex[:8]}")
    requests = settings.topic("requests")
    sink = KafkaSink(client_options(settings), ledger_changelog=settings.topic("ledger-changelog"))

    async def add_partitions() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({requests: NewPartitions(total_count=12)})
        finally:
            await admin.close()

    async def scenario() -> tuple[str | None, str | None, str]:
        await ensure_topics(settings)
        try:
            await sink.send(requests, b"site:ada@example.com", b"{}")
            before = await sink.ready(requests, 10)
            await add_partitions()
            after, deadline = None, time.monotonic() + 30
            while after is None and time.monotonic() < deadline:  # until the broker says so
                after = await sink.ready(requests, 10)
            with pytest.raises(BrokerUnavailable) as refused:
                await sink.send(requests, b"site:ada@example.com", b"{}")
            return before, after, str(refused.value)
        finally:
            await sink.close()

    before, after, refused = asyncio.run(scenario())
    assert before is None
    said = (
        f"{requests} has 12 partitions but the ledger's {settings.app_id}-ledger-changelog 8: a "
        "webhook could land where no ledger reads it (partitions added to a deployment's "
        "topics; to change the count, deploy under a new TALKSTREAM_APP_ID)"
    )
    assert after == said
    assert refused == f"{said}; nothing was sent"
    assert len(read_topic(kafka.bootstrap, requests)) == 1


def test_partitions_added_to_requests_are_refused_without_a_readiness_probe(kafka) -> None:
    """The same, with nobody asking /readyz (which asks Kafka for the metadata at once): the
    producer's own metadata, which aiokafka asks again for every 5 minutes only, said 8 for
    all that time, and the ingress went on answering 202. Its webhooks still went by the 8,
    but a worker's producer, which had learnt of the 10, sent their results where no ledger
    reads them: requests stuck in `generating`. It now learns of them within seconds."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tsplit{uuid.uuid4().hex[:8]}")
    requests = settings.topic("requests")
    sink = KafkaSink(client_options(settings), ledger_changelog=settings.topic("ledger-changelog"))

    async def scenario() -> tuple[int, str]:
        await ensure_topics(settings)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        try:
            await sink.send(requests, b"site:ada@example.com", b"{}")  # the producer started
            await admin.start()
            await admin.create_partitions({requests: NewPartitions(total_count=12)})
            accepted, deadline = 0, time.monotonic() + 60  # aiokafka's own: 300 s
            while time.monotonic() < deadline:
                try:
                    await sink.send(requests, b"site:ada@example.com", b"{}")
                except BrokerUnavailable as refused:
                    return accepted, str(refused)
                accepted += 1
                await asyncio.sleep(0.2)
            return accepted, "never refused"
        finally:
            await admin.close()
            await sink.close()

    accepted, refused = asyncio.run(scenario())
    assert refused == (
        f"{requests} has 12 partitions but the ledger's {settings.app_id}-ledger-changelog 8: a "
        "webhook could land where no ledger reads it (partitions added to a deployment's "
        "topics; to change the count, deploy under a new TALKSTREAM_APP_ID); nothing was sent"
    ), f"{accepted} webhooks accepted"


def test_a_restarted_worker_repeats_no_call_and_takes_its_partitions_back_at_once(
    make_system,
) -> None:
    system = make_system(session_timeout_seconds="45", rebalance_grace_seconds="10")
    key = "sk-restart-paced-10rps"  # a burst that lasts a few seconds: 10 calls a second
    system.openai("POST", "/_control", {"latency_seconds": 0.2, "key_limits": {key: {"rpm": 600}}})
    emails = [f"restart{i}@example.com" for i in range(60)]
    bodies = [seed_params(email, openai_key=key) for email in emails]
    for body in bodies:  # OpenAI's end-user id, passed through: the stand-in's tag of each call
        body["openai"]["user"] = body["email"]
    answers: list = []
    thread = threading.Thread(target=lambda: answers.extend(map(system.post, bodies)))
    thread.start()

    def published() -> int:
        return sum(1 for row in system.projection.requests() if row.state == "published")

    def answered() -> dict:  # the stand-in's count, live: the projection lags under load
        stats = system.openai("GET", "/_stats")
        return stats if stats["by_status"].get("200", 0) >= 15 else {}

    at_kill = wait_until(answered, 120, what="the burst under way")
    assert at_kill["by_status"]["200"] < 50, "the burst ended before the kill"
    system.kill("worker")  # SIGKILL mid-burst
    killed_at = time.monotonic()
    system.start_worker()
    resumed = published()
    wait_until(lambda: published() > resumed, 120, what="the restarted worker to resume")
    resume_s = time.monotonic() - killed_at
    thread.join(timeout=120)
    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    rows = system.wait_terminal(ids, timeout=180)
    assert {row.state for row in rows.values()} == {"published"}

    events = [e for e in system.talkable("GET", "/_events") if e["email"].startswith("restart")]
    assert Counter(e["event_number"] for e in events) == Counter(
        {f"generate_text_complete-{rid}": 1 for rid in ids}
    )
    # Each call is of a command the ledger issued, so no request is called more often than
    # [generate] holds its commands (and published more often than [completions] does): its
    # first attempt, each attempt re-issued because the kill lost the one before (taken and
    # not reported: queued, being called, or called with its result unsent), and any sent again
    # by a batch the restarted ledger decided again. A call finished and reported is repeated
    # by nothing: a request called once more than the system issued it fails here, however
    # many calls the kill cut short (under load more than one can sit between its 200 and its
    # result reaching Kafka).
    person = dict(zip(ids, emails, strict=True))
    calls = Counter(c["user"] for c in system.openai("GET", "/_calls") if c["status"] == 200)
    posts = Counter(
        c["email"] for c in system.talkable("GET", "/_calls") if c["path"].endswith("/event")
    )
    issued = {
        topic: issued_by_person(system, topic, person) for topic in ("generate", "completions")
    }
    lost = Counter(
        (v["request_id"], v["attempt"])
        for v in values_of(system, "requests")
        if v.get("kind") == "deadline_expired" and v.get("lost") and v["request_id"] in person
    )
    print(
        f"\n60 requests, worker SIGKILLed mid-burst: {calls.total()} OpenAI calls of "
        f"{issued['generate'].total()} commands, {posts.total()} Talkable POSTs of "
        f"{issued['completions'].total()}; {len(lost)} attempts told lost; published again "
        f"{resume_s:.1f} s after the kill"
    )
    assert set(calls) == set(emails) and set(posts) == set(emails)
    over = (calls - issued["generate"], posts - issued["completions"])
    assert over == (Counter(), Counter()), f"called, published more often than issued: {over}"
    assert resume_s < 45, "the restarted worker waited for the session timeout"


def values_of(system: System, topic: str) -> list[dict]:
    return [
        json.loads(v) for *_, v in read_topic(system.kafka.bootstrap, f"{system.app_id}-{topic}")
    ]


def issued_by_person(system: System, topic: str, person: dict[str, str]) -> Counter[str]:
    """How many commands of each of ``person``'s requests (by request id) ``topic`` holds, by
    person: every copy the ledger wrote, each of which an executor's run may call."""
    return Counter(
        person[v["request_id"]] for v in values_of(system, topic) if v["request_id"] in person
    )


@pytest.fixture(scope="module")
def impatient(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A deployment whose ingress gives a client 2 s for its headers and its body, for the
    tests at its door, started once for them: each sends its own webhooks."""
    root = tmp_path_factory.mktemp("impatient")
    timeouts = {"ingress_idle_timeout_seconds": "2", "ingress_body_timeout_seconds": "2"}
    deployment = System(kafka, root, **timeouts).start()
    yield deployment
    deployment.stop()


def test_a_key_that_cannot_be_a_header_is_refused_at_the_door(impatient: System) -> None:
    system = impatient
    before = read_topic(system.kafka.bootstrap, f"{system.app_id}-requests")
    started = time.monotonic()
    status, body = system.post(seed_params("crlf@example.com", talkable_key="tk-abc\r\nX: y"))
    assert status == 422, body
    assert body["errors"] == [
        {
            "field": "api_key",
            "message": "must be printable ASCII without spaces or control characters (at most "
            "1024 characters): it is sent as a header",
        }
    ]
    print(f"\nCRLF key answered {status} in {time.monotonic() - started:.3f} s")
    assert read_topic(system.kafka.bootstrap, f"{system.app_id}-requests") == before


def test_a_slow_client_is_cut_off(impatient: System) -> None:
    system = impatient
    with socket.create_connection(("127.0.0.1", system.ingress_port), timeout=30) as headers:
        headers.sendall(b"POST /chat-gpt/generate HTTP/1.1\r\nHost: x\r\n")  # and no more
        started = time.monotonic()
        assert headers.recv(1024) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 25
    with socket.create_connection(("127.0.0.1", system.ingress_port), timeout=30) as body:
        body.sendall(
            b"POST /chat-gpt/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"site":'
        )
        answer = body.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"field": "body"' in answer and "not received within 2 seconds" in answer

"""The worker writes again once Kafka is back from an outage longer than its producer's
request timeout.

aiokafka's idempotent producer fails a batch whose partition has had no leader for
``request_timeout_ms`` (a single broker stopped: its controlled shutdown publishes leader -1)
without sending it, but the sequence number it gave the batch stays spent: the broker then
answers every later record of that producer id for the partition ``OutOfOrderSequenceNumber``,
and aiokafka never takes a new producer id. The worker's producer (faust's request timeout,
``PRODUCER_REQUEST_TIMEOUT``, 1200 s by default; 10 s here) wrote nothing more to such a
partition until the worker restarted: a result lost in the outage was re-issued by its deadline
into that partition, refused, and the request never ended.

The producer must know that partitions have no leader. A single broker's controlled shutdown
says so for about 70 ms before it stops answering, which a producer looking every 100 ms saw
in one outage of one to three; here three nodes (a KRaft quorum that outlives one), topics
with one replica: the node stopped leaves its partitions without a leader, which the two left
tell the producer at its next look.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator

import pytest

from models.events import LifecycleEvent
from streams.codecs import decode
from streams.dev.kafka_cluster import KafkaCluster
from tests.integration.brokers.support import three_nodes
from tests.integration.conftest import System, Traffic, group_commits, read_topic, topic_ends
from tests.support import seed_params, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with three_nodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def test_the_worker_writes_again_after_an_outage_longer_than_its_producer_timeout(
    cluster: KafkaCluster, tmp_path
) -> None:
    """Webhooks flow while a node stops (a controlled shutdown, as `talkstream kafka stop`):
    its partitions have no leader, and the worker's sends to them expire unsent after the
    producer's request timeout. Once the node is back, every webhook accepted before, during
    (those of its partitions: 503) and after the outage ends published: what was lost is
    re-issued by its deadline, into the same partitions, and no call is made for an attempt
    twice (a ledger batch decided again sends only what Kafka did not take of it, and a
    command Kafka took all the same, then holds twice, is called once), and [lifecycle] holds
    each request's transitions in the order they were decided. Nothing Kafka did not take
    leaves an asyncio "never retrieved" ERROR in the worker's log."""
    # one replica (the setting's default): the node stopped leaves its partitions no leader
    system = System(
        cluster,
        tmp_path,
        # lost work is re-issued soon after Kafka is back: an attempt's deadline is its
        # queue wait (MAX_WAIT_SECONDS) plus the call's own (a call here takes 0.5 s)
        generation_deadline_seconds="5",
        publish_deadline_seconds="5",
        max_wait_seconds="60",  # the outage is no reason to give up on a queued call
    )
    system.env["PRODUCER_REQUEST_TIMEOUT"] = "10"  # faust's setting: the outage outlasts it
    # and the producer looks at the partitions' leaders often (faust's setting, 5 minutes by
    # default), so it learns of the "no leader" from the nodes left, as a producer under load
    # does from the broker's answers
    system.env["PRODUCER_METADATA_MAX_AGE_MS"] = "100"
    system.start()

    def webhook(client: int, i: int) -> dict:
        body = seed_params(f"outage{client}-{i % 40}@example.com", content=f"outage {i}")
        # OpenAI's end-user id, passed through: the stand-in's tag of each call, its webhook's
        body["openai"]["user"] = f"outage{client}-{i}"
        return body

    traffic = Traffic(system, webhook)
    log = tmp_path / "worker.log"

    def given_up() -> int:
        return log.read_text().count("Kafka producer gave up on a record")

    try:
        system.wait_ready()
        system.openai("POST", "/_control", {"latency_seconds": 0.5})  # calls end all the time
        with traffic:
            wait_until(lambda: traffic.count(202) >= 30, 60, what="steady 202s")
            first = cluster.nodes[0]
            assert first.stop()  # a controlled shutdown: its partitions' leader is -1 now
            # the records the worker sends to them expire unsent after its request timeout
            wait_until(given_up, 60, what="the worker giving up on a record")
            cluster.restart(1)
            wait_until(
                lambda: [a.status for a in traffic.answers[-10:]].count(202) == 10,
                120,
                what="202s",
            )
            after = len(traffic.answers)
            wait_until(lambda: traffic.count(202, since=after) >= 30, 60, what="more")
        accepted = sorted({a.request_id for a in traffic.answers if a.status == 202})
        rows = system.wait_terminal(accepted, timeout=180)
        assert {row.state for row in rows.values()} == {"published"}
        # each call was an attempt the ledger issued: a batch whose outputs Kafka did not all
        # take, decided again, sent the commands Kafka had taken again, and their executors
        # called again (OpenAI billed twice); lost work is re-issued as an attempt of its own
        started = Counter(
            (t.request_id, t.type)
            for t in system.projection.all_transitions()
            if t.type in ("GenerationStarted", "PublicationStarted")
        )
        published = Counter(
            call["event_number"].removeprefix("generate_text_complete-")
            for call in system.talkable("GET", "/_calls")
            if call["path"].endswith("/origins/event")
        )
        twice = {
            request_id: (calls, started[request_id, "PublicationStarted"])
            for request_id, calls in published.items()
            if calls > started[request_id, "PublicationStarted"]
        }
        assert twice == {}, "Talkable calls, publication attempts"
        # and so for OpenAI, request by request (each call tagged with its webhook, whose
        # request [generate]'s commands name): no request called more often than it was
        # started, however many calls other requests' attempts made
        request_of = {
            command["chat"]["extra"]["user"]: command["request_id"]
            for command in (
                json.loads(value)
                for *_, value in read_topic(cluster.bootstrap, f"{system.app_id}-generate")
            )
            if "chat" in command
        }
        calls = Counter(call["user"] for call in system.openai("GET", "/_calls"))
        over = {
            tag: (n, started[request_of.get(tag), "GenerationStarted"])
            for tag, n in calls.items()
            if n > started[request_of.get(tag), "GenerationStarted"]
        }
        assert over == {}, "OpenAI calls, generation attempts (by webhook)"
        # [lifecycle] holds each request's transitions in the order the ledger decided them,
        # each from the state the one before it left (a transition written twice, as one Kafka
        # gave up on and wrote all the same, counted once): a batch decided again had sent
        # what Kafka gave up on after a later transition of the same request
        written = read_topic(cluster.bootstrap, f"{system.app_id}-lifecycle")
        last: dict[str, LifecycleEvent] = {}
        seen: set[tuple[str, str, str, int]] = set()
        backwards = {}
        for _, _, _, value in sorted(written, key=lambda record: record[:2]):
            event = decode(LifecycleEvent, value)
            if event.identity() in seen:
                continue
            seen.add(event.identity())
            before = last.get(event.request_id)
            if event.previous_state != (before.state if before else None):
                backwards[event.request_id] = (before and before.type, event.type)
            last[event.request_id] = event
        assert backwards == {}, "requests whose transitions are out of order"
        # the group commits every [requests] partition to its end: the ledger holds a
        # partition's commits while a batch of it is not stored (Kafka gave up on an output or
        # a changelog write), and releases them once it stored the batch decided again
        requests = f"{system.app_id}-requests"

        def committed_to_the_end() -> bool:
            commits = group_commits(cluster.bootstrap, system.app_id)
            ends = topic_ends(cluster.bootstrap, requests)
            return {p: commits.get(p, (0, ""))[0] for p in ends} == ends

        wait_until(committed_to_the_end, 60, what="the ledger's commits at the end of [requests]")
        # stopped (as a deploy does), the worker collects what it held: what Kafka did not
        # take is said as such (a WARNING naming the topic and partition), not reported by
        # asyncio as a future nobody read (faust's future message of a changelog record: an
        # ERROR with a traceback, at the stop or whenever the garbage collector ran)
        worker = system.procs.pop("worker")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        text = log.read_text()
        assert "never retrieved" not in text, text
        print(
            f"\n{len(accepted)} webhooks accepted around the outage, all published, "
            f"{len(seen)} transitions in order; worker log: "
            f"{text.count('LeaderNotAvailableError')} LeaderNotAvailableError, "
            f"{text.count('OutOfOrderSequenceNumber')} OutOfOrderSequenceNumber, "
            f"{text.count('takes a new producer id')} new producer ids, "
            f"{text.count('decided again from')} batches decided again"
        )
    finally:
        traffic.stop()
        system.stop()

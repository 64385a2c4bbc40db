"""Nothing acknowledged is lost when a broker dies: the replication test of Kafka's own system
tests (``tests/kafkatest/tests/core/replication_test.py``: hard-bounce the partition leader
while producing, then check every acknowledged message is consumed), through the whole
pipeline.

A 3-node KRaft cluster (combined mode, one host), topics with replication factor 3 and
``min.insync.replicas`` 2, the ingress producing with ``acks=all`` and idempotence. Three
bounces; each sends a burst of webhooks, SIGKILLs the broker that leads the most partitions of
[requests] while the burst is in flight, waits for its partitions to get new leaders, restarts
it and waits until every replica is back in sync. A webhook answered 503 is retried until 202
(Talkable retries too). Then: every 202 reaches exactly one terminal state (0 lost), people
with a limit of 3 get exactly 3 publications, Talkable never sees an event number twice with
different data, and ``talkstream replay --verify`` explains every decision.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from models.lifecycle import TERMINAL
from streams.dev.kafka_cluster import KafkaCluster
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.brokers.support import Delivery, deliver, talkstream, three_nodes
from tests.integration.conftest import System, now_s, read_topic
from tests.support import seed_params, usage, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

BOUNCES = 3
LIMITED_PEOPLE = 15  # usage limit 3; 2 webhooks in each burst: 6 in all, 3 published
UNLIMITED_PER_BURST = 70
SENDERS = 8  # concurrent clients
PACE = 25.0  # webhooks per second per burst: the burst is still arriving when the leader dies
TERMINAL_STATES = {state.value for state in TERMINAL}
PARTITIONS = 4  # the System's TALKSTREAM_PARTITIONS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with three_nodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def describe(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], dict[str, Any]] | None:
    """(topic, partition) -> {"leader", "replicas", "isr"} from the cluster's metadata; None
    when the node asked was the dead one (the admin client picks one at random: ask again)."""

    async def run() -> dict[tuple[str, int], dict[str, Any]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        return {
            (t["topic"], p["partition"]): p
            for t in described
            for p in t["partitions"]
            if t["error_code"] == 0
        }

    try:
        return asyncio.run(run())
    except (KafkaError, OSError):
        return None


def complete(bootstrap: str, topic: str, partitions: int) -> dict[tuple[str, int], Any] | None:
    """The topic's layout once the node asked knows every partition and its leader."""
    layout = describe(bootstrap, [topic])
    if layout is None or len(layout) != partitions:
        return None
    return layout if all(p["leader"] >= 0 for p in layout.values()) else None


def leaders_elsewhere(bootstrap: str, topic: str, dead: int, partitions: int) -> bool:
    layout = describe(bootstrap, [topic])
    return (
        layout is not None
        and len(layout) == partitions
        and all(p["leader"] not in (dead, -1) for p in layout.values())
    )


def all_in_sync(bootstrap: str, topics: list[str], at_least: int) -> bool:
    layout = describe(bootstrap, topics)
    return (
        layout is not None
        and len(layout) >= at_least
        and all(sorted(p["isr"]) == sorted(p["replicas"]) for p in layout.values())
    )


def min_insync_replicas(bootstrap: str, topic: str) -> str:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def run() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        finally:
            await admin.close()
        [(*_, configs)] = response.resources
        return str({c[0]: c[1] for c in configs}["min.insync.replicas"])

    return asyncio.run(run())


@dataclass
class Bounce:
    number: int
    deliveries: list[Delivery] = field(default_factory=list)
    killed: int = 0
    led: int = 0  # partitions of [requests] the killed broker led
    failover_s: float = 0.0  # from the kill until [requests] had leaders elsewhere
    back_in_sync_s: float = 0.0  # from the restart until every replica was in sync

    @property
    def accepted(self) -> list[str]:
        return [d.request_id for d in self.deliveries if d.request_id]

    @property
    def retried_503(self) -> int:
        return sum(d.answers.count(503) + d.answers.count(0) for d in self.deliveries)


def bodies(burst: int, now: int) -> list[dict[str, Any]]:
    limited = [
        seed_params(
            f"limited{person}@example.com",
            content=f"verse {burst}-{n} for limited person {person}",
            usage_limit=usage(3, now=now),
        )
        for person in range(LIMITED_PEOPLE)
        for n in range(2)
    ]
    unlimited = [
        seed_params(f"b{burst}-p{i}@example.com", content=f"verse for person {burst}-{i}")
        for i in range(UNLIMITED_PER_BURST)
    ]
    mixed = [*unlimited]
    for index, body in enumerate(limited):  # spread the limited ones through the burst
        mixed.insert(index * len(mixed) // len(limited), body)
    return mixed


def send(system: System, batch: list[dict[str, Any]], pool: concurrent.futures.Executor) -> Any:
    """Start sending ``batch`` at ``PACE`` per second; the futures of the deliveries."""
    started = time.monotonic()

    def paced(index: int, body: dict[str, Any]) -> Delivery:
        delay = started + index / PACE - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # load shape, not synchronization: the burst arrives over time
        return deliver(system, body)

    return [pool.submit(paced, i, body) for i, body in enumerate(batch)]


def test_no_acknowledged_webhook_is_lost_when_the_leader_is_killed(
    cluster: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    system = System(
        cluster,
        tmp_path_factory.mktemp("system"),
        replication_factor="3",
        min_insync_replicas="2",
        partitions=str(PARTITIONS),
    ).start()
    started = time.monotonic()
    try:
        settings = Settings(
            kafka_bootstrap=cluster.bootstrap, app_id=system.app_id, partitions=PARTITIONS
        )
        requests_topic = f"{system.app_id}-requests"
        ours = [f"{system.app_id}-{name}" for name in ("requests", "generate", "completions")]
        ours += [f"{system.app_id}-{name}" for name in ("lifecycle", "deadletter")]
        ours += [f"{system.app_id}-ledger-changelog", "__consumer_offsets"]
        layout = wait_until(
            lambda: complete(cluster.bootstrap, requests_topic, PARTITIONS), 30, what="layout"
        )
        assert {len(p["replicas"]) for p in layout.values()} == {3}
        # our six topics (and the consumer offsets, once the worker's group exists)
        in_sync_partitions = len(layout) * 6
        assert min_insync_replicas(cluster.bootstrap, requests_topic) == "2"

        now = now_s()
        bounces: list[Bounce] = []
        with concurrent.futures.ThreadPoolExecutor(SENDERS) as pool:
            for number in range(1, BOUNCES + 1):
                bounce = Bounce(number)
                bounces.append(bounce)
                futures = send(system, bodies(number, now), pool)
                # the burst is flowing: some webhooks were acknowledged already
                wait_until(lambda f=futures: sum(x.done() for x in f) >= 20, 60, what="first 202s")
                now_led = wait_until(
                    lambda: complete(cluster.bootstrap, requests_topic, PARTITIONS), 30
                )
                leaders = collections.Counter(p["leader"] for p in now_led.values())
                bounce.killed, bounce.led = min(leaders.items(), key=lambda kv: (-kv[1], kv[0]))
                killed_at = time.monotonic()
                assert cluster.kill(bounce.killed) is not None
                # a process starting now (a worker, an ingress) checks the topics: its admin
                # client asks a random broker, maybe the dead one, and must ask another
                for _ in range(6):
                    assert asyncio.run(ensure_topics(settings)) == []
                wait_until(
                    lambda k=bounce.killed: leaders_elsewhere(
                        cluster.bootstrap, requests_topic, k, len(layout)
                    ),
                    60,
                    0.2,
                    what=f"new leaders for the partitions of node {bounce.killed}",
                )
                bounce.failover_s = time.monotonic() - killed_at
                bounce.deliveries = [f.result(timeout=300) for f in futures]
                restarted_at = time.monotonic()
                cluster.restart(bounce.killed, timeout=120)
                wait_until(
                    lambda: all_in_sync(cluster.bootstrap, ours, in_sync_partitions),
                    120,
                    0.5,
                    what="every replica back in sync",
                )
                bounce.back_in_sync_s = time.monotonic() - restarted_at

        accepted = [rid for b in bounces for rid in b.accepted]
        person_of = {
            d.request_id: d.body["email"] for b in bounces for d in b.deliveries if d.request_id
        }

        def terminal_rows() -> dict[str, Any] | None:
            terminal = system.terminal_of(accepted)  # (one query: rows read once all are)
            if not all(terminal.get(rid) for rid in accepted):
                return None
            rows = {rid: system.projection.request(rid) for rid in accepted}
            done = {rid: row for rid, row in rows.items() if row is not None and row.terminal}
            return done if len(done) == len(accepted) else None

        try:
            rows = wait_until(terminal_rows, 300, 0.5, what="every accepted request terminal")
        except AssertionError:
            rows = {
                rid: row
                for rid in accepted
                if (row := system.projection.request(rid)) is not None and row.terminal
            }

        lifecycle = read_topic(cluster.bootstrap, f"{system.app_id}-lifecycle")
        terminal_events: dict[str, list[str]] = collections.defaultdict(list)
        for _, _, _, value in lifecycle:
            event = json.loads(value)
            if event["state"] in TERMINAL_STATES:
                terminal_events[event["request_id"]].append(event["state"])
        calls = system.talkable("GET", "/_calls")
        events = system.talkable("GET", "/_events")
        refused_duplicates = [c for c in calls if c.get("status") == 400]
        numbers = collections.Counter(e["event_number"] for e in events)

        print(f"\nreplication test on a 3-node Kafka {cluster.version} cluster (RF 3, min ISR 2):")
        for b in bounces:
            states = collections.Counter(rows[rid].state for rid in b.accepted if rid in rows)
            lost = [rid for rid in b.accepted if rid not in rows]
            repeated = sum(max(0, len(terminal_events[rid]) - 1) for rid in b.accepted)
            posted_twice = sum(numbers[f"generate_text_complete-{rid}"] > 1 for rid in b.accepted)
            print(
                f"  bounce {b.number}: killed node {b.killed} (leader of {b.led} of "
                f"{len(layout)} [requests] partitions), new leaders in {b.failover_s:.1f}s, "
                f"in sync again {b.back_in_sync_s:.1f}s after restart; "
                f"202s {len(b.accepted)}/{len(b.deliveries)}, 503s retried {b.retried_503}, "
                f"terminal {dict(states)}, lost {len(lost)}, duplicate terminal events "
                f"{repeated}, events posted twice {posted_twice}"
            )

        lost = [rid for rid in accepted if rid not in rows]
        assert lost == [], f"{len(lost)} acknowledged webhooks never ended: {lost[:5]}"
        assert (
            len(accepted)
            == len(set(accepted))
            == BOUNCES * (UNLIMITED_PER_BURST + 2 * LIMITED_PEOPLE)
        )
        # every request ended in exactly one terminal state (re-emissions are identical)
        assert {rid: set(terminal_events[rid]) for rid in accepted} == {
            rid: {rows[rid].state} for rid in accepted
        }
        published = collections.Counter(
            person_of[rid] for rid in accepted if rows[rid].state == "published"
        )
        limited = collections.Counter(
            person_of[rid] for rid in accepted if rows[rid].state == "limited"
        )
        for person in range(LIMITED_PEOPLE):
            email = f"limited{person}@example.com"
            assert (published[email], limited[email]) == (3, 3), email
        unlimited = [rid for rid in accepted if not person_of[rid].startswith("limited")]
        assert {rows[rid].state for rid in unlimited} == {"published"}
        # Talkable: one event per published request, never refused as a different duplicate
        assert refused_duplicates == []
        assert set(numbers.values()) == {1}
        assert set(numbers) == {
            f"generate_text_complete-{rid}" for rid in accepted if rows[rid].state == "published"
        }

        verified = talkstream(system.env, "replay", "--verify")
        print(f"  {verified}")
        assert verified.code == 0, verified
        assert "no differences" in verified.out
        print(f"  scenario took {time.monotonic() - started:.0f}s")
    except BaseException:
        print(system.log("worker")[-3000:])
        print(system.log("ingress")[-2000:])
        raise
    finally:
        system.stop()

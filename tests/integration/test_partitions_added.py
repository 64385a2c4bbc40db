"""Partitions added to a live deployment's [requests] (``kafka-topics.sh --alter``, which the
README forbids): the records talkstream writes there still go to the partitions the topics were
created with, where the ledger keeps each person's state, whatever the producer's metadata says
of the topic now. Before, Kafka's default partitioner over the new count sent executors' results
to the added partitions: requests stuck in `generating`, and each worker reading them stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
import zlib
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from faust.assignor.client_assignment import ClientMetadata

from models.params import parse_request
from streams.app import _topics
from streams.codecs import encode
from streams.errors import ConfigError, PartitionsAdded
from streams.faust_transport import App, Topic
from streams.ingress import KafkaSink, _received
from streams.kafka_options import IdempotentProducer, client_options
from streams.secrets import load_secret_box
from streams.settings import Settings
from streams.topics import ensure_topics, partition_of
from tests.integration.conftest import System, described_group, http, now_s, read_topic
from tests.support import seed_params, usage, wait_until


class Started:
    """faust's producer, started, over a real producer (as the worker's: idempotent)."""

    started = True

    def __init__(self, aiokafka: IdempotentProducer) -> None:
        self.aiokafka = aiokafka

    def _ensure_producer(self) -> IdempotentProducer:
        return self.aiokafka


async def _add_partitions(bootstrap: str, topic: str, total: int) -> None:
    """Partitions added to ``topic`` until it has ``total``, as an operator's admin tool adds
    them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()


def test_records_of_requests_stay_on_the_partitions_the_topics_were_created_with(kafka) -> None:
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tadded{uuid.uuid4().hex[:8]}")
    requests_name = settings.topic("requests")
    people = [f"acme:{n}@example.com".encode() for n in range(40)]

    async def scenario() -> list[int]:
        await ensure_topics(settings)  # 8 partitions, as configured
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({requests_name: NewPartitions(total_count=10)})
        finally:
            await admin.close()
        producer = IdempotentProducer(**client_options(settings), acks="all")
        await producer.start()
        # no ledger changelog to compare with: the ingress writes (the 503 is another test's)
        sink = KafkaSink(client_options(settings), partitions=settings.partitions)
        try:
            known, deadline = None, time.monotonic() + 30
            while len(known or ()) != 10 and time.monotonic() < deadline:  # until the broker says
                await producer.client.force_metadata_update()
                known = producer.client.cluster.partitions_for_topic(requests_name)
            app: Any = App(
                settings.app_id,
                broker=f"kafka://{kafka.bootstrap}",
                autodiscover=False,
                Topic=Topic,
            )
            app.producer = Started(producer)
            topics = _topics(app, settings)
            for person in people:  # as an executor reports a call's result
                await (await topics.requests.send(key=person, value=b"{}"))
            for person in people:  # as the ingress writes a webhook
                await sink.send(requests_name, person, b"{}")
            return sorted(known or ())
        finally:
            await sink.close()
            await producer.stop()

    known = asyncio.run(scenario())
    assert known == list(range(10))  # the producer knew of the added partitions
    written = {
        (key, partition) for partition, _, key, _ in read_topic(kafka.bootstrap, requests_name)
    }
    assert written == {(person, partition_of(8)(person)) for person in people}
    assert all(partition < 8 for _, partition in written)


def test_partitions_added_to_the_ledgers_changelog_are_named_as_such(kafka) -> None:
    """Partitions added to the ledger's changelog instead of [requests]: the ingress refused
    webhooks saying "[requests] has 8 partitions but the ledger's changelog 10: a webhook could
    land where no ledger reads it", the other way round; a start is refused naming the
    changelog as the topic that grew, and why that cannot work."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tgrown{uuid.uuid4().hex[:8]}")
    requests_name, changelog = settings.topic("requests"), settings.topic("ledger-changelog")
    sink = KafkaSink(
        client_options(settings), ledger_changelog=changelog, partitions=settings.partitions
    )

    async def scenario() -> tuple[str | None, PartitionsAdded, ConfigError]:
        await ensure_topics(settings)
        await sink.send(requests_name, b"acme:ada@example.com", b"{}")  # the counts agree
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({changelog: NewPartitions(total_count=10)})
        finally:
            await admin.close()
        try:
            said, deadline = None, time.monotonic() + 30
            while said is None and time.monotonic() < deadline:  # until the broker says so
                said = await sink.ready(requests_name, 10)
            with pytest.raises(PartitionsAdded) as refused:
                await sink.send(requests_name, b"acme:ada@example.com", b"{}")
        finally:
            await sink.close()
        with pytest.raises(ConfigError) as start:
            await ensure_topics(settings)
        return said, refused.value, start.value

    said, refused, start = asyncio.run(scenario())
    cause = (
        f"the ledger's {changelog} has 10 partitions but {requests_name} 8: a webhook could "
        f"wait in Kafka, undecided, on a worker that holds its partition of {requests_name} "
        "without its person's ledger state (partitions added to the ledger's changelog, which "
        f"faust then assigns apart from {requests_name}; to change the count, deploy under a "
        "new TALKSTREAM_APP_ID)"
    )
    assert said == cause
    assert refused.cause == cause
    assert str(refused) == f"{cause}; nothing was sent"
    assert str(start).startswith(
        f"TALKSTREAM_PARTITIONS is 8, as the topics were created ({settings.app_id}-completions, "
    )
    assert f"but partitions were added since to {changelog} (10 partitions). The ledger's " in (
        str(start)
    )
    assert len(read_topic(kafka.bootstrap, requests_name)) == 1  # the one before, no other


def _status(system: System, name: str) -> tuple[int, str]:
    try:
        status, body = http("GET", f"{system.worker_url(name)}/readyz", timeout=2)
    except OSError:
        return 0, ""
    return status, body.get("status", "") if isinstance(body, dict) else ""


def _group(bootstrap: str, group: str) -> tuple[str, dict[str, dict[str, set[int]]]]:
    """The state of consumer group ``group`` as its coordinator says it, and what faust's
    assignor gave each member (by worker name) to hold actively: partitions by topic."""

    state, described = described_group(bootstrap, group)
    members: dict[str, dict[str, set[int]]] = {}
    if state != "Stable":  # the assignments are said of a stable group only
        return state, members
    for member in described:
        given = ConsumerProtocolMemberAssignment.decode(member[4])
        faust_said = ClientMetadata.loads(zlib.decompress(given.user_data))
        members[str(member[0]).split("@")[0]] = {
            topic: set(partitions) for topic, partitions in faust_said.assignment.actives.items()
        }
    return state, members


def _stable(bootstrap: str, group: str, members: int) -> dict[str, dict[str, set[int]]] | None:
    state, given = _group(bootstrap, group)
    return given if state == "Stable" and len(given) == members else None


def _written(system: System, bodies: list[dict[str, Any]]) -> list[str]:
    """``bodies`` written to [requests] as the ingress writes a webhook (its record, sealed
    keys and all, to the person's partition among the count the topics were created with), by
    a writer that does not look at the changelog's count: webhooks an ingress accepted in the
    5 s before it saw the partitions added, or that waited in Kafka for a worker meanwhile."""
    settings = Settings(
        kafka_bootstrap=system.kafka.bootstrap,
        app_id=system.app_id,
        partitions=4,
        secret_keys=system.env["TALKSTREAM_SECRET_KEYS"],
    )
    secrets = load_secret_box(settings)

    async def write() -> list[str]:
        sink = KafkaSink(client_options(settings), partitions=settings.partitions)
        ids = []
        try:
            for body in bodies:
                params = parse_request("application/json", json.dumps(body).encode())
                received = _received(params, secrets, int(time.time() * 1000))
                await sink.send(
                    settings.topic("requests"), received.person.encode(), encode(received)
                )
                ids.append(received.request_id)
        finally:
            await sink.close()
        return ids

    return asyncio.run(write())


def test_a_worker_never_decides_a_person_without_their_ledger_state(kafka, tmp_path) -> None:
    """Partitions added to [requests] of a deployment of three workers: faust's assignor pairs
    [requests] partition N with the ledger changelog's partition N only while the two counts
    agree, so once a worker leaves, one of the others was given [requests] partition 2 while
    the third holds changelog partition 2, its people's ledger state. It decided their records
    all the same (and said it was ready), from whatever its table had of partition 2: at best
    the standby copy faust keeps there (``table_standby_replicas``), read behind the
    changelog; none where the standby is elsewhere or not caught up yet: a usage count seeded
    again from Talkable's snapshot, a limit exceeded. Now it decides none of them while it
    holds them so (ERROR, /readyz 503), the others go on, and once a worker holds both they
    are decided with the person's state: of a limit of 3 with 2 used, 1 more admitted, 2
    limited, each once."""
    # the projector in each worker: a projector process started after the partitions were
    # added would not project (refused, it asks again:
    # test_a_projector_child_started_after_partitions_were_added_says_so_once)
    # a worker stopped leaves its partitions to the others once its session times out (a
    # static member of the group): 10 s, not the default 30 s, for each of the two stops
    system = System(kafka, tmp_path, projector="worker", session_timeout_seconds="10")
    # faust's setting: the workers see the partitions added within a second, not 5 minutes
    system.env["CONSUMER_METADATA_MAX_AGE_MS"] = "1000"
    workers = ("worker", "worker2", "worker3")
    system.start()
    try:
        system.wait_ready("worker")
        for name in workers[1:]:  # one after the other: faust's sticky assignor's layout
            system.start_worker(name)
            system.wait_ready(name)
        to_partition = partition_of(4)
        people: dict[int, str] = {}
        for n in range(1000):
            email = f"apart{n}@example.com"
            people.setdefault(to_partition(f"test-site:{email}".encode()), email)
            if len(people) == 4:
                break
        now = now_s()

        def webhook(email: str, i: int) -> dict[str, Any]:  # Talkable's snapshot: none used
            return seed_params(email, content=f"verse {i}", usage_limit=usage(3, now=now))

        first = []
        for email in people.values():
            for i in range(2):
                status, body = system.post(webhook(email, i))
                assert status == 202, body
                first.append(body["request_id"])
        assert {r.state for r in system.wait_terminal(first).values()} == {"published"}

        asyncio.run(_add_partitions(kafka.bootstrap, f"{system.app_id}-requests", 6))
        requests, changelog = f"{system.app_id}-requests", f"{system.app_id}-ledger-changelog"

        def taken(members: int) -> dict[str, dict[str, set[int]]] | None:
            given = _stable(kafka.bootstrap, system.app_id, members)
            held = set().union(*(g.get(requests, set()) for g in given.values())) if given else ()
            return given if held == set(range(6)) else None

        wait_until(lambda: taken(3), 60, what="the partitions added assigned")

        def stop(name: str) -> None:
            proc = system.procs.pop(name)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

        stop("worker")  # it leaves the group
        given = wait_until(lambda: taken(2), 60, what="the rebalance")
        # [requests] partitions a worker holds without the changelog's of the same number
        apart = {
            partition: name
            for name, held in given.items()
            for partition in held.get(requests, set()) - held.get(changelog, set())
            if partition < 4
        }
        assert len(set(apart.values())) == 1, given  # faust's sticky assignor's layout
        [unpaired] = set(apart.values())
        later = {
            email: _written(system, [webhook(email, i) for i in range(2, 5)])
            for email in people.values()
        }
        paired = [rid for p, email in people.items() if p not in apart for rid in later[email]]
        system.wait_terminal(paired)
        waiting = [rid for p in apart for rid in later[people[p]]]
        decided = {rid: row.state for rid in waiting if (row := system.projection.request(rid))}
        assert decided == {}, f"decided by {unpaired}, which holds none of their ledger state"
        status, said = _status(system, unpaired)
        stop(unpaired)  # the one left takes them all, with their state
        rows = system.wait_terminal([rid for ids in later.values() for rid in ids])
        for email, ids in later.items():
            states = sorted(rows[rid].state for rid in ids)
            assert states == ["limited", "limited", "published"], (email, states)
        events = system.talkable("GET", "/_events")
        for email in people.values():  # each admitted request published once, no other
            assert len([e for e in events if e["email"] == email]) == 3, email
        assert status == 503
        numbers = ", ".join(str(p) for p, name in sorted(apart.items()) if name == unpaired)
        assert f"this worker holds {requests} partition {numbers} without the ledger's " in said
        assert "assigned apart" in (tmp_path / f"{unpaired}.log").read_text(errors="replace")
    finally:
        system.stop()


def _children(pid: int) -> list[int]:
    """The worker's projector children (not its executors', ``EXECUTORS=process``)."""
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        pids = [int(child) for child in children.read().split()]
    return [child for child in pids if _command(child)[-1:] == [b"projector"]]


def _command(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().split(b"\0")[:-1]
    except FileNotFoundError:  # ended meanwhile
        return []


def test_a_projector_child_started_after_partitions_were_added_says_so_once(
    kafka, tmp_path
) -> None:
    """Partitions added under a running worker (``PROJECTOR=process``), then its projector
    child exits (a crash; killed here): the child the worker starts again finds the topics
    with another count than it is set for. It exited on it, at every start again, the worker
    saying "the projector process exited ... starting it again" and the child its refusal,
    a minute apart at most for as long as the worker ran. It now says it once (an ERROR naming
    what to do) and stays up, asking again less and less often, an INFO line each time."""
    system = System(kafka, tmp_path)
    system.start()
    try:
        system.wait_ready("worker")
        worker = system.procs["worker"].pid
        wait_until(lambda: _children(worker), 30, what="the projector child")
        [child] = _children(worker)

        asyncio.run(_add_partitions(kafka.bootstrap, f"{system.app_id}-requests", 6))
        os.kill(child, signal.SIGKILL)  # a crash

        log = tmp_path / "worker.log"

        def asked_three_times() -> bool:  # after 1 s, then 2 s, then 4 s
            return "projector asks Kafka about the topics again in 4 s" in log.read_text(
                errors="replace"
            )

        wait_until(asked_three_times, 90, what="the projector child refused 3 times")
        said = log.read_text(errors="replace")
        refusals = said.count("projector cannot start: TALKSTREAM_PARTITIONS is 4")
        assert refusals == 1, said[-4000:]
        assert f"partitions were added since to {system.app_id}-requests (6 partitions)" in said
        assert "TALKSTREAM_APP_ID of its own" in said
        assert said.count("projector still refused by the deployment's topics") == 2, said[-4000:]
        assert said.count("the projector process exited") == 1, said[-4000:]  # the kill's
        [again] = _children(worker)  # the one started after the kill, still up
        assert again != child
    finally:
        system.stop()

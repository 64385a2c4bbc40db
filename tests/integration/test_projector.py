"""The projector's own consumer on the real broker: it projects every lifecycle record, and a
partition resumes from the rows the projection holds, not from the group's committed offset."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.agents.projector import Projector, ProjectorConfig
from streams.codecs import encode
from streams.dev.kafka import EmbeddedKafka
from streams.projection.store import ProjectionStore, Sourced
from streams.runtime import DeadLetters, SystemClock
from tests.integration.conftest import create_topic
from tests.projection_support import T0_MS, Log, snapshot

PARTITIONS = 2


class _Letters:
    """The dead-letter topic's stand-in for this test: none are expected."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> None:
        self.sent.append((key, value))


async def _produce(bootstrap: str, records: list[Sourced]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in records:  # in order, to the partition the log gave it: the same offsets
            await producer.send_and_wait(
                r.topic, encode(r.event), key=r.event.request_id.encode(), partition=r.partition
            )
    finally:
        await producer.stop()


async def _project_until(
    bootstrap: str, topic: str, store: ProjectionStore, done: Callable[[Projector], bool]
) -> _Letters:
    from prometheus_client import CollectorRegistry, Counter

    letters = _Letters()
    counter = Counter("letters", "dead letters", ["topic"], registry=CollectorRegistry())
    projector = Projector(
        ProjectorConfig(
            topic=topic,
            group=f"{topic}-projector",
            instance="test-projector",
            consumer_options={"bootstrap_servers": bootstrap},
        ),
        store,
        DeadLetters(letters, counter, SystemClock()),
    )
    task = asyncio.create_task(projector.run())
    try:
        async with asyncio.timeout(60):
            while not await asyncio.to_thread(done, projector):
                if task.done():
                    task.result()  # its failure, not a timeout
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return letters


def _log(people: int, *, first: int = 0) -> Log:
    log = Log(partitions=PARTITIONS)
    for i in range(first, first + people):
        log.full(f"req-{i:03d}", email=f"p{i}@example.com", at_ms=T0_MS + i * 1000)
    return log


def holds(store: ProjectionStore, count: int) -> Callable[[Projector], bool]:
    return lambda _: store.counts()[1] >= count


def _on(topic: str, records: list[Sourced]) -> list[Sourced]:
    return [Sourced(topic, r.partition, r.offset, r.event) for r in records]


def test_a_restored_projection_is_brought_up_to_date_from_the_log(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """An operator restores last night's database: its rows stop before the group's committed
    offsets. The projector re-reads from what the rows hold, so nothing committed since is lost."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    log = _log(24)
    records = _on(topic, log.records)
    half = len(records) // 2  # the log's records, in their order of production
    expected_store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'expected.sqlite3'}")
    expected_store.apply(records)
    expected = snapshot(expected_store)

    database = tmp_path / "projection.sqlite3"
    url = f"sqlite:///{database}"

    # the first half projected; a backup of the database taken then
    asyncio.run(_produce(kafka.bootstrap, records[:half]))
    store = ProjectionStore.from_url(url)
    letters = asyncio.run(_project_until(kafka.bootstrap, topic, store, holds(store, half)))
    store.close()
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(database, backup)

    # the second half projected and committed
    asyncio.run(_produce(kafka.bootstrap, records[half:]))
    store = ProjectionStore.from_url(url)
    asyncio.run(_project_until(kafka.bootstrap, topic, store, holds(store, len(records))))
    assert snapshot(store) == expected
    store.close()

    # the backup restored: the group's commit is past the rows it lacks
    for leftover in tmp_path.glob("projection.sqlite3*"):
        leftover.unlink()
    shutil.copy(backup, database)
    store = ProjectionStore.from_url(url)
    assert store.counts()[1] == half
    asyncio.run(_project_until(kafka.bootstrap, topic, store, holds(store, len(records))))
    assert snapshot(store) == expected
    assert letters.sent == []
    store.close()


def test_every_record_is_projected_once_across_restarts(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """Stopped and started between batches, the projector ends with each transition once."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'projection.sqlite3'}")
    produced: list[Sourced] = []
    log = Log(partitions=PARTITIONS)
    for round_ in range(3):
        before = len(log.records)
        for i in range(round_ * 10, round_ * 10 + 10):
            log.full(f"req-{i:03d}", email=f"p{i}@example.com", at_ms=T0_MS + i * 1000)
        fresh = _on(topic, log.records[before:])
        produced += fresh
        asyncio.run(_produce(kafka.bootstrap, fresh))
        asyncio.run(_project_until(kafka.bootstrap, topic, store, holds(store, len(produced))))
    requests, transitions = store.counts()
    assert (requests, transitions) == (30, len(produced))
    offsets: dict[Any, int] = {}
    for row in store.all_transitions():
        offsets[(row.partition, row.offset)] = offsets.get((row.partition, row.offset), 0) + 1
    assert set(offsets.values()) == {1}
    store.close()


def test_an_empty_database_starts_at_the_groups_commit_and_says_its_lag(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """Its database replaced by an empty one (the group's commit kept), the projector starts
    where the group left off (``talkstream replay`` is what rebuilds the past), and its lag says
    0, not the whole topic."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    records = _on(topic, _log(6).records)
    asyncio.run(_produce(kafka.bootstrap, records))
    first = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'first.sqlite3'}")
    asyncio.run(_project_until(kafka.bootstrap, topic, first, holds(first, len(records))))
    first.close()

    def caught_up(projector: Projector) -> bool:
        lags = projector.lag()
        return len(lags) == PARTITIONS and not any(lags.values())

    empty = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    asyncio.run(_project_until(kafka.bootstrap, topic, empty, caught_up))
    assert empty.counts() == (0, 0)
    empty.close()

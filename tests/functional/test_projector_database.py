"""The projector waiting on its database says so: a database that does not answer (a server
that hangs, a network that drops everything) left the projector's writes waiting with no
error, no log line and its ``/readyz`` ready, for as long as it lasted.

The first thing a projector asks its database is who it is (``database_identity``: a
PostgreSQL server's own id, before the projector joins its group; its schema is migrated only
once the group has given it partitions), so these stores hang, or are out of reach, there:
the same wait (``Projector._until_done``) as every write's."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from streams.agents import projector as projector_module
from streams.agents.projector import Projector, ProjectorConfig
from streams.observability import ready
from streams.projection.engine import make_engine
from streams.projection.store import ProjectionStore
from tests.functional.test_worker_http import until


class _HungDatabase(ProjectionStore):
    """A database that says who it is only once released."""

    def __init__(self) -> None:
        super().__init__(make_engine("sqlite://"), migrate_schema=False)
        self.released = threading.Event()

    def identity(self, engine: Any) -> str:
        self.released.wait(30)
        return "hung"


def without_kafka(store: ProjectionStore) -> Projector:
    """A projector of ``store`` whose consumer is never reached (the database fails first)."""
    config = ProjectorConfig(
        topic="t-lifecycle",
        group="t-projector",
        instance="t",
        consumer_options={"bootstrap_servers": "127.0.0.1:1"},
    )
    return Projector(config, store, dead_letters=None)  # type: ignore[arg-type]


async def test_a_database_that_does_not_answer_is_said_until_it_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(projector_module, "DATABASE_SILENCE_SECONDS", 1.0, raising=False)
    store = _HungDatabase()
    monkeypatch.setattr(projector_module, "database_identity", store.identity)
    projector = without_kafka(store)
    silent = "database not answering: projection database identity has waited 1 s"
    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        running = asyncio.create_task(projector.run())
        try:
            await until(lambda: projector.database_error is not None)
            assert ready(None, [projector]) == (False, silent)
            assert "projection database identity has waited 1 s for the database" in caplog.text
            store.released.set()
            await until(lambda: projector.database_error is None)
            assert "projection database identity answered after more than 1 s" in caplog.text
            assert projector.database == "hung"
        finally:
            store.released.set()
            await _stopped(running, store)


async def _stopped(running: asyncio.Task[Any], store: ProjectionStore) -> None:
    """The projector ``running`` stopped, and its store closed once the threads it left
    running are done (a cancel does not end its SQL thread: a store closed under one, an
    in-memory SQLite's one connection, crashed the process with a segmentation fault)."""
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_default_executor()
    store.close()


class _DownDatabase(ProjectionStore):
    """A database out of reach (each try refused at once) until it is back."""

    def __init__(self) -> None:
        super().__init__(make_engine("sqlite://"), migrate_schema=False)
        self.back = threading.Event()
        self.tries = 0

    def identity(self, engine: Any) -> str:
        self.tries += 1
        if not self.back.is_set():
            raise OperationalError("connect", {}, ConnectionRefusedError("Connection refused"))
        return "back"


async def test_a_database_back_after_a_long_outage_is_written_to_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pause between tries grows from half a second, so a long outage is not tried at
    every moment, up to 5 s: once the database is back, the projector goes on within that. It
    grew to 30 s: six failed tries in a row (15.5 s of outage) and a database back just after
    waited 16 s more, and a longer outage up to 30."""
    store = _DownDatabase()
    monkeypatch.setattr(projector_module, "database_identity", store.identity)
    projector = without_kafka(store)
    running = asyncio.create_task(projector.run())
    try:
        # 0.5 + 1 + 2 + 4 + 8 s of pauses: the sixth try, and the pause after it at its cap
        await until(lambda: store.tries >= 6, timeout=40)
        assert projector.database_error is not None
        assert "database unreachable" in projector.database_error
        store.back.set()
        back = time.monotonic()
        await until(lambda: projector.database_error is None, timeout=40)
        waited = time.monotonic() - back
        # the cap (5 s) and a margin for a loaded machine; the old cap (30 s) waited ~16 s here
        assert waited <= 5 + 3.0, f"written to {waited:.1f}s after the database was back"
        assert projector.database == "back"
    finally:
        store.back.set()
        await _stopped(running, store)


async def test_a_projector_stopped_while_its_consumer_starts_closes_it() -> None:
    """Kafka out of reach when the database is back: a stop (a cancel) or a failure while the
    consumer was starting left it unclosed (asyncio's "Unclosed AIOKafkaConsumer" ERROR, at
    whatever moment the collector found it)."""
    store = ProjectionStore(make_engine("sqlite://"), migrate_schema=False)
    try:
        assert (await stopped_while_starting(without_kafka(store)))._closed
    finally:
        store.close()


async def test_an_executor_stopped_while_its_consumer_starts_closes_it() -> None:
    """The executors' consumers, as the projector's."""
    from streams.agents.executors import Executor, ExecutorConfig
    from streams.upstream.pacer import PacerConfig
    from streams.upstream.scheduler import Scheduler

    config = ExecutorConfig(
        name="generator",
        topic="t-generate",
        group="t-generator",
        instance="t",
        consumer_options={"bootstrap_servers": "127.0.0.1:1"},
    )
    scheduler = Scheduler(
        "generator", max_in_flight=1, max_wait_s=1, refusal_s=1, pacer_config=PacerConfig()
    )
    executor = Executor(config, scheduler, None, topics=None, dead_letters=None, clock=None)  # type: ignore[arg-type]
    assert (await stopped_while_starting(executor))._closed


async def stopped_while_starting(agent: Any) -> Any:
    """``agent`` run, and cancelled once it has made its consumer (Kafka out of reach: it is
    starting, or failed to); the consumer."""
    running = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.consumer is not None or running.done())
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert agent.consumer is not None
    return agent.consumer


class _AssignedConsumer:
    """What the projector's rebalance listener asks of its consumer, and every commit."""

    def __init__(self, assigned: set[Any]) -> None:
        self.assigned = assigned
        self.commits: list[dict[Any, int]] = []
        self.sought: dict[Any, int] = {}

    def assignment(self) -> set[Any]:
        return self.assigned

    def pause(self, *partitions: Any) -> None:
        pass

    def resume(self, *partitions: Any) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.sought[tp] = offset

    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))


async def test_the_rebalance_listener_commits_nothing_and_the_idle_projector_does() -> None:
    """Where a partition resumes is committed once nothing came for a while, never by the
    rebalance listener: it runs before the group's other members have their assignment, a
    commit then is refused as a rebalance in progress, and aiokafka has the member rejoin.
    Committed there, each member's commit rebalanced the group again (a projector group
    that never settled: a crash test's requests never reached the projection)."""
    from aiokafka import TopicPartition

    from tests.projection_support import Log

    store = ProjectionStore.from_url("sqlite://")
    log = Log(partitions=2)
    log.full("req-1", email="p@example.com", at_ms=1_700_000_000_000)
    store.apply(log.records)
    projector = without_kafka(store)
    projector._projected = projector._migrated = True  # joined, on its group's database
    assigned = {TopicPartition(r.topic, r.partition) for r in log.records}
    consumer = _AssignedConsumer(assigned | {TopicPartition(log.records[0].topic, 9)})
    projector.consumer = consumer  # type: ignore[assignment]

    await projector.resume(consumer.assigned)
    assert consumer.commits == []
    ends = {
        TopicPartition(r.topic, r.partition): max(
            x.offset + 1 for x in log.records if x.partition == r.partition
        )
        for r in log.records
    }
    assert {tp: consumer.sought[tp] for tp in ends} == ends

    await projector._commit_idle(consumer)  # type: ignore[arg-type]
    assert consumer.commits == [{**ends, TopicPartition(log.records[0].topic, 9): 0}]
    await projector._commit_idle(consumer)  # type: ignore[arg-type]
    assert len(consumer.commits) == 1  # the group's commit says it now
    store.close()

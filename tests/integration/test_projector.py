"""The projector's own consumer on the real broker: it projects every lifecycle record, and a
partition resumes where the projection says it has read to, not from the group's committed
offset; a database that holds nothing of a partition is filled from its earliest offset."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from sqlalchemy import delete, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from streams.agents.projector import Projector, ProjectorConfig
from streams.codecs import encode
from streams.dev.kafka import EmbeddedKafka
from streams.projection import migrate
from streams.projection.engine import make_engine
from streams.projection.rows import Sourced
from streams.projection.store import ProjectionStore
from streams.projection.tables import Base
from streams.runtime import DeadLetters, SystemClock
from tests.integration.conftest import (
    PROJECTOR_START_SECONDS,
    System,
    create_topic,
    http,
    projection_made,
)
from tests.postgres import (  # noqa: F401 (fixtures)
    database_url,
    fresh_postgres_database,
    postgres_server,
)
from tests.projection_support import T0_MS, Log, snapshot
from tests.support import free_port, seed_params, wait_until

PARTITIONS = 2


class _Letters:
    """The dead-letter topic's stand-in for these tests: what was sent to it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        delivery = asyncio.get_running_loop().create_future()  # acknowledged at once
        delivery.set_result(None)
        return delivery


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


async def _produce_poison(bootstrap: str, topic: str, *, partition: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(count):
            await producer.send_and_wait(topic, b"not a lifecycle event", partition=partition)
    finally:
        await producer.stop()


class _Running:
    """A projector running as a task, and a way to wait for what it should do."""

    def __init__(self, projector: Projector, task: asyncio.Task[None], letters: _Letters) -> None:
        self.projector, self.task, self.letters = projector, task, letters

    async def until(self, done: Callable[[Projector], bool], timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(done, self.projector):
                if self.task.done():
                    self.task.result()  # its failure, not a timeout
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _projecting(
    bootstrap: str, topic: str, store: ProjectionStore
) -> AsyncIterator[_Running]:
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
        yield _Running(projector, task, letters)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _project_until(
    bootstrap: str, topic: str, store: ProjectionStore, done: Callable[[Projector], bool]
) -> _Letters:
    async with _projecting(bootstrap, topic, store) as running:
        await running.until(done)
    return running.letters


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


Backup = dict[str, list[dict[str, Any]]]


def _backup(store: ProjectionStore) -> Backup:
    """Every row of the projection's tables, as a dump holds them."""
    with store.engine.connect() as connection:
        return {
            name: [dict(row._mapping) for row in connection.execute(select(table))]
            for name, table in Base.metadata.tables.items()
        }


def _restore(store: ProjectionStore, backup: Backup) -> None:
    """The tables' rows replaced by the backup's in one transaction (as ``pg_restore --clean``
    or a copied SQLite file leave them)."""
    with store.engine.begin() as connection:
        for name, table in Base.metadata.tables.items():
            connection.execute(delete(table))
            if backup[name]:
                connection.execute(insert(table), backup[name])


def _a_log_and_its_projection(
    kafka: EmbeddedKafka, url: str, people: int
) -> tuple[str, list[Any], Any, ProjectionStore]:
    """A new lifecycle topic, the records of ``people``'s requests on it (not produced yet),
    the projection they make (a snapshot), and the store under test at ``url``."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    records = _on(topic, _log(people).records)
    expected_store = ProjectionStore.from_url("sqlite://")
    expected_store.apply(records)
    return topic, records, snapshot(expected_store), ProjectionStore.from_url(url)


def test_a_backup_restored_under_a_running_projector_is_brought_up_to_date_from_the_log(
    kafka: EmbeddedKafka,
    database_url: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator restores last night's dump while the projector runs (it is not restarted,
    so it is not assigned its partitions again): at its next batch it finds the database
    behind what it wrote, says so, and fills what the database lacks from the log, where it
    went on from its own position and left the records between the backup and the restore
    out for good."""
    topic, records, expected, store = _a_log_and_its_projection(kafka, database_url, 30)
    first, second = len(records) // 3, 2 * len(records) // 3

    async def scenario() -> None:
        async with _projecting(kafka.bootstrap, topic, store) as running:
            await _produce(kafka.bootstrap, records[:first])
            await running.until(holds(store, first))
            backup = _backup(store)
            await _produce(kafka.bootstrap, records[first:second])
            await running.until(holds(store, second))
            _restore(store, backup)
            assert store.counts()[1] == first
            await _produce(kafka.bootstrap, records[second:])
            await running.until(holds(store, len(records)), timeout=30)

    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        asyncio.run(scenario())
    assert snapshot(store) == expected
    assert "the projection holds less than this projector wrote into it" in caplog.text
    store.close()


def test_a_database_made_again_under_a_running_projector_is_migrated_and_filled(
    kafka: EmbeddedKafka,
    database_url: str,  # noqa: F811
) -> None:
    """An operator drops the database and creates it again, empty, while the projector runs:
    its writes failed on the missing tables until it was restarted; now it migrates the schema
    again and fills the database from the log."""
    topic, records, expected, store = _a_log_and_its_projection(kafka, database_url, 20)
    half = len(records) // 2

    async def scenario() -> None:
        async with _projecting(kafka.bootstrap, topic, store) as running:
            await _produce(kafka.bootstrap, records[:half])
            await running.until(holds(store, half))
            Base.metadata.drop_all(store.engine)  # a database made again: no tables at all
            with store.engine.begin() as connection:
                connection.execute(text(f"DROP TABLE {migrate.VERSION_TABLE}"))
            await _produce(kafka.bootstrap, records[half:])
            await running.until(lambda _: _counts(store) == len(records), timeout=60)

    asyncio.run(scenario())
    assert snapshot(store) == expected
    store.close()


def _counts(store: ProjectionStore) -> int:
    """The store's transitions; 0 while it has no tables."""
    with contextlib.suppress(SQLAlchemyError):
        return store.counts()[1]
    return 0


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


def _statistics_rows(store: ProjectionStore) -> int:
    """How many requests the SQLite file's statistics say there are (0: none gathered)."""
    with store.engine.connect() as connection:
        if not connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).first():
            return 0
        stats = connection.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'requests'")
        return max(int(stat.split()[0]) for (stat,) in stats)


def _projected_and_analyzed(
    store: ProjectionStore, transitions: int, rows: int
) -> Callable[[Projector], bool]:
    return lambda p: holds(store, transitions)(p) and _statistics_rows(store) >= rows


def test_the_projector_gathers_sqlite_statistics_as_the_projection_grows(
    kafka: EmbeddedKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite projection the projector wrote had no planner statistics, however large it
    grew (nothing ran ANALYZE): the console's searches by a group of states were 30 times
    slower at 1,000,000 requests. Here the thresholds are small and checked at every batch."""
    import streams.agents.projector as projector_module
    import streams.projection.store as store_module

    monkeypatch.setattr(store_module, "STATISTICS_FIRST_ROWS", 10)
    monkeypatch.setattr(projector_module, "STATISTICS_CHECK_SECONDS", 0.0)
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'projection.sqlite3'}")
    log = Log(partitions=PARTITIONS)
    for first, people, gathered in ((0, 12, 10), (12, 30, 20)):
        before = len(log.records)
        for i in range(first, people):
            log.full(f"req-{i:03d}", email=f"p{i}@example.com", at_ms=T0_MS + i * 1000)
        asyncio.run(_produce(kafka.bootstrap, _on(topic, log.records[before:])))
        done = _projected_and_analyzed(store, len(log.records), gathered)
        asyncio.run(_project_until(kafka.bootstrap, topic, store, done))
        assert store.counts()[0] == people
    store.close()


def _caught_up(projector: Projector) -> bool:
    lags = projector.lag()
    return len(lags) == PARTITIONS and not any(lags.values())


def test_an_empty_database_is_filled_from_the_earliest_offsets_and_says_its_lag(
    kafka: EmbeddedKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new, empty database under the same group (its commits at the end of the topic): the
    projector fills it from the earliest offsets, says so, and its lag ends at 0."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    records = _on(topic, _log(6).records)
    asyncio.run(_produce(kafka.bootstrap, records))
    first = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'first.sqlite3'}")
    asyncio.run(_project_until(kafka.bootstrap, topic, first, holds(first, len(records))))
    expected = snapshot(first)
    first.close()

    empty = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        asyncio.run(
            _project_until(
                kafka.bootstrap,
                topic,
                empty,
                lambda p: holds(empty, len(records))(p) and _caught_up(p),
            )
        )
    assert snapshot(empty) == expected
    assert f"projection empty: filling from the earliest offsets of {topic}" in caplog.text
    empty.close()


def test_a_partly_filled_database_fills_the_partitions_it_lacks(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A fill stopped after its first batch, which held one partition's records: the group's
    commit of the other partition is another database's, so that partition, of which this
    database holds nothing, is read from its earliest offset too."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    records = _on(topic, _log(8).records)
    assert {r.partition for r in records} == set(range(PARTITIONS))
    asyncio.run(_produce(kafka.bootstrap, records))
    first = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'first.sqlite3'}")
    asyncio.run(_project_until(kafka.bootstrap, topic, first, holds(first, len(records))))
    expected = snapshot(first)
    first.close()

    partly = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'partly.sqlite3'}")
    partly.apply([r for r in records if r.partition == 0])
    asyncio.run(_project_until(kafka.bootstrap, topic, partly, holds(partly, len(records))))
    assert snapshot(partly) == expected
    partly.close()


def test_a_partition_whose_records_were_all_dead_lettered_is_not_read_again(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """Records of one partition that do not decode are dead-lettered once: the projection
    records how far it read, so a restart does not read (and dead-letter) them again."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    records = [r for r in _on(topic, _log(8).records) if r.partition == 0]
    asyncio.run(_produce(kafka.bootstrap, records))
    asyncio.run(_produce_poison(kafka.bootstrap, topic, partition=1, count=2))
    store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'projection.sqlite3'}")
    first = asyncio.run(
        _project_until(
            kafka.bootstrap, topic, store, lambda p: holds(store, len(records))(p) and _caught_up(p)
        )
    )
    assert len(first.sent) == 2
    assert store.next_offset(topic, 1) == 2

    again = asyncio.run(_project_until(kafka.bootstrap, topic, store, _caught_up))
    assert again.sent == []
    assert store.counts()[1] == len(records)
    store.close()


async def _until_committed(bootstrap: str, running: _Running, offsets: dict[int, int]) -> None:
    """Until the group of the running projector has committed ``offsets`` (partition → next
    offset) on the topic it reads."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed: dict[int, int] = {}
        async with asyncio.timeout(30):
            while committed != offsets:
                if running.task.done():
                    running.task.result()  # its failure, not a timeout
                # (the group is known once a member has joined it)
                with contextlib.suppress(GroupCoordinatorNotAvailableError):
                    listed = await admin.list_consumer_group_offsets(running.projector.config.group)
                    committed = {tp.partition: o.offset for tp, o in listed.items()}
                await asyncio.sleep(0.05)
    finally:
        await admin.close()


def test_the_group_commits_where_the_projection_has_read_to_when_it_resumes(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A batch written whose commit a rebalance refused (its partitions given to the group's
    other projector) left the group's committed offsets behind what the projection holds: on
    a partition with nothing more to read, a lag no record ever cleared (a bench's two workers
    waited 120 s for it). The projector commits where it has read to once nothing came for a
    few seconds."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    records = _on(topic, _log(6).records)
    asyncio.run(_produce(kafka.bootstrap, records))
    store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'projection.sqlite3'}")
    store.apply(records)  # written, and no commit of the group's says so
    ends = {r.partition: r.offset + 1 for r in records}
    assert set(ends) == set(range(PARTITIONS))

    async def resumed() -> None:
        async with _projecting(kafka.bootstrap, topic, store) as running:
            await _until_committed(kafka.bootstrap, running, ends)

    asyncio.run(resumed())
    assert store.counts()[1] == len(records)  # nothing written twice
    store.close()


class _SlowMarks(ProjectionStore):
    """A database slow to say whether it holds anything (a busy server): aiokafka, which
    fetches a partition as soon as it is assigned, has records to hand out meanwhile."""

    def holds(self, topic: str) -> bool:
        held = super().holds(topic)
        time.sleep(1.0)
        return held


def test_nothing_is_taken_of_a_partition_before_it_is_sought(
    kafka: EmbeddedKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The records aiokafka fetched while the projector read its marks are not projected (or
    dead-lettered) and then read again from where it seeks: each poison record is one letter."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    asyncio.run(_produce_poison(kafka.bootstrap, topic, partition=1, count=1))
    store = _SlowMarks(make_engine(f"sqlite:///{tmp_path / 'projection.sqlite3'}"))

    def sought_and_caught_up(projector: Projector) -> bool:  # said once it has sought
        return "projection empty" in caplog.text and _caught_up(projector)

    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        letters = asyncio.run(_project_until(kafka.bootstrap, topic, store, sought_and_caught_up))
    assert len(letters.sent) == 1
    store.close()


def test_a_worker_on_a_new_database_under_the_same_app_id_fills_it_from_the_log(
    make_system: Any,
) -> None:
    """The reported case: a deployment ran on one database, then its worker was started on a
    new, empty one (same app id, same Kafka). The new database gets the earlier requests."""
    system: System = make_system()
    posted = [system.post(seed_params(f"fill{i}@example.com")) for i in range(3)]
    assert all(status == 202 for status, _ in posted), posted
    request_ids = [body["request_id"] for _, body in posted]
    before = system.wait_terminal(request_ids)
    worker = system.procs.pop("worker")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0

    new = system.root / "new.sqlite3"
    system.env["TALKSTREAM_DATABASE_URL"] = f"sqlite:///{new}"
    system.start_worker()
    wait_until(lambda: projection_made(new), PROJECTOR_START_SECONDS, what="the new database")
    store = ProjectionStore.from_url(f"sqlite:///{new}", migrate_schema=False)
    try:

        def filled() -> bool:
            rows = [store.request(rid) for rid in request_ids]
            return all(row is not None and row.terminal for row in rows)

        wait_until(filled, 90, 0.2, what="the earlier requests in the new database")
        for rid in request_ids:
            row = store.request(rid)
            assert row is not None and row.state == before[rid].state == "published"
            assert [t.state for t in store.transitions(rid)] == [
                t.state for t in system.projection.transitions(rid)
            ]
    finally:
        store.close()
    log = (system.root / "worker.log").read_text(errors="replace")
    assert (
        f"projection empty: filling from the earliest offsets of {system.app_id}-lifecycle" in log
    )


@pytest.mark.parametrize(
    ("where", "executors"),
    [("process", "worker"), ("worker", "worker"), ("worker", "process")],
    ids=["process", "worker", "worker-executors-process"],
)
def test_a_projector_started_before_its_database_waits_for_it_and_says_why(
    make_system: Any,
    postgres_server: str,  # noqa: F811
    where: str,
    executors: str,
) -> None:
    """The database is not there when the deployment starts (a server still restoring, a
    database not created yet): the worker decides all the same, the projector waits saying
    what the database said (its log, and its /readyz on its own) instead of exiting (its child
    process was started again once a second; in the worker it stopped the worker), and fills
    the database from the log once it is there. (The worker's /readyz says it is ready
    meanwhile, its executors in it or not: with ``EXECUTORS=process`` it read Kafka's answers
    from its projector alone, which has no consumer while it waits, and said "connecting to
    Kafka" until the database came.)"""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    port = free_port()
    system: System = make_system(
        database_url=url, projector=where, projector_http_port=str(port), executors=executors
    )
    system.wait_ready()
    posted = [system.post(seed_params(f"wait{i}@example.com")) for i in range(3)]
    assert all(status == 202 for status, _ in posted), posted
    wait_until(lambda: len(system.talkable("GET", "/_events")) >= 3, 60, what="published")

    def unready() -> str:
        with contextlib.suppress(OSError):  # not serving yet
            status, body = http("GET", f"http://127.0.0.1:{port}/readyz")
            return str(body["status"]) if status == 503 else ""
        return ""

    said = "database unreachable: OperationalError: connection failed: "
    missing = f'FATAL: database "{name}" does not exist'
    if where == "process":
        wait_until(lambda: unready().startswith(said), 60, what="the projector's /readyz")
        assert missing in unready()
    wait_until(lambda: missing in system.log("worker"), 30, what="the projector saying why")

    created = contextlib.contextmanager(fresh_postgres_database)(postgres_server, name=name)
    with created as database:
        assert database == url
        _wait_published(ProjectionStore.from_url(url, migrate_schema=False), posted)
        if where == "process":
            assert http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200
    log = (system.root / "worker.log").read_text(errors="replace")
    assert "the projector process exited" not in log
    # it asked the server which database it is first: waited for there (and migrated once
    # its group had given it partitions)
    assert "projection database identity done after" in log


def test_a_workers_projector_child_on_a_database_a_newer_version_migrated_says_so_and_waits(
    make_system: Any,
    postgres_server: str,  # noqa: F811
) -> None:
    """The projection is at a migration this version does not know (a newer version's worker
    migrated it; this one was started again during a rolling upgrade): the worker's projector
    child exited on it and was started again every second, the same ERROR each time. It says
    it once (the database named without its password, and what to run), asks again less and
    less often, its /readyz 503 saying why, while the worker decides; once the newer version
    has taken the database back, it projects every request."""
    created = contextlib.contextmanager(fresh_postgres_database)(postgres_server)
    with created as url:
        ProjectionStore.from_url(url).close()  # at this version's newest
        engine = make_engine(url)

        def at(revision: str) -> None:
            with engine.begin() as connection:
                connection.execute(
                    text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = :revision"),
                    {"revision": revision},
                )

        at("9999")  # as a newer version leaves it
        secret = "s3cret-pw"  # (the test server trusts local connections: ignored)
        with_password = make_url(url).set(password=secret).render_as_string(hide_password=False)
        port = free_port()
        system: System = make_system(database_url=with_password, projector_http_port=str(port))
        system.wait_ready()
        log = system.root / "worker.log"

        def said() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        # refused at once, then after 1 s and 2 s
        wait_until(
            lambda: "projector asks its database again in 4 s" in said(),
            120,
            what="the projector child refused three times",
        )
        refused = said()
        error = "ERROR streams.agents.projector projector cannot migrate its database: "
        assert refused.count(error) == 1, refused[-3000:]
        assert f"{error}the projection database postgresql+psycopg://" in refused
        assert "is at migration 9999, which this version of talkstream does not know" in refused
        assert f"`talkstream migrate --to {migrate.head()} --database-url URL`" in refused
        assert refused.count("projector still refused by its database") == 2, refused[-3000:]
        assert "the projector process exited" not in refused
        assert secret not in refused
        status, body = http("GET", f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and "is at migration 9999" in str(body["status"]), body
        assert secret not in str(body)

        posted = [system.post(seed_params(f"newer{i}@example.com")) for i in range(3)]
        assert all(code == 202 for code, _ in posted), posted
        wait_until(lambda: len(system.talkable("GET", "/_events")) >= 3, 60, what="published")
        assert http("GET", f"{system.worker_url()}/readyz")[0] == 200  # the worker goes on

        at(migrate.head())  # the newer version's `talkstream migrate --to <this one's head>`
        _wait_published(ProjectionStore.from_url(url, migrate_schema=False), posted)
        wait_until(
            lambda: http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200,
            60,
            what="the projector ready",
        )
        assert "projector no longer refused by its database" in said()
        assert "the projector process exited" not in said()
        engine.dispose()


def _wait_published(store: ProjectionStore, posted: list[tuple[int, Any]]) -> None:
    """Until the store has every posted request published (its schema may not be there yet)."""

    def projected() -> bool:
        with contextlib.suppress(SQLAlchemyError):
            rows = [store.request(body["request_id"]) for _, body in posted]
            return all(row is not None and row.state == "published" for row in rows)
        return False

    try:
        wait_until(projected, 90, 0.2, what="the requests in the database")
    finally:
        store.close()


def test_the_projector_process_serves_only_what_it_measures(make_system: Any) -> None:
    """The projector on its own (``PROJECTOR=process``) served every worker series too, at 0
    (generation latency, upstream calls, gap repairs...): an alert on them (no generations
    for 10 minutes) fired on every projector. It serves its lag and its dead letters."""
    port = free_port()
    system: System = make_system(projector="process", projector_http_port=str(port))
    system.wait_ready()
    status, _ = system.post(seed_params("metrics@example.com"))
    assert status == 202
    lifecycle = f"{system.app_id}-lifecycle"

    def served() -> str:
        with contextlib.suppress(OSError):  # not serving yet
            code, body = http("GET", f"http://127.0.0.1:{port}/metrics")
            return str(body) if code == 200 else ""
        return ""

    wait_until(lambda: f'topic="{lifecycle}"' in served(), 60, what="the projector's lag")
    names = {
        line.split()[2]
        for line in served().splitlines()
        if line.startswith("# TYPE ") and not line.split()[2].startswith(("python_", "process_"))
    }
    assert names == {"talkstream_consumer_lag", "talkstream_dead_letters_total"}
    # the worker still serves its own
    worker = http("GET", f"{system.worker_url()}/metrics")[1]
    assert "talkstream_generation_latency_seconds_count" in str(worker)

"""One database per projector group, on the real broker: a projector of the group writing
another database is refused before it takes a partition (started fresh, or started again
within its session under the member id of one that wrote the group's database) or makes or
migrates its database, and the group's projectors keep every partition; projectors writing one
database share them, a PostgreSQL database named by two host names too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from streams.agents.projector import Projector, ProjectorConfig, until_taken
from streams.agents.projector_group import OtherDatabase
from streams.dev.kafka import EmbeddedKafka
from streams.projection import engine, migrate
from streams.projection.engine import database_identity, make_engine, url_identity
from streams.projection.store import ProjectionStore
from streams.runtime import DeadLetters, SystemClock
from tests.integration.conftest import System, create_topic, described_group, http
from tests.integration.test_crash import _alive, _children, projectors_holding
from tests.integration.test_projector import _Letters, _on, _produce
from tests.postgres import fresh_postgres_database, postgres_server  # noqa: F401 (fixture)
from tests.projection_support import T0_MS, Log
from tests.support import free_port, seed_params, wait_until

PARTITIONS = 4


def _projector(bootstrap: str, topic: str, instance: str, store: ProjectionStore) -> Projector:
    counter = Counter("letters", "dead letters", ["topic"], registry=CollectorRegistry())
    return Projector(
        ProjectorConfig(
            topic=topic,
            group=f"{topic}-projector",
            instance=instance,
            consumer_options={"bootstrap_servers": bootstrap, "session_timeout_ms": 10_000},
        ),
        store,
        DeadLetters(_Letters(), counter, SystemClock()),
    )


@contextlib.asynccontextmanager
async def _running(projector: Projector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(projector.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(done: Callable[[], bool], *tasks: asyncio.Task[None], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(done):
            for task in tasks:
                if task.done():
                    task.result()  # its failure, not a timeout
            await asyncio.sleep(0.05)


def _assigned(projector: Projector) -> int:
    consumer = projector.consumer
    return 0 if consumer is None else len(consumer.assignment())


def _log(first: int, people: int, log: Log) -> None:
    for i in range(first, first + people):
        log.full(f"req-{i:03d}", email=f"p{i}@example.com", at_ms=T0_MS + i * 1000)


def _seeded(kafka: EmbeddedKafka) -> tuple[str, Log]:
    """A lifecycle topic of its own, holding the log of 20 people's requests."""
    topic = f"t{uuid.uuid4().hex[:10]}-lifecycle"
    asyncio.run(create_topic(kafka.bootstrap, topic, PARTITIONS))
    log = Log(partitions=PARTITIONS)
    _log(0, 20, log)
    asyncio.run(_produce(kafka.bootstrap, _on(topic, log.records)))
    return topic, log


async def _all_in_the_groups_database(
    kafka: EmbeddedKafka,
    topic: str,
    log: Log,
    group_db: ProjectionStore,
    first: Projector,
    task: asyncio.Task[None],
) -> None:
    """Another 20 people's requests produced: all in the group's database, projected by
    ``first``, which holds every partition."""
    before = len(log.records)
    _log(20, 20, log)
    await _produce(kafka.bootstrap, _on(topic, log.records[before:]))
    await _until(lambda: group_db.counts()[1] == len(log.records), task)
    assert _assigned(first) == PARTITIONS


async def _refused(projector: Projector, task: asyncio.Task[None]) -> str:
    with pytest.raises(OtherDatabase) as refused:
        async with asyncio.timeout(60):
            await task
    assert projector.refused == str(refused.value)
    return str(refused.value)


def test_a_projector_on_another_database_is_refused_and_takes_nothing(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """The second projector of a group, on another SQLite file, stops with an error naming the
    problem and what to do; it projected nothing (its file was not even made, nor its
    directory), and the first keeps every partition: what is produced afterwards is all in the
    group's database."""
    topic, log = _seeded(kafka)
    group_db = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'group.sqlite3'}")
    other = tmp_path / "elsewhere" / "other.sqlite3"
    other_db = ProjectionStore.from_url(f"sqlite:///{other}", migrate_schema=False)

    async def scenario() -> None:
        first = _projector(kafka.bootstrap, topic, "first", group_db)
        async with _running(first) as first_task:
            await _until(lambda: group_db.counts()[1] == len(log.records), first_task)
            second = _projector(kafka.bootstrap, topic, "second", other_db)
            async with _running(second) as second_task:
                said = await _refused(second, second_task)
            assert "another projector of group" in said
            assert "TALKSTREAM_DATABASE_URL" in said
            assert second.database in said and first.database in said
            assert _assigned(first) == PARTITIONS
            await _all_in_the_groups_database(kafka, topic, log, group_db, first, first_task)

    asyncio.run(scenario())
    assert not other.parent.exists()
    group_db.close()
    other_db.close()


def test_a_projector_started_again_on_another_database_within_its_session_is_refused(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A projector that wrote the group's database, started again within its session (its
    static member id: the coordinator gives it its partitions back with no rebalance) on
    another database, is refused before it takes anything, and its partitions go to the
    group's other projector."""
    topic, log = _seeded(kafka)
    url = f"sqlite:///{tmp_path / 'group.sqlite3'}"
    group_db, group_db_too = ProjectionStore.from_url(url), ProjectionStore.from_url(url)
    other = tmp_path / "other.sqlite3"
    other_db = ProjectionStore.from_url(f"sqlite:///{other}", migrate_schema=False)

    async def scenario() -> None:
        first = _projector(kafka.bootstrap, topic, "first", group_db)
        async with _running(first) as first_task:
            await _until(lambda: _assigned(first) == PARTITIONS, first_task)
            second = _projector(kafka.bootstrap, topic, "second", group_db_too)
            async with _running(second) as second_task:
                await _until(
                    lambda: _assigned(first) > 0 and _assigned(second) > 0, first_task, second_task
                )
            # stopped: a static member stays in the group for its session
            again = _projector(kafka.bootstrap, topic, "second", other_db)
            async with _running(again) as again_task:
                await _refused(again, again_task)
            await _all_in_the_groups_database(kafka, topic, log, group_db, first, first_task)

    asyncio.run(scenario())
    assert not other.exists()
    for store in (group_db, group_db_too, other_db):
        store.close()


def test_a_projector_refused_before_joins_once_the_group_moved_to_its_database(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A deployment moving to a new database, one projector at a time: the first started on
    it is refused while the others write the old one; once they are started again on the new
    one too, it is started again within its session (the coordinator hands it its last,
    refused, assignment with no rebalance) and is not refused: the group rebalances and it
    shares the partitions."""
    topic, log = _seeded(kafka)
    old_db = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    new_url = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    new_db, new_db_too = ProjectionStore.from_url(new_url), ProjectionStore.from_url(new_url)

    async def scenario() -> None:
        first = _projector(kafka.bootstrap, topic, "first", old_db)
        async with _running(first) as first_task:
            await _until(lambda: _assigned(first) == PARTITIONS, first_task)
            moved = _projector(kafka.bootstrap, topic, "second", new_db)
            async with _running(moved) as moved_task:
                await _refused(moved, moved_task)
        first = _projector(kafka.bootstrap, topic, "first", new_db)
        async with _running(first) as first_task:
            await _until(lambda: new_db.counts()[1] == len(log.records), first_task)
            second = _projector(kafka.bootstrap, topic, "second", new_db_too)
            async with _running(second) as second_task:
                await _until(
                    lambda: _assigned(first) > 0 and _assigned(second) > 0, first_task, second_task
                )
                assert second.refused is None

    asyncio.run(scenario())
    for store in (old_db, new_db, new_db_too):
        store.close()


def test_a_refused_projector_asking_again_is_taken_once_the_group_moved(
    kafka: EmbeddedKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's projector child refused (``until_taken``) says so once and asks again, less
    and less often, its database not made meanwhile; once the group's projector on the other
    database has gone (its session over), it is taken: it migrates its database and fills it
    from the log."""
    topic, log = _seeded(kafka)
    old_db = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    new = tmp_path / "new.sqlite3"
    new_db = ProjectionStore.from_url(f"sqlite:///{new}", migrate_schema=False)

    async def scenario() -> None:
        moved = _projector(kafka.bootstrap, topic, "second", new_db)
        first = _projector(kafka.bootstrap, topic, "first", old_db)
        async with _running(first) as first_task:
            await _until(lambda: _assigned(first) == PARTITIONS, first_task)
            asking = asyncio.create_task(until_taken(moved, again=True))
            try:
                # its /readyz status, while it waits to ask again
                await _until(lambda: moved.database_error is not None, asking)
                assert "another projector of group" in moved.database_error
                assert not new.exists()
                first_task.cancel()  # stopped: gone from the group once its session is over
                await asyncio.gather(first_task, return_exceptions=True)
                await _until(lambda: len(moved.applied) == PARTITIONS, asking, timeout=120)
                assert moved.refused is None and moved.database_error is None
                await _until(lambda: new_db.counts()[1] == len(log.records), asking)
            finally:
                asking.cancel()
                await asyncio.gather(asking, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        asyncio.run(scenario())
    assert caplog.text.count("projector refused: another projector of group") == 1
    assert "projector still refused by group" in caplog.text
    assert "projector no longer refused" in caplog.text
    old_db.close()
    new_db.close()


class _MigratedMeanwhile(ProjectionStore):
    """A projection a newer version's projector migrates once, between this projector's look
    at its schema (before it joined) and its migration (once its group gave it partitions)."""

    def __init__(self, url: str) -> None:
        super().__init__(make_engine(url), migrate_schema=False)
        self.newer = False

    def upgrade_schema(self) -> None:
        if not self.newer:
            self.newer = True
            with self.engine.begin() as connection:
                connection.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'"))
        super().upgrade_schema()


def test_a_projector_refused_at_its_migration_gives_its_partitions_up_and_waits(
    kafka: EmbeddedKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its database migrated past this version by a newer one after its look before joining:
    refused at its migration, a worker's child (``until_taken``) stops its consumer, projects
    nothing and asks again, looking at the schema before it joins again (refused there,
    without joining); once the newer version took the database back, it joins, migrates and
    fills it. Its child exited on the refusal and was started again every second."""
    topic, log = _seeded(kafka)
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    ProjectionStore.from_url(url).close()  # at this version's newest
    store = _MigratedMeanwhile(url)

    async def scenario() -> None:
        older = _projector(kafka.bootstrap, topic, "older", store)
        asking = asyncio.create_task(until_taken(older, again=True))
        try:
            await _until(lambda: "is at migration 9999" in (older.database_error or ""), asking)
            assert older.applied == {} and store.counts() == (0, 0)
            await _until(lambda: "projector still refused by its database" in caplog.text, asking)
            assert caplog.text.count("projector writes ") == 1  # it did not join again
            with store.engine.begin() as connection:  # the newer version's `migrate --to`
                connection.execute(
                    text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = :head"),
                    {"head": migrate.head()},
                )
            await _until(lambda: store.counts()[1] == len(log.records), asking, timeout=90)
            assert older.database_error is None
        finally:
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        asyncio.run(scenario())
    assert caplog.text.count("projector cannot migrate its database: ") == 1
    assert "projector no longer refused by its database" in caplog.text
    store.close()


def test_projectors_on_one_database_share_the_partitions(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """Two projectors of a group on one SQLite file, named by two URLs (one through another
    directory), both hold partitions, neither is refused, and every record is projected once."""
    topic, log = _seeded(kafka)
    (tmp_path / "elsewhere").mkdir()
    one = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'group.sqlite3'}")
    same = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'elsewhere' / '..' / 'group.sqlite3'}")

    async def scenario() -> None:
        first = _projector(kafka.bootstrap, topic, "first", one)
        second = _projector(kafka.bootstrap, topic, "second", same)
        assert first.database == second.database
        async with _running(first) as first_task:
            await _until(lambda: _assigned(first) == PARTITIONS, first_task)
            async with _running(second) as second_task:
                await _until(
                    lambda: (
                        _assigned(first) + _assigned(second) == PARTITIONS
                        and _assigned(first) > 0
                        and _assigned(second) > 0
                    ),
                    first_task,
                    second_task,
                )
                before = len(log.records)
                _log(20, 20, log)
                await _produce(kafka.bootstrap, _on(topic, log.records[before:]))
                await _until(lambda: one.counts()[1] == len(log.records), first_task, second_task)
                assert first.refused is None and second.refused is None

    asyncio.run(scenario())
    offsets = [(row.partition, row.offset) for row in one.all_transitions()]
    assert len(offsets) == len(set(offsets)) == len(log.records)
    one.close()
    same.close()


def _generation(projector: Projector) -> int:
    """The generation of its group its projector last joined (-1 before its first)."""
    consumer = projector.consumer
    return -1 if consumer is None else int(consumer._coordinator.generation)


def test_each_projector_joining_its_group_rebalances_it_once(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A projector alone in its group holds every partition from the group's first generation,
    and a second joining has both hold some from the second: one rebalance a join. aiokafka
    sent one JoinGroup per assignor (``streams.kafka_join``), the second naming
    ``roundrobin`` too: a change of the member's protocols, which the coordinator rebalanced
    the group again for (each join two generations, each a pause of the projection)."""
    topic, _ = _seeded(kafka)
    url = f"sqlite:///{tmp_path / 'group.sqlite3'}"
    one, same = ProjectionStore.from_url(url), ProjectionStore.from_url(url)

    async def scenario() -> None:
        first = _projector(kafka.bootstrap, topic, "first", one)
        second = _projector(kafka.bootstrap, topic, "second", same)
        async with _running(first) as first_task:
            await _until(lambda: _assigned(first) == PARTITIONS, first_task)
            assert _generation(first) == 1
            async with _running(second) as second_task:
                # settled: each has its share, and the first has given up the second's (its
                # generation can read 2 before its listener has run on the new assignment)
                await _until(
                    lambda: (
                        _assigned(first) > 0
                        and _assigned(second) > 0
                        and _assigned(first) + _assigned(second) == PARTITIONS
                    ),
                    first_task,
                    second_task,
                )
                assert _generation(first) == _generation(second) == 2
                assert _assigned(first) + _assigned(second) == PARTITIONS

    asyncio.run(scenario())
    one.close()
    same.close()


_fresh = contextlib.contextmanager(fresh_postgres_database)


def _named(url: str, host: str) -> str:
    return make_url(url).set(host=host).render_as_string(hide_password=False)


def test_a_postgresql_database_is_one_database_by_any_host_name(
    postgres_server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server says which database it is: one database reached as ``127.0.0.1`` and as
    ``localhost`` is one id (their URLs alone are two), another database of the server another
    id. A role the server does not tell its system identifier falls back to the URL's id,
    saying so."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_fresh(postgres_server))
        another = stack.enter_context(_fresh(postgres_server))
        engines = [create_engine(_named(url, host)) for host in ("127.0.0.1", "localhost")]
        other = create_engine(another)
        for made in (*engines, other):
            stack.callback(made.dispose)
        by_ip, by_name = engines
        assert url_identity(by_ip) != url_identity(by_name)
        assert database_identity(by_ip) == database_identity(by_name)
        assert database_identity(other) != database_identity(by_ip)

        role = f"t_{uuid.uuid4().hex[:12]}"
        with engines[0].connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
            admin.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            stack.callback(_drop_role, engines[0], role)
        unprivileged = create_engine(make_url(_named(url, "localhost")).set(username=role))
        stack.callback(unprivileged.dispose)
        # a statement of the same shape that this role may not run (the cluster's
        # pg_control_system() is anyone's: revoking it would change the shared server)
        refused = "SELECT pg_read_file('PG_VERSION'), current_database()"
        monkeypatch.setattr(engine, "_SERVER_IDENTITY_SQL", refused)
        with caplog.at_level(logging.WARNING, logger=engine.__name__):
            assert database_identity(unprivileged) == url_identity(unprivileged)
        assert "does not say its system identifier" in caplog.text
        assert "permission denied" in caplog.text


def _drop_role(engine_: Any, role: str) -> None:
    with engine_.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        admin.execute(text(f'DROP ROLE IF EXISTS "{role}"'))


def test_projectors_on_one_postgresql_database_by_two_host_names_share_the_partitions(
    kafka: EmbeddedKafka,
    postgres_server: str,  # noqa: F811
) -> None:
    """Two projectors of a group on one PostgreSQL database, one reaching the server as
    ``127.0.0.1`` and one as ``localhost``, both hold partitions and neither is refused; a
    third, on another database of the server, is refused and leaves it as it was: not
    migrated, no table made."""
    topic, log = _seeded(kafka)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_fresh(postgres_server))
        another = stack.enter_context(_fresh(postgres_server))
        one = ProjectionStore.from_url(_named(url, "127.0.0.1"))
        same = ProjectionStore.from_url(_named(url, "localhost"), migrate_schema=False)
        other_db = ProjectionStore.from_url(another, migrate_schema=False)
        for store in (one, same, other_db):
            stack.callback(store.close)

        async def scenario() -> None:
            first = _projector(kafka.bootstrap, topic, "first", one)
            second = _projector(kafka.bootstrap, topic, "second", same)
            async with _running(first) as first_task:
                await _until(lambda: one.counts()[1] == len(log.records), first_task)
                async with _running(second) as second_task:
                    await _until(
                        lambda: _assigned(first) > 0 and _assigned(second) > 0,
                        first_task,
                        second_task,
                    )
                    assert first.database == second.database
                    third = _projector(kafka.bootstrap, topic, "third", other_db)
                    async with _running(third) as third_task:
                        await _refused(third, third_task)
                    before = len(log.records)
                    _log(20, 20, log)
                    await _produce(kafka.bootstrap, _on(topic, log.records[before:]))
                    await _until(
                        lambda: one.counts()[1] == len(log.records), first_task, second_task
                    )
                    assert first.refused is None and second.refused is None

        asyncio.run(scenario())
        offsets = [(row.partition, row.offset) for row in one.all_transitions()]
        assert len(offsets) == len(set(offsets)) == len(log.records)
        assert inspect(other_db.engine).get_table_names() == []


def test_talkstream_projector_on_another_database_exits_saying_why(make_system: Any) -> None:
    """``talkstream projector`` started beside a deployment with another database URL exits
    non-zero with an ERROR naming the problem and what to do, having written nothing; the
    deployment's projector goes on projecting every request into its own database."""
    system: System = make_system()
    system.wait_ready()
    first = [system.post(seed_params(f"a{i}@example.com"))[1]["request_id"] for i in range(3)]
    system.wait_terminal(first)
    other = system.root / "other.sqlite3"
    env = {
        **system.env,
        "TALKSTREAM_DATABASE_URL": f"sqlite:///{other}",
        "TALKSTREAM_WORKER_NAME": "elsewhere",
        "TALKSTREAM_PROJECTOR_HTTP_PORT": str(free_port()),
    }
    system.spawn("stray", "projector", env=env)
    stray = system.procs["stray"]
    code = stray.wait(timeout=120)
    said = (system.root / "stray.log").read_text(errors="replace")
    assert code != 0, said[-3000:]
    assert "ERROR streams.agents.projector projector refused: another projector of group" in said
    assert "TALKSTREAM_DATABASE_URL" in said, said[-3000:]
    assert not other.exists()  # nothing projected: its file not even made
    later = [system.post(seed_params(f"b{i}@example.com"))[1]["request_id"] for i in range(8)]
    system.wait_terminal(first + later)


def test_a_worker_whose_projector_writes_another_database_stops_saying_why(
    make_system: Any,
) -> None:
    """With ``PROJECTOR=worker`` the projector is a task of the worker: a worker started with
    another database than its group's projectors stops, non-zero, with the same ERROR."""
    system: System = make_system(projector="worker")
    system.wait_ready()
    env = {
        **system.env,
        "TALKSTREAM_DATABASE_URL": f"sqlite:///{system.root / 'other.sqlite3'}",
        "TALKSTREAM_WORKER_NAME": "elsewhere",
        "TALKSTREAM_WORKER_HTTP_PORT": str(free_port()),
    }
    system.spawn("stray", "worker", env=env)
    code = system.procs["stray"].wait(timeout=120)
    said = (system.root / "stray.log").read_text(errors="replace")
    assert code != 0, said[-3000:]
    assert "ERROR streams.agents.projector projector refused: another projector of group" in said


def test_a_workers_projector_child_on_another_database_says_so_once_and_waits(
    make_system: Any,
) -> None:
    """A worker started with another database (``PROJECTOR=process``): its projector child is
    refused with one ERROR, and stays up asking its group again less and less often (each
    time refused with no partition: the coordinator hands a static member its last
    assignment), its /readyz saying the refusal, where it exited and was started again every
    second, the same ERROR each time; the deployment's projection gets every request, and the
    other database nothing (its file is not made)."""
    system: System = make_system()
    system.wait_ready()
    other = system.root / "other.sqlite3"
    port = free_port()
    env = {
        **system.env,
        "TALKSTREAM_DATABASE_URL": f"sqlite:///{other}",
        "TALKSTREAM_WORKER_NAME": "elsewhere",
        "TALKSTREAM_WORKER_HTTP_PORT": str(free_port()),
        "TALKSTREAM_PROJECTOR_HTTP_PORT": str(port),
    }
    system.spawn("stray", "worker", env=env)
    log = system.root / "stray.log"

    def refused_three_times() -> bool:  # after 1 s, then 2 s
        said = log.read_text(errors="replace") if log.exists() else ""
        return f"projector asks group {system.app_id}-projector again in 4 s" in said

    wait_until(refused_three_times, 120, what="the stray worker's projector refused 3 times")
    said = log.read_text(errors="replace")
    assert said.count("projector refused: another projector of group") == 1, said[-3000:]
    assert said.count("projector still refused by group") == 2, said[-3000:]
    assert "the projector process exited" not in said
    status, body = http("GET", f"http://127.0.0.1:{port}/readyz")
    assert status == 503 and "another projector of group" in str(body["status"]), body
    ids = [system.post(seed_params(f"c{i}@example.com"))[1]["request_id"] for i in range(8)]
    system.wait_terminal(ids)
    assert not other.exists()


def test_a_worker_killed_while_its_projector_joins_is_back_in_the_group_at_once(
    make_system: Any,
) -> None:
    """A worker killed while its projector's first JoinGroup is pending (the group waits for
    the other projector's next heartbeat: every 6 s with a 60 s session) and started again at
    once under the same static instance id: the group is stable again within seconds, both
    projectors holding partitions, and the projection gets every request. It rebalanced for
    minutes instead, the two projectors joining alternate generations, each one's SyncGroup
    failing (aiokafka sent one JoinGroup per assignor, the second naming one protocol more:
    each member's second JoinGroup rebalanced the group again under the other). Whether the
    two fell out of step so depends on when the coordinator hears each: without
    ``streams.kafka_join`` this failed 4 runs in 6; the rebalance a join costs, every time:
    ``test_each_projector_joining_its_group_rebalances_it_once``."""
    system: System = make_system(session_timeout_seconds="60")
    bootstrap = system.env["TALKSTREAM_KAFKA_BOOTSTRAP"]
    group = f"{system.app_id}-projector"
    system.wait_ready()
    first = [system.post(seed_params(f"a{i}@example.com"))[1]["request_id"] for i in range(4)]
    system.wait_terminal(first)
    wait_until(
        lambda: projectors_holding(bootstrap, group) == 1, 60, 0.5, what="worker's projector"
    )
    system.start_worker("worker-b")

    def b_joining() -> bool:  # its projector joined: the group waits for worker's to rejoin
        state, members = described_group(bootstrap, group)
        return state == "PreparingRebalance" and any(m[0].startswith("worker-b@") for m in members)

    wait_until(b_joining, 120, 0.05, what="worker-b's projector joining its group")
    children = _children(system.procs["worker-b"].pid)
    # its projector child too, at once: the worker's death sends it a SIGTERM, and its stop
    # could see the pending join answered first
    for child in children:
        os.kill(child, signal.SIGKILL)
    system.kill("worker-b")
    wait_until(lambda: not any(_alive(c) for c in children), 60, what="its children to end")
    system.start_worker("worker-b")
    # well within the session (60 s): nothing waits it out, and a rebalance takes seconds
    wait_until(
        lambda: projectors_holding(bootstrap, group) == 2, 40, 0.5, what="both projectors holding"
    )
    later = [system.post(seed_params(f"b{i}@example.com"))[1]["request_id"] for i in range(8)]
    system.wait_terminal(first + later, timeout=40)
    assert projectors_holding(bootstrap, group) == 2
    # the executors' groups settled too before the deployment stops: worker-b stopped with
    # their joins still pending did not end within the fixture's 30 s (each run's teardown)
    for executor in ("generator", "publisher"):
        wait_until(
            lambda e=executor: projectors_holding(bootstrap, f"{system.app_id}-{e}") == 2,
            60,
            0.5,
            what=f"both {executor}s holding partitions",
        )

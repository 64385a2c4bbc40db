"""The projector: [lifecycle] → SQL, in batches, idempotent per source offset.

It reads with a consumer of its own, not faust's (as the executors do): faust's per-message
machinery cost the worker more than a quarter of its CPU for the six lifecycle records of each
webhook, and it can commit past messages it never delivered. Here a batch is applied in one
transaction and only then committed; a partition assigned to it resumes where the projection
says it has read to (one past the highest source offset of its rows, or the offset recorded with
the last batch read from it, all of whose records may have been dead-lettered), and a partition
the projection holds nothing of from its earliest offset: so nothing is skipped, a new or
emptied database is filled from the log, and a record read twice is not applied twice (the
store keeps the source offset of every row). The group's committed offsets are never where it
starts: they say what some database took, not necessarily this one; where it has read to is
committed with each batch, and once nothing came for a few seconds, so the group's lag says
what its database lacks. A record that does not
decode is recorded as read only once Kafka acknowledged its dead letter: if Kafka did not take
the letter, the batch takes its partition up to that record, and reads it again from there.

So the projectors of a group must write one database, and one writing another is refused
before it takes a partition (``projector_group``): its ``run`` raises ``OtherDatabase``. It
makes and migrates nothing before its group has taken it: its database's id is found without
writing (a SQLite file's path, a PostgreSQL server asked who it is), and the schema is
migrated once the group has given it partitions (a refused projector leaves its database as it
was: a SQLite file it names is not made, nor its directory). So is one whose database's schema
this version will not migrate (a newer version migrated it, or it has tables but no migration
history: ``SchemaRefused``), found before it joins (read only) or at its migration: it takes no
partition (or gives them back), and says what to do. The worker's projector child, refused
either way, says so once and asks again, less and less often (``until_taken``), rather than
exiting to be started again every second; the worker starts a child that exits anyway
again, less and less often while it keeps exiting soon after its start
(``streams.children.ChildProcess``).

Between batches, once a minute at most, it gathers a SQLite projection's planner statistics
again when the requests have doubled since (SQLite gathers none by itself; PostgreSQL's
autovacuum keeps its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import IllegalStateError, KafkaError
from sqlalchemy.exc import SQLAlchemyError

from models.events import LifecycleEvent
from streams.agents.projector_group import (
    DatabaseAssignor,
    OtherDatabase,
    other_database,
    refusal,
)
from streams.children import PARENT_ENV
from streams.codecs import decode
from streams.errors import ConfigError, SchemaRefused
from streams.kafka_options import (
    IdempotentProducer,
    client_options,
    consumer_lag,
    group_consumer,
    group_options,
    rejoin_group,
    stop_consumer,
)
from streams.observability import ProcessMetrics, WorkerMetrics, serve_or_log
from streams.projection.engine import (
    database_identity,
    database_said,
    database_unusable,
    url_identity,
)
from streams.projection.migrate import refusal as schema_refusal
from streams.projection.rows import Sourced
from streams.projection.store import ProjectionBehind, ProjectionStore
from streams.runtime import LETTER_AGAIN_SECONDS, DeadLetters, SystemClock
from streams.settings import Settings
from streams.topics import BY_NAME, consumer_group

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH = 500
# a write (or the schema's migration) the database has not answered for this long is said: a
# server that hangs, or a network that drops everything, leaves it waiting with no error
DATABASE_SILENCE_SECONDS = 10.0
WITHIN_SECONDS = 0.2
# nothing read for this long: where each partition was read to is committed, if the group's
# commit is not known to say it (``Projector._commit_idle``)
IDLE_COMMIT_SECONDS = 5.0
# a write (or migration) the database refused is tried again after the first pause, doubled at
# each failure in a row up to the last: a database back is written to within that (the first
# tries come soon, and a long outage costs one try every few seconds, each an ERROR line)
DATABASE_RETRY_FIRST_SECONDS = 0.5
DATABASE_RETRY_MAX_SECONDS = 5.0
FETCH_MIN_BYTES = 256 * 1024
STATISTICS_CHECK_SECONDS = 60.0  # how often the database's statistics are checked, at most
# a worker's projector child its group refused (another database than the group's) asks again
# after the first pause, doubled at each refusal in a row up to the last: a refusal ends only
# when the group's other projectors move to its database (a deployment moving database one
# worker at a time), which it notices within that, without joining every second. So does one
# whose database's schema this version will not migrate (``SchemaRefused``), which an operator
# ends (the newer version's ``talkstream migrate --to``, this worker upgraded, a rebuild)
REFUSED_RETRY_FIRST_SECONDS = 1.0
REFUSED_RETRY_MAX_SECONDS = 60.0
# a run that lasted this long before its refusal (it projected, or waited for its database)
# starts the pauses over: refused again after hours of work, it asks again after the first
# pause, not the last one it reached before (as ``CHILD_RAN_SECONDS`` for the child's restarts)
REFUSED_RAN_SECONDS = 60.0


@dataclass(frozen=True)
class ProjectorConfig:
    topic: str  # full topic name of [lifecycle]
    group: str  # consumer group
    instance: str  # static member id within the group
    consumer_options: dict[str, Any]

    @classmethod
    def of(cls, settings: Settings) -> ProjectorConfig:
        return cls(
            topic=BY_NAME["lifecycle"].full_name(settings),
            group=consumer_group(settings, "projector"),
            instance=f"{settings.instance_id}-projector",
            consumer_options=group_options(settings),
        )


class Projector:
    """[lifecycle] → SQL for the partitions its group gives it; see the module docstring."""

    def __init__(
        self, config: ProjectorConfig, store: ProjectionStore, dead_letters: DeadLetters
    ) -> None:
        self.config = config
        self._store = store
        self._dead_letters = dead_letters
        self.consumer: AIOKafkaConsumer | None = None
        self.applied: dict[TopicPartition, int] = {}  # next offset per partition
        # the next offset recorded in the database by this projector's last batch of each
        # partition since it was sought: the database holding less went back under it
        self.recorded: dict[TopicPartition, int] = {}
        # the next offset of each partition this projector committed for its group since it
        # was sought (``_commit_idle`` commits where the group's is not known to be this)
        self._committed: dict[TopicPartition, int] = {}
        self.database_error: str | None = None  # why its database takes nothing now
        self._statistics_due = 0.0  # when its database's statistics are checked next
        # the database it writes, as its group's members say it (projector_group.py): what
        # its URL names until ``run`` has asked the server (``database_identity``)
        self.database = url_identity(store.engine)
        self._identified = False  # ``database`` is the server's word (asked once)
        self._projected = False  # it has been given partitions since it started
        self._assignor = DatabaseAssignor(config.group, self.database, lambda: self._projected)
        self.refused: str | None = None  # why its group refused it (another database)
        self._said: str | None = None  # the refusal it said as an ERROR (said once)
        self._schema_said: str | None = None  # its database's refusal it said as an ERROR
        self._asked_again = False  # a refusal it had the group decide again (``_refused``)
        self._migrated = False  # the schema migrated since it started
        # given partitions before its schema was migrated: ``run`` migrates it (off the
        # rebalance listener, which holds its heartbeats back) and then seeks them
        self._migration_due = False

    def lag(self) -> dict[tuple[str, int], int]:
        """Records of each assigned partition not applied yet."""
        return consumer_lag(self.consumer, self.applied)

    async def run(self) -> None:
        """Project until cancelled; raises ``OtherDatabase`` when its group refuses it, and
        ``SchemaRefused`` when its database's schema is one this version will not migrate (a
        newer version's, tables without a history): before it joins its group, or at its
        migration once the group has given it partitions (its consumer stopped: they go to
        the group's other projectors). Run again after a refusal, it asks again."""
        self.refused, self._asked_again = None, False
        try:
            if not self._identified:
                # a database server down when the projector starts (restarting, not up yet)
                # is waited for, as one down later is; nothing is written into it before the
                # group has taken this projector (``resume``: the schema is migrated then)
                await self._until_done(
                    "projection database identity", self._identify, migrate_first=False
                )
            if not self._migrated:
                await self._schema_checked()
            await self._consume()
        except SchemaRefused as refused:
            # its consumer stopped, its partitions the group's other projectors' (once its
            # session is over): asked again, its database is checked before it joins, and
            # migrated only once the group gives it partitions again
            self._migrated = self._migration_due = False
            self.forget(set(self.applied))
            self._schema_refused(str(refused))
            raise

    async def _schema_checked(self) -> None:
        """Its database's schema read (nothing written, a SQLite file not made), before it
        joins its group: one this version will not migrate raises ``SchemaRefused``, so a
        projector refused so is no member holding partitions it will not project. A database
        that does not answer is left to its migration, which waits for it."""
        try:
            refused = await self._answered(
                "projection schema check", lambda: schema_refusal(self._store.engine)
            )
        except SQLAlchemyError:
            return
        if refused is not None:
            raise SchemaRefused(refused)

    def _schema_refused(self, why: str) -> None:
        """Its database's refusal: the ``/readyz`` status, an ERROR the first time (what to
        do, the database named without its password), an INFO at each time after."""
        self.database_error = why
        if why != self._schema_said:
            log.error("projector cannot migrate its database: %s", why)
            self._schema_said = why
        else:
            log.info(
                "projector still refused by its database %s: its schema is not one this "
                "version migrates",
                self._store.url,
            )

    async def _consume(self) -> None:
        consumer = self.consumer = group_consumer(
            self.config.consumer_options,
            self.config.group,
            self.config.instance,
            max_poll_records=BATCH,
            # the broker answers a fetch when it has this much or the batch window passed: a
            # few fetches a second under load instead of one per record or two
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=int(WITHIN_SECONDS * 1000),
            # the group's database checked at each assignment; roundrobin: what a group with
            # a member of a version before it assigns with (that member is not checked)
            partition_assignment_strategy=(self._assignor, RoundRobinPartitionAssignor),
        )
        consumer.subscribe([self.config.topic], listener=_Resume(self))
        log.info(
            "projector writes %s (database id %s) for group %s",
            self._store.url,
            self.database,
            self.config.group,
        )
        try:
            await consumer.start()  # (stopped too when a stop cancels it here)
            while self.refused is None:
                if self._migration_due:
                    await self._migrate(consumer)
                    continue
                taken = await _take(
                    consumer, lambda: self.refused is not None or self._migration_due
                )
                if taken:
                    await self._project(consumer, taken)
                else:
                    await self._commit_idle(consumer)
            self.database_error = self.refused
            if self.refused != self._said:
                log.error("projector refused: %s", self.refused)
                self._said = self.refused
            else:
                log.info(
                    "projector still refused by group %s: it writes database id %s",
                    self.config.group,
                    self.database,
                )
            raise OtherDatabase(self.refused)
        finally:
            await stop_consumer(consumer)

    def _identify(self) -> None:
        """The database's id as its server says it (a SQLite file's path: nothing opened)."""
        self.database = self._assignor.database = database_identity(self._store.engine)
        self._identified = True

    async def _migrate(self, consumer: AIOKafkaConsumer) -> None:
        """The schema migrated (the database waited for), then the partitions the group gave
        meanwhile sought and taken, as ``resume`` does once it is migrated. A rebalance while
        this runs gives them to ``resume`` again, which seeks them itself: a partition it took
        away meanwhile is its new owner's."""
        await self._until_done(
            "projection schema migration", self._store.upgrade_schema, migrate_first=False
        )
        self._migrated, self._migration_due = True, False
        if self._schema_said is not None:
            log.warning(
                "projector no longer refused by its database %s: its schema migrated",
                self._store.url,
            )
            self._schema_said = None
        assigned = consumer.assignment()
        if not assigned:
            return
        with contextlib.suppress(IllegalStateError):  # no longer assigned: the owner's
            await self._seek(consumer, assigned)
            consumer.resume(*assigned)

    async def _project(self, consumer: AIOKafkaConsumer, taken: dict[TopicPartition, Any]) -> None:
        batch: list[Sourced] = []
        again: dict[TopicPartition, int] = {}  # where a letter Kafka did not take was
        for tp, records in taken.items():
            for record in records:
                try:
                    event = await self._dead_letters.decoded(
                        lambda raw: decode(LifecycleEvent, raw),
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                    )
                except Exception:  # not written (said by ``DeadLetters``): read again from it
                    again[tp] = record.offset
                    break
                if event is not None:
                    batch.append(Sourced(record.topic, record.partition, record.offset, event))
        offsets = {tp: again.get(tp, records[-1].offset + 1) for tp, records in taken.items()}
        read = {(tp.topic, tp.partition): o for tp, o in offsets.items()}
        recorded = {
            (tp.topic, tp.partition): self.recorded[tp] for tp in taken if tp in self.recorded
        }
        try:
            await self._until_done(
                "projection write",
                lambda: self._store.apply(batch, read=read, recorded=recorded),
            )
        except ProjectionBehind as behind:
            await self._read_again(consumer, behind)
            return
        self.applied.update(offsets)
        self.recorded.update(offsets)
        for tp, offset in again.items():  # its letter not written: read again from it
            with contextlib.suppress(IllegalStateError):  # no longer assigned: the owner's
                consumer.seek(tp, offset)
        await self._statistics()
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # a rebalance took them: the owner resumes from the SQL rows
            log.info("projector could not commit a batch (%s)", type(exc).__name__)
        else:
            self._committed.update(offsets)
        if again:  # (not sent again without pause)
            await asyncio.sleep(LETTER_AGAIN_SECONDS)

    async def _statistics(self) -> None:
        """Once a minute at most, between batches: SQLite's planner statistics gathered again
        when the projection has grown enough since (``ProjectionStore.refresh_statistics``).
        A failure is said and left for the next time: statistics never hold up a batch."""
        if time.monotonic() < self._statistics_due:
            return
        self._statistics_due = time.monotonic() + STATISTICS_CHECK_SECONDS
        try:
            await self._answered("projection statistics", self._ran_analyze)
        except SQLAlchemyError as exc:
            log.warning("gathering the projection's statistics failed: %s", database_said(exc))

    def _ran_analyze(self) -> None:
        started = time.monotonic()
        if self._store.refresh_statistics():
            log.info("projection statistics gathered in %.1f s", time.monotonic() - started)

    async def _read_again(self, consumer: AIOKafkaConsumer, behind: ProjectionBehind) -> None:
        """The database went back under the projector (a backup restored, the projection
        emptied): the batch is dropped, and every partition is read again from where the
        database says it has read to, as after a restart; what it lacks is filled from the log."""
        log.warning(
            "the projection holds less than this projector wrote into it (restored from a "
            "backup? emptied?): %s; reading %s again from where the projection has read to",
            ", ".join(
                f"partition={partition} offset={'nothing' if mark is None else mark} "
                f"(written to {self.recorded[TopicPartition(topic, partition)]})"
                for (topic, partition), mark in sorted(behind.marks.items())
            ),
            self.config.topic,
        )
        await self.resume(consumer.assignment())

    async def resume(self, assigned: set[TopicPartition]) -> None:
        """Each assigned partition from where the projection says it has read to (committed
        offsets can lag behind it, or run ahead of it when its database was restored or is
        another one); a partition it holds nothing of, from its earliest offset: a new or
        emptied database is filled from the log, as far back as the topic's retention reaches."""
        consumer = self.consumer
        if consumer is None:
            return
        if self._assignor.refused_for is not None:  # the leader gave it nothing
            await self._refused(consumer, self._assignor.refused_for)
            return
        if not assigned:
            return
        for tp in assigned:  # what it recorded before says nothing of where it reads now
            self.recorded.pop(tp, None)
            self._committed.pop(tp, None)
        # aiokafka fetches a partition once it is assigned, while this runs, and hands out
        # what it fetched: paused, nothing of them is taken before they are sought (a record
        # taken from the group's commit and then read again from the seek was projected, or
        # dead-lettered, twice)
        consumer.pause(*assigned)
        held_back = False
        try:
            # only until it has projected: from then on its database is the group's (the
            # leader's assignor says so), and a member it sees on another database is the
            # one refused. A projector that had projected and held its partitions back
            # too, reading a refused member's assignment of before the rebalance, had the
            # group rebalance again and again, neither ever assigned (one run in ten)
            held_back = not self._projected and await self._other_database(consumer)
            if held_back:
                return  # left paused: nothing of them is taken before the leader decides
            self._projected = True
            if self._said is not None:
                log.warning(
                    "projector no longer refused: group %s writes its database (database id "
                    "%s) now",
                    self.config.group,
                    self.database,
                )
                self._said = self.database_error = None
            if not self._migrated:  # left paused: ``run`` migrates, then seeks them
                self._migration_due = held_back = True
                return
            await self._seek(consumer, assigned)
        finally:
            if not held_back:
                consumer.resume(*assigned)

    async def _refused(self, consumer: AIOKafkaConsumer, theirs: str) -> None:
        """The leader gave it no partition: its database is not the group's. A refusal can be
        one the group no longer means: a refused member started again within its session is
        handed its last assignment by the coordinator, with no rebalance, after the group may
        have moved to its database (every other projector started again on it). So, once: if
        no member holding partitions writes another database now, it has the group rebalance
        (the leader decides again) rather than stop."""
        if not self._asked_again:
            try:
                holding = await other_database(consumer, self.config.group, self.database)
            except KafkaError:
                holding = theirs
            if holding is None:
                log.info(
                    "projector was refused by an earlier assignment of group %s, and no "
                    "member holding partitions writes another database now: rejoining",
                    self.config.group,
                )
                self._asked_again = True
                self._assignor.rejoins += 1
                rejoin_group(consumer)
                return
        self.refused = refusal(self.config.group, self.database, theirs)

    async def _other_database(self, consumer: AIOKafkaConsumer) -> bool:
        """Another member holding partitions writes another database: a projector that
        stopped and started again within its session (static membership) on another database
        is given its partitions again with no assignor asked. It asks the group to rebalance
        (joining with metadata of its own, which the coordinator takes as a change), so that
        the leader assigns, and holds its partitions back meanwhile."""
        try:
            theirs = await other_database(consumer, self.config.group, self.database)
        except KafkaError as exc:  # the assignor checked every member that joined with it
            log.warning(
                "projector could not read its group's members (%s): their databases not "
                "checked at this assignment",
                type(exc).__name__,
            )
            return False
        if theirs is None:
            return False
        log.warning(
            "another member of group %s holding partitions writes another database (database "
            "id %s) than this projector (database id %s): holding its partitions back, and "
            "rejoining so that the group's leader assigns them",
            self.config.group,
            theirs,
            self.database,
        )
        self._assignor.rejoins += 1
        rejoin_group(consumer)
        return True

    async def _seek(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        try:
            marks, holds = await asyncio.to_thread(self._marks, assigned)
        except SQLAlchemyError as exc:
            # from the group's committed offsets, then: right for the database it last
            # projected into, which a database out of reach for a moment most likely is
            log.error(
                "projector could not read its offset marks (%s): from the group's committed "
                "offsets",
                type(exc).__name__,
            )
            return
        fresh = [tp for tp, mark in marks.items() if mark is None]
        if fresh:
            await self._from_earliest(consumer, fresh)
        for tp, mark in marks.items():
            if mark is not None:
                consumer.seek(tp, mark)
                self.applied[tp] = mark
        if not holds:
            log.info("projection empty: filling from the earliest offsets of %s", self.config.topic)
            return
        log.info(
            "projector resumes %s where the projection has read to: %s",
            self.config.topic,
            ", ".join(
                f"partition={tp.partition} offset="
                + ("earliest (nothing of it projected)" if mark is None else str(mark))
                for tp, mark in sorted(marks.items())
            ),
        )

    async def _commit_idle(self, consumer: AIOKafkaConsumer) -> None:
        """Nothing to read for ``IDLE_COMMIT_SECONDS``: where each partition was read to
        committed, where the group's commit is not known to say it (it commits with each
        batch, and nothing of a partition sought since). A batch written whose commit a
        rebalance refused (its partitions given to another member) left the group's lag
        naming records the projection holds, on a partition with nothing more to read for
        good (a lag alert that never clears; a bench's two workers waited 120 s for it). Not
        committed at the resume itself: the rebalance listener runs before the group's other
        members have their assignment, and a commit then is refused as a rebalance in
        progress, which has aiokafka rejoin: each member's rejoin rebalanced the group again."""
        due = {
            tp: at
            for tp, at in self.applied.items()
            if self._committed.get(tp) != at and tp in consumer.assignment()
        }
        if not due:
            return
        try:
            await consumer.commit(due)
        except KafkaError as exc:  # a rebalance took them: their owner commits its own
            log.info("projector could not commit where it has read to (%s)", type(exc).__name__)
            return
        self._committed.update(due)

    def _marks(
        self, assigned: set[TopicPartition]
    ) -> tuple[dict[TopicPartition, int | None], bool]:
        marks = {tp: self._store.next_offset(tp.topic, tp.partition) for tp in assigned}
        holds = any(mark is not None for mark in marks.values()) or self._store.holds(
            self.config.topic
        )
        return marks, holds

    async def _from_earliest(self, consumer: AIOKafkaConsumer, fresh: list[TopicPartition]) -> None:
        try:
            starts = await consumer.beginning_offsets(fresh)
        except KafkaError as exc:  # from 0: out of range, the consumer resets to the earliest
            log.info("projector reads from offset 0 (%s)", type(exc).__name__)
            starts = dict.fromkeys(fresh, 0)
        for tp in fresh:
            consumer.seek(tp, starts[tp])
            self.applied[tp] = starts[tp]

    async def _until_done(
        self, what: str, work: Callable[[], object], *, migrate_first: bool = True
    ) -> None:
        """Block this partition until the database does ``work`` (a batch and how far it was
        read, the schema's migration), off the event loop: nothing projected is skipped. Each
        failure is logged with what the database said, and is the projector's ``/readyz``
        status until the work is done; ``ProjectionBehind``: the database went back in time.
        ``migrate_first``: the schema migrated again before each retry (a database made again
        under it), not for the migration itself or what is asked before it."""
        delay, failures = DATABASE_RETRY_FIRST_SECONDS, 0
        while True:
            try:
                if failures and migrate_first:  # a database made again has no tables
                    await self._answered(what, self._store.upgrade_schema)
                await self._answered(what, work)
            except SQLAlchemyError as exc:
                failures += 1
                self.database_error = (
                    f"{'database unreachable' if database_unusable(exc) else 'database error'}: "
                    f"{database_said(exc)}"
                )
                log.error("%s failed, retrying in %.1fs: %s", what, delay, self.database_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DATABASE_RETRY_MAX_SECONDS)
                continue
            if failures:
                log.warning("%s done after %d failed tries", what, failures)
            self.database_error = None
            return

    async def _answered(self, what: str, work: Callable[[], T]) -> T:
        """``work`` in a thread (SQL is blocking I/O), said once it has waited
        ``DATABASE_SILENCE_SECONDS`` for the database, and then every time as long again: in
        the log and as the ``/readyz`` status, until it ends (a thread cannot be cut short)."""
        running = asyncio.ensure_future(asyncio.to_thread(work))
        waited = 0.0
        try:
            while not (await asyncio.wait({running}, timeout=DATABASE_SILENCE_SECONDS))[0]:
                waited += DATABASE_SILENCE_SECONDS
                self.database_error = f"database not answering: {what} has waited {waited:.0f} s"
                log.error("%s has waited %.0f s for the database", what, waited)
        except asyncio.CancelledError:  # stopping: its thread ends when the database answers
            running.cancel()
            raise
        if waited:
            log.warning("%s answered after more than %.0f s", what, waited)
        return running.result()

    def forget(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self.applied.pop(tp, None)
            self.recorded.pop(tp, None)
            self._committed.pop(tp, None)


async def _take(
    consumer: AIOKafkaConsumer, stopped: Callable[[], bool]
) -> dict[TopicPartition, list[Any]]:
    """Up to ``BATCH`` records, gathered for at most ``WITHIN_SECONDS`` after the first: one
    transaction and one commit per batch, not per fetch (a commit is a round trip to the
    broker, a transaction a sync to disk); nothing once ``stopped``, or once nothing came for
    ``IDLE_COMMIT_SECONDS``."""
    loop = asyncio.get_running_loop()
    taken: dict[TopicPartition, list[Any]] = {}
    count, deadline = 0, loop.time() + WITHIN_SECONDS
    idle_until = loop.time() + IDLE_COMMIT_SECONDS
    while count < BATCH and not stopped():
        left = deadline - loop.time()
        if left <= 0:
            break
        fetched = await consumer.getmany(timeout_ms=int(left * 1000), max_records=BATCH - count)
        for tp, records in fetched.items():
            taken.setdefault(tp, []).extend(records)
            count += len(records)
        if not count:  # nothing yet: a fresh window, unless it was idle long enough
            if loop.time() >= idle_until:
                break
            deadline = loop.time() + WITHIN_SECONDS
    return taken


class _Resume(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._projector.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._projector.resume(assigned)


def register(app: Any, *, projector: Projector, metrics: WorkerMetrics) -> None:
    """Run the projector as a worker task (not a faust agent: it commits by itself)."""

    async def run_projector() -> None:
        await projector.run()

    app.task(run_projector)
    metrics.consumers.append(projector)


# --- the projector on its own ------------------------------------------------------------------


class _Send:
    """The dead-letter topic through the projector's own producer (what ``DeadLetters`` sends
    with): the letter's delivery, which ``DeadLetters.decoded`` awaits."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer, self._topic = producer, topic

    async def send(self, *, key: bytes | None, value: bytes) -> Any:
        return await self._producer.send(self._topic, value, key=key)  # (its delivery)


async def serve(settings: Settings) -> None:
    """Run the projector alone until cancelled: ``talkstream projector``, which is also the
    worker's child process when ``TALKSTREAM_PROJECTOR=process``."""
    store = ProjectionStore.from_url(settings.resolved_database_url, migrate_schema=False)
    # a letter Kafka gave up on is sent again (``Projector._project``): under a new producer
    # id, or the broker refused every later one as out of sequence
    producer = IdempotentProducer(**client_options(settings))
    metrics = ProcessMetrics()  # served: its lag and its dead letters, nothing else
    http = None
    try:
        # started inside: a stop while it connects (the worker killed as its child starts)
        # closes it, where asyncio would log an unclosed producer as an ERROR
        await producer.start()
        letters = DeadLetters(
            _Send(producer, BY_NAME["deadletter"].full_name(settings)),
            metrics.dead_letters,
            SystemClock(),
        )
        projector = Projector(ProjectorConfig.of(settings), store, letters)
        metrics.consumers.append(projector)
        http = await serve_or_log(None, metrics, settings, "projector")
        await until_taken(projector, again=os.environ.get(PARENT_ENV) is not None)
    finally:
        if http is not None:
            await http.cleanup()
        await producer.stop()
        store.close()


async def until_taken(
    projector: Projector, *, again: bool, clock: Callable[[], float] = time.monotonic
) -> None:
    """``projector.run()``; refused (by its group, ``OtherDatabase``, or by its database's
    schema, ``SchemaRefused``) and ``again`` (the worker's child): asked again after
    ``REFUSED_RETRY_FIRST_SECONDS``, doubling up to ``REFUSED_RETRY_MAX_SECONDS``, its
    ``/readyz`` saying the refusal meanwhile, where the child exited and the worker started it
    again every second, saying the same ERROR each time. A group's refusal ends when the
    group's projectors move to its database (or stop); a schema's when an operator takes the
    database back to a migration this version knows, or rebuilds it. A run that lasted
    ``REFUSED_RAN_SECONDS`` (``clock``) before its refusal starts the pauses over: a projector
    refused once, then projecting for hours, then refused again, asks again after a second, not
    after the minute it had reached."""
    delay = REFUSED_RETRY_FIRST_SECONDS
    while True:
        started = clock()
        try:
            await projector.run()
            return
        except (OtherDatabase, SchemaRefused) as refused:
            if not again:
                raise
            asked = (
                f"group {projector.config.group}"
                if isinstance(refused, OtherDatabase)
                else "its database"
            )
        if clock() - started >= REFUSED_RAN_SECONDS:  # it had run: the pauses start over
            delay = REFUSED_RETRY_FIRST_SECONDS
        log.info("projector asks %s again in %.0f s (the worker goes on without it)", asked, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, REFUSED_RETRY_MAX_SECONDS)


async def until_topics_fit(check: Callable[[], Awaitable[object]], *, again: bool) -> None:
    """``check()``, the deployment's topics as this process is set for (``ensure_topics``);
    refused for what no start again fixes (a ``ConfigError``: partitions added to the topics
    since they were created, a ledger changelog that takes smaller records than an entry, its
    credentials refused) and ``again`` (the worker's child, started again after partitions
    were added under the running worker): said once as an ERROR, with what to do, and asked
    again after ``REFUSED_RETRY_FIRST_SECONDS``, doubling up to ``REFUSED_RETRY_MAX_SECONDS``,
    an INFO each time, as ``until_taken`` asks its group. The child exited on it instead, and
    the worker started it again a minute apart at most, an ERROR of each every time, for as
    long as the worker ran. It goes on once the topics fit (a changelog's limit raised); the
    worker, which says the partitions added at its rebalances, goes on without it meanwhile."""
    delay, said = REFUSED_RETRY_FIRST_SECONDS, None
    while True:
        try:
            await check()
        except ConfigError as refused:
            if not again:
                raise
            if str(refused) != said:
                said = str(refused)
                log.error("projector cannot start: %s", said)
            else:
                log.info("projector still refused by the deployment's topics (said above)")
            log.info(
                "projector asks Kafka about the topics again in %.0f s (the worker goes on "
                "without it)",
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, REFUSED_RETRY_MAX_SECONDS)
            continue
        if said is not None:
            log.warning("projector no longer refused: the deployment's topics fit its settings")
        return

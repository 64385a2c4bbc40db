"""Audit replay: the log is the source of truth, and this reads it back.

``rebuild``  reads [lifecycle] from its earliest offsets and applies every event to a
             projection store (a fresh database): the same rows the live projector writes.
``LogReader`` reads a topic's partitions from their earliest offsets up to the end offsets
             captured when it started; ``streams.ops.verify`` re-derives [lifecycle] with it.

Both are read-only towards Kafka and the outside world: a plain consumer without a group
(nothing committed), manually assigned; nothing is produced, no OpenAI or Talkable call is
made. They connect as every process does (``client_options``: TLS and SASL from the settings).

On more than one core a rebuild into an empty projection rebuilds each share of the [lifecycle]
partitions but this process's own in a forked helper (``streams.ops.helpers``; a request's
events are all in one partition).

``until_ms`` cuts by the Kafka record timestamp (when the ledger wrote the transition), via
``offsets_for_times``: the projection as it could have been seen at that moment. The event's
own ``at_ms`` is not used for the cut: for a request with a usage limit it is Talkable's
rendered ``current_time``, which says when the decision applies, not when it was recorded.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, IntegrityError

from models.events import LifecycleEvent
from streams import heap
from streams.codecs import decode
from streams.errors import DecodeError, TalkstreamError
from streams.kafka_options import (
    broker_error,
    client_options,
    reading_consumer,
    start_reading,
    stop_consumer,
    waiting_for_kafka,
)
from streams.ops.helpers import (
    FORK,
    Channel,
    Helper,
    default_processes,
    run_all,
    shares,
)
from streams.projection.rows import Sourced
from streams.projection.store import ProjectionStore
from streams.settings import Settings

Progress = Callable[[int], None]
Identity = tuple[str, str, str, int]

FETCH_RECORDS = 2000
APPLY_BATCH = 10_000  # lifecycle events per projection transaction in a replay
STALL_SECONDS = 60.0  # no record for this long while behind the captured end: give up
REFUSED = ("23505", "40P01")  # PostgreSQL's SQLSTATEs: a unique key taken, a deadlock broken


class ReplayError(TalkstreamError):
    pass


class Record(NamedTuple):  # a tuple: a replay makes one per record
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


@dataclass(frozen=True)
class Skipped:
    """A record that could not be used (the live agents dead-letter the same ones)."""

    topic: str
    partition: int
    offset: int
    reason: str


class LogReader:
    """One topic from its earliest offsets to the end offsets captured on entry."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        until_ms: int | None = None,
        bounds: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.until_ms = until_ms
        self.bounds: dict[int, tuple[int, int]] = {}  # partition -> [first, end)
        self._given = bounds  # these partitions and offsets (a share captured by another reader)
        self._consumer: Any = None

    @property
    def total(self) -> int:
        return sum(end - first for first, end in self.bounds.values())

    async def __aenter__(self) -> LogReader:
        self._consumer = reading_consumer(self.settings)
        try:
            numbers = (
                list(self._given)
                if self._given is not None
                else await partitions_of(self.settings, self.topic)
            )
            partitions = [TopicPartition(self.topic, p) for p in numbers]
            await start_reading(self._consumer, partitions)
            if self._given is not None:
                self.bounds = dict(self._given)
                return self
            first = await self._consumer.beginning_offsets(partitions)
            end = await self._consumer.end_offsets(partitions)
            if self.until_ms is not None:
                # the first offset written after the cut, per partition (None: none was)
                after = await self._consumer.offsets_for_times(
                    {tp: self.until_ms + 1 for tp in partitions}
                )
                end = {tp: after[tp].offset if after[tp] else end[tp] for tp in partitions}
        except KafkaError as exc:
            await self._stop()
            raise await broker_error(self.settings, exc) from exc
        except BaseException:
            await self._stop()
            raise
        self.bounds = {tp.partition: (first[tp], max(first[tp], end[tp])) for tp in partitions}
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def batches(self, only: Collection[int] | None = None) -> AsyncIterator[list[Record]]:
        """Records in offset order per partition (of the partitions ``only``, default all), in
        batches (partitions interleave)."""
        consumer = self._consumer
        todo = {
            TopicPartition(self.topic, p): end
            for p, (first, end) in self.bounds.items()
            if end > first and (only is None or p in only)
        }
        if not todo:
            return
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, self.bounds[tp.partition][0])
        last_progress = time.monotonic()
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=FETCH_RECORDS)
            batch = [
                Record(r.topic, r.partition, r.offset, r.timestamp, r.value)
                for tp, records in fetched.items()
                for r in records
                if r.offset < todo.get(tp, -1)
            ]
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
            if batch:
                last_progress = time.monotonic()
                yield batch
            elif time.monotonic() - last_progress > STALL_SECONDS:
                behind = {tp.partition: end for tp, end in todo.items()}
                raise ReplayError(f"{self.topic}: no records for {STALL_SECONDS:.0f}s; {behind=}")

    async def _stop(self) -> None:
        if self._consumer is None:
            return
        consumer, self._consumer = self._consumer, None
        await stop_consumer(consumer)


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The topic's partition ids, from the cluster's metadata (never creates the topic)."""
    seconds = 40  # aiokafka's default, said by the notice
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=seconds * 1000)
    try:
        with waiting_for_kafka(settings, seconds):
            await admin.start()
        described = await admin.describe_topics()  # all topics: asking for one may create it
    finally:
        await admin.close()
    for found in described:
        if found["topic"] == topic and found["error_code"] == 0:
            return sorted(p["partition"] for p in found["partitions"])
    raise ReplayError(f"topic {topic} does not exist on {settings.kafka_bootstrap}")


# --- rebuild ----------------------------------------------------------------------------------


@dataclass
class RebuildSummary:
    topic: str
    database: str
    partitions: int
    records: int = 0
    applied: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    requests: int = 0
    transitions: int = 0
    states: dict[str, int] = field(default_factory=dict)
    until_ms: int | None = None
    seconds: float = 0.0
    split_requests: bool = False  # a request had events in two shares: rebuilt in one process


async def rebuild(
    settings: Settings,
    topic: str,
    store: ProjectionStore,
    *,
    until_ms: int | None = None,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
    processes: int | None = None,
) -> RebuildSummary:
    """Read, decode and apply in order, a batch of ``APPLY_BATCH`` events at a time
    (``_Applier``).

    ``processes`` (default: one per core): a rebuild into an empty projection splits the
    partitions into that many shares (a request's events are all in one). This process
    rebuilds the first share while a forked helper rebuilds each other one, all of them
    straight into the target: PostgreSQL writes their transactions side by side, SQLite one
    at a time (a writer waits for the other's batch; the decoding and the rows' Python, most of
    the work, go on meanwhile). Should a request have events in two shares (partitions were
    added to the topic while it was in flight), the second write of its row is refused, and the
    target is emptied and rebuilt in this process alone. A projection that is not empty is
    rebuilt here."""
    started = time.monotonic()
    with heap.bulk():
        async with LogReader(settings, topic, until_ms) as reader:

            def fresh(split_requests: bool = False) -> RebuildSummary:
                partitions = len(reader.bounds)
                return RebuildSummary(
                    topic, store.url, partitions, until_ms=until_ms, split_requests=split_requests
                )

            summary = fresh()
            if on_total:
                on_total(reader.total)
            empty = store.is_empty()
            split = (
                shares(reader.bounds, processes or default_processes()) if FORK and empty else []
            )
            beside = len(split) > 1
            if beside and not await _rebuild_beside(
                settings, reader, store, split, summary, progress
            ):
                store.reset()  # a request in two shares: start again, here
                summary, beside = fresh(split_requests=True), False
            if not beside:
                # into an empty store only the requests this replay wrote can have rows
                await _apply_all(reader, store, set() if empty else None, summary, progress)
        summary.skipped.sort(key=lambda s: (s.partition, s.offset))
        # every row at once: the planner's statistics of what is there now (SQLite gathers none
        # by itself, PostgreSQL's autovacuum only a while later)
        store.gather_statistics()
        summary.requests, summary.transitions = store.counts()
        summary.states = store.states()
    summary.seconds = time.monotonic() - started
    return summary


async def _apply_all(
    reader: LogReader,
    store: ProjectionStore,
    rebuilt: set[str] | None,
    summary: RebuildSummary,
    progress: Progress | None,
    *,
    only: Collection[int] | None = None,
    helpers: Sequence[Helper] = (),
    alone: bool = True,
) -> None:
    """Apply the reader's records (of the partitions ``only``, default all) to the store
    (``alone``: no other process shares the rebuild), each batch with the next offset of
    every partition it read, as the live projector records them (``projected_offsets``),
    and the last with the end of every partition read (the end captured at start, or
    ``--until``'s cut; an empty partition's too): where a projector started on the rebuilt
    database resumes, past the records that did not decode (a projector read them again
    and dead-lettered them twice) and not before a cut (nothing after it is skipped)."""
    sourced: list[Sourced] = []
    read: dict[tuple[str, int], int] = {}
    async with _Applier(store, rebuilt, alone=alone) as applier:
        async for batch in reader.batches(only):
            sourced += _sourced(batch, summary.skipped)
            for record in batch:  # in offset order within each partition
                read[(record.topic, record.partition)] = record.offset + 1
            summary.records += len(batch)
            if progress:
                progress(len(batch))
            for helper in helpers:
                helper.drain(progress)
            if len(sourced) >= APPLY_BATCH:
                await applier.apply(sourced, read)
                sourced, read = [], {}
        ends = {
            (reader.topic, partition): end
            for partition, (_, end) in reader.bounds.items()
            if only is None or partition in only
        }
        await applier.apply(sourced, read | ends)
    summary.applied += applier.applied


async def _rebuild_beside(
    settings: Settings,
    reader: LogReader,
    store: ProjectionStore,
    split: list[dict[int, tuple[int, int]]],
    summary: RebuildSummary,
    progress: Progress | None,
) -> bool:
    """The first share here, each other in a helper, all into the target. False when a
    request was in two shares (a write of its row the database refused)."""
    target = store.engine.url.render_as_string(hide_password=False)
    helpers = [
        Helper(f"replay {sorted(share)}", _rebuild_share, settings, reader.topic, share, target)
        for share in split[1:]
    ]
    try:
        try:
            await _apply_all(
                reader,
                store,
                set(),
                summary,
                progress,
                only=split[0],
                helpers=helpers,
                alone=False,
            )
        except Exception as exc:
            if not _conflict(exc):
                raise
            return False
        for rebuilt in run_all(helpers, progress):
            if rebuilt is None:
                return False
            records, applied, skipped = rebuilt
            summary.records += records
            summary.skipped += skipped
            summary.applied += applied
        return True
    finally:
        for helper in helpers:
            helper.stop()  # ended before the caller empties the target after a refusal


def _rebuild_share(
    channel: Channel,
    settings: Settings,
    topic: str,
    share: dict[int, tuple[int, int]],
    target: str,
) -> tuple[int, int, list[Skipped]] | None:
    """A helper's side: rebuild one share of the partitions into the database at the URL
    ``target`` (its schema is up to date: the caller's store made it so); None if a write there
    was refused because another process had written the same request."""
    store = ProjectionStore.from_url(target, migrate_schema=False)
    summary = RebuildSummary(topic, store.url, len(share))

    async def read() -> None:
        async with LogReader(settings, topic, bounds=share) as reader:
            await _apply_all(reader, store, set(), summary, channel.progress, alone=False)

    try:
        with heap.bulk():
            asyncio.run(read())
    except Exception as exc:
        if not _conflict(exc):
            raise
        return None
    finally:
        store.close()
    return summary.records, summary.applied, summary.skipped


def _conflict(exc: Exception) -> bool:
    """Whether the database refused a write because another process of the same rebuild
    wrote the same request first: a unique key, or the deadlock of two such writes (from
    SQLAlchemy, or from the driver itself for PostgreSQL's ``COPY``)."""
    found = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(exc, IntegrityError) or getattr(found, "sqlstate", None) in REFUSED


class _Applier:
    """Applies a rebuild's batches to the store in the order given, each in one transaction.

    Into a database server (PostgreSQL) a batch is written from a thread while the next one is
    read and decoded: the server does its part of the work on another core meanwhile, where
    inline the reader waited for it (30% of a rebuild's time; ``bench/PROFILE.md``, seventeenth
    round). SQLite's work is this process's, and a thread would only contend with the
    decoding for the GIL (slower there, same round): its batches are applied inline, and so
    are those of a rebuild shared by processes (``alone=False``), which keep both cores busy
    already (the thread was slower there: twenty-second round). One batch at most is being
    written; leaving the block waits for it, also on an error."""

    def __init__(
        self, store: ProjectionStore, rebuilt: set[str] | None, *, alone: bool = True
    ) -> None:
        self.store, self.rebuilt = store, rebuilt
        self.applied = 0  # events that were new
        self._writer = (
            None
            if store.in_process or not alone
            else ThreadPoolExecutor(1, thread_name_prefix="replay-writer")
        )
        self._writing: asyncio.Future[int] | None = None

    async def apply(
        self, batch: list[Sourced], read: dict[tuple[str, int], int] | None = None
    ) -> None:
        """``read``: the next offset of each partition the batch was read from, recorded with
        it (``ProjectionStore.apply``)."""
        await self._written()
        write = functools.partial(self.store.apply, batch, self.rebuilt, read=read)
        if self._writer is None:
            self.applied += write()
        else:
            self._writing = asyncio.get_running_loop().run_in_executor(self._writer, write)

    async def _written(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            self.applied += await writing

    async def __aenter__(self) -> _Applier:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                await self._written()
        finally:
            if self._writing is not None:
                self._writing.cancel()  # its outcome is not wanted after an error
            if self._writer is not None:
                self._writer.shutdown(wait=True)  # a write under way ends before the store closes


def _sourced(records: list[Record], skipped: list[Skipped]) -> list[Sourced]:
    sourced = []
    for record in records:
        event = lifecycle_event(record, skipped)
        if event is not None:
            sourced.append(Sourced(record.topic, record.partition, record.offset, event))
    return sourced


def lifecycle_event(record: Any, skipped: list[Skipped]) -> LifecycleEvent | None:
    """The record's lifecycle event, or None after noting why it was skipped."""
    try:
        return decode(LifecycleEvent, record.value)
    except DecodeError as exc:
        skipped.append(Skipped(record.topic, record.partition, record.offset, str(exc)))
        return None

"""Audit replay: the log is the source of truth, and these read it back.

``rebuild``  reads [lifecycle] from its earliest offsets and applies every event to a
             projection store (a fresh database): the same rows the live projector writes.
``verify``   re-runs the pure rules (``models.ledger.handle``) over [requests] in offset order
             per partition and compares the lifecycle events they derive with the ones
             recorded on [lifecycle], matched by (request_id, type, state, attempt). Every
             field must be equal except ``schema_version`` (which code wrote it); times,
             causes, windows, tokens and errors all come from the messages, never from a
             clock. Order across partitions is not compared (it carries no meaning), and an
             identical re-emission (at-least-once, after a crash) is counted, not a difference.

Both are read-only towards Kafka and the outside world: a plain consumer without a group
(nothing committed), manually assigned, reading up to the end offsets captured when it
started; nothing is produced, no OpenAI or Talkable call is made. They connect as every
process does (``client_options``: TLS and SASL from the settings).

``until_ms`` cuts by the Kafka record timestamp (when the ledger wrote the transition), via
``offsets_for_times``: the projection as it could have been seen at that moment. The event's
own ``at_ms`` is not used for the cut: for a request with a usage limit it is Talkable's
rendered ``current_time``, which says when the decision applies, not when it was recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any, Literal, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from models.events import LifecycleEvent
from models.ledger import PersonState, Policy, handle
from streams import heap
from streams.codecs import decode, decode_requests
from streams.errors import DecodeError, TalkstreamError
from streams.kafka_options import broker_error, client_options
from streams.projection.store import ProjectionStore, Sourced
from streams.settings import Settings

Progress = Callable[[int], None]
Identity = tuple[str, str, str, int]

FETCH_RECORDS = 2000
APPLY_BATCH = 10_000  # lifecycle events per projection transaction in a replay
STALL_SECONDS = 60.0  # no record for this long while behind the captured end: give up


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

    def __init__(self, settings: Settings, topic: str, until_ms: int | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.until_ms = until_ms
        self.bounds: dict[int, tuple[int, int]] = {}  # partition -> [first, end)
        self._consumer: Any = None

    @property
    def total(self) -> int:
        return sum(end - first for first, end in self.bounds.values())

    async def __aenter__(self) -> LogReader:
        self._consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            partitions = [
                TopicPartition(self.topic, p)
                for p in await partitions_of(self.settings, self.topic)
            ]
            await self._consumer.start()
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

    async def batches(self) -> AsyncIterator[list[Record]]:
        """Records in offset order per partition, in batches (partitions interleave)."""
        consumer = self._consumer
        todo = {
            TopicPartition(self.topic, p): end
            for p, (first, end) in self.bounds.items()
            if end > first
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
        task = asyncio.current_task()
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            # aiokafka 0.14: a group-less consumer's stop() re-raises the cancellation of its
            # own fetch task; swallow only that one, never a cancellation of ours
            if task is not None and task.cancelling():
                raise


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The topic's partition ids, from the cluster's metadata (never creates the topic)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
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


async def rebuild(
    settings: Settings,
    topic: str,
    store: ProjectionStore,
    *,
    until_ms: int | None = None,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> RebuildSummary:
    started = time.monotonic()
    with heap.bulk():
        summary = await _rebuild(settings, topic, store, until_ms, on_total, progress)
    summary.seconds = time.monotonic() - started
    return summary


async def _rebuild(
    settings: Settings,
    topic: str,
    store: ProjectionStore,
    until_ms: int | None,
    on_total: Callable[[int], None] | None,
    progress: Progress | None,
) -> RebuildSummary:
    async with LogReader(settings, topic, until_ms) as reader:
        summary = RebuildSummary(
            topic=topic, database=store.url, partitions=len(reader.bounds), until_ms=until_ms
        )
        if on_total:
            on_total(reader.total)
        # one transaction writes while the next records are read and decoded (the database
        # releases the GIL while it works); one at a time, so each partition stays in order
        writing: asyncio.Future[int] | None = None
        sourced: list[Sourced] = []
        async for batch in reader.batches():
            for record in batch:
                event = _lifecycle_event(record, summary.skipped)
                if event is not None:
                    sourced.append(Sourced(record.topic, record.partition, record.offset, event))
            summary.records += len(batch)
            if progress:
                progress(len(batch))
            if len(sourced) >= APPLY_BATCH:
                if writing is not None:
                    summary.applied += await writing
                writing = asyncio.ensure_future(asyncio.to_thread(store.apply, sourced))
                sourced = []
        if writing is not None:
            summary.applied += await writing
        summary.applied += await asyncio.to_thread(store.apply, sourced)
    summary.requests, summary.transitions = store.counts()
    summary.states = store.states()
    return summary


# --- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """``missing``: derived, not recorded; ``unexpected``: recorded, not derived;
    ``changed``: both, with different fields (``fields``: name -> (derived, recorded))."""

    kind: Literal["missing", "unexpected", "changed"]
    request_id: str
    type: str
    state: str
    attempt: int
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        head = f"{self.kind:<10} {self.request_id} {self.type} state={self.state} "
        head += f"attempt={self.attempt}"
        if not self.fields:
            return head
        changes = "; ".join(
            f"{k}: derived={d!r} recorded={r!r}" for k, (d, r) in self.fields.items()
        )
        return f"{head}: {changes}"


@dataclass
class VerifySummary:
    requests_topic: str
    lifecycle_topic: str
    messages: int = 0
    derived: int = 0
    recorded: int = 0
    matched: int = 0
    repeated: int = 0  # identical re-emissions on [lifecycle] (at-least-once), not differences
    differences: list[Difference] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


async def verify(
    settings: Settings,
    requests_topic: str,
    lifecycle_topic: str,
    policy: Policy,
    *,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> VerifySummary:
    """Re-derive [lifecycle] from [requests] and report every difference.

    Run it on a quiet pipeline: a request still in flight when the offsets are captured can
    show as ``missing`` (the ledger has not written its next transition yet). Both topics'
    end offsets are captured before either is read, [requests] first.
    """
    started = time.monotonic()
    check = Rederivation(policy, VerifySummary(requests_topic, lifecycle_topic))
    with heap.bulk():
        await _rederive(settings, check, requests_topic, lifecycle_topic, on_total, progress)
        summary = check.compare()
    summary.seconds = time.monotonic() - started
    return summary


async def _rederive(
    settings: Settings,
    check: Rederivation,
    requests_topic: str,
    lifecycle_topic: str,
    on_total: Callable[[int], None] | None,
    progress: Progress | None,
) -> None:
    async with (
        LogReader(settings, requests_topic) as requests,
        LogReader(settings, lifecycle_topic) as lifecycle,
    ):
        if on_total:
            on_total(requests.total + lifecycle.total)
        async for batch in requests.batches():
            for record in batch:
                check.request(record)
            if progress:
                progress(len(batch))
        async for batch in lifecycle.batches():
            for record in batch:
                check.recorded(record)
            if progress:
                progress(len(batch))


class Rederivation:
    """Re-runs the rules over [requests] records (in offset order per partition) and matches
    what they derive with the [lifecycle] records, by each event's identity."""

    def __init__(self, policy: Policy, summary: VerifySummary) -> None:
        self._policy = policy
        self._summary = summary
        self._states: dict[str, PersonState] = {}
        self._derived: dict[Identity, list[dict[str, Any]]] = {}
        self._recorded: dict[Identity, list[dict[str, Any]]] = {}

    def request(self, record: Record) -> None:
        self._summary.messages += 1
        try:
            message = decode_requests(record.value)
            # the ledger's clock only sets deadlines; the record's time stands in for it
            outcome = handle(
                self._states.get(message.person), message, self._policy, record.timestamp_ms
            )
        except Exception as exc:  # the ledger dead-letters these and keeps its state
            self._summary.skipped.append(
                Skipped(record.topic, record.partition, record.offset, repr(exc)[:300])
            )
            return
        self._states[message.person] = outcome.state
        for event in outcome.events:
            self._derived.setdefault(event.identity(), []).append(_comparable(event))

    def recorded(self, record: Record) -> None:
        logged = _lifecycle_event(record, self._summary.skipped)
        if logged is not None:
            self._recorded.setdefault(logged.identity(), []).append(_comparable(logged))

    def compare(self) -> VerifySummary:
        summary = self._summary
        summary.derived = sum(len(v) for v in self._derived.values())
        summary.recorded = sum(len(v) for v in self._recorded.values())
        _compare(self._derived, self._recorded, summary)
        return summary


def _comparable(event: LifecycleEvent) -> dict[str, Any]:
    # the event's fields as validated (no dump: a third of --verify's time went to it);
    # schema_version says which code wrote the event, not what was decided
    fields = dict(event.__dict__)
    del fields["schema_version"]
    return fields


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _compare(
    derived: dict[Identity, list[dict[str, Any]]],
    recorded: dict[Identity, list[dict[str, Any]]],
    summary: VerifySummary,
) -> None:
    for identity in sorted(derived.keys() | recorded.keys()):
        ours, theirs = derived.get(identity, []), recorded.get(identity, [])
        if not ours:
            summary.differences.extend(Difference("unexpected", *identity) for _ in theirs)
            continue
        expected = ours[0]
        for index, got in enumerate(theirs):
            if got != expected:
                changed = {
                    k: (_plain(expected.get(k)), _plain(got.get(k)))
                    for k in sorted(expected.keys() | got.keys())
                    if expected.get(k) != got.get(k)
                }
                summary.differences.append(Difference("changed", *identity, fields=changed))
            elif index < len(ours):
                summary.matched += 1
            else:
                summary.repeated += 1
        missing = len(ours) - len(theirs)
        summary.differences.extend(Difference("missing", *identity) for _ in range(missing))


def _lifecycle_event(record: Any, skipped: list[Skipped]) -> LifecycleEvent | None:
    """The record's lifecycle event, or None after noting why it was skipped."""
    try:
        return decode(LifecycleEvent, record.value)
    except DecodeError as exc:
        skipped.append(Skipped(record.topic, record.partition, record.offset, str(exc)))
        return None

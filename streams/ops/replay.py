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

On more than one core both split their work across forked processes (``streams.ops.helpers``):
verify re-derives each share of the [requests] partitions in a process of its own (a person's
messages, and so its decisions, are all in one partition) while this process reads
[lifecycle], and each matches what it derived with the recorded events' digests (the derived
events come here only when that cannot account for every recorded one); a rebuild into an
empty projection rebuilds each share of the [lifecycle] partitions but this process's own in a
helper (a request's events are all in one partition).

``until_ms`` cuts by the Kafka record timestamp (when the ledger wrote the transition), via
``offsets_for_times``: the projection as it could have been seen at that moment. The event's
own ``at_ms`` is not used for the cut: for a request with a usage limit it is Talkable's
rendered ``current_time``, which says when the decision applies, not when it was recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from hashlib import sha256
from types import TracebackType
from typing import Any, Literal, NamedTuple

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, IntegrityError

from models.events import GapProbe, LifecycleEvent
from models.ledger import PersonState, Policy, handle
from streams import heap
from streams.codecs import decode, decode_requests, encode
from streams.errors import DecodeError, TalkstreamError
from streams.kafka_options import (
    broker_error,
    client_options,
    reading_consumer,
    start_reading,
    stop_consumer,
)
from streams.ops.helpers import (
    FORK,
    Channel,
    Helper,
    answers,
    default_processes,
    run_all,
    shares,
)
from streams.projection.store import ProjectionStore, Sourced
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
    (``alone``: no other process shares the rebuild)."""
    sourced: list[Sourced] = []
    async with _Applier(store, rebuilt, alone=alone) as applier:
        async for batch in reader.batches(only):
            sourced += _sourced(batch, summary.skipped)
            summary.records += len(batch)
            if progress:
                progress(len(batch))
            for helper in helpers:
                helper.drain(progress)
            if len(sourced) >= APPLY_BATCH:
                await applier.apply(sourced)
                sourced = []
        await applier.apply(sourced)
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

    async def apply(self, batch: list[Sourced]) -> None:
        await self._written()
        if self._writer is None:
            self.applied += self.store.apply(batch, self.rebuilt)
        else:
            self._writing = asyncio.get_running_loop().run_in_executor(
                self._writer, self.store.apply, batch, self.rebuilt
            )

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
        event = _lifecycle_event(record, skipped)
        if event is not None:
            sourced.append(Sourced(record.topic, record.partition, record.offset, event))
    return sourced


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

    def key(self) -> Identity:
        return (self.request_id, self.type, self.state, self.attempt)

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
    processes: int | None = None,
) -> VerifySummary:
    """Re-derive [lifecycle] from [requests] and report every difference.

    Run it on a quiet pipeline: a request still in flight when the offsets are captured can
    show as ``missing`` (the ledger has not written its next transition yet). Both topics'
    end offsets are captured before either is read, [requests] first.

    ``processes``: how many re-derive (default: one per core); each takes a share of the
    [requests] partitions (a person's messages are all in one) while this process reads
    [lifecycle]. 1 does it all here.
    """
    started = time.monotonic()
    check = Rederivation(policy, VerifySummary(requests_topic, lifecycle_topic))
    with heap.bulk():
        async with (
            LogReader(settings, requests_topic) as requests,
            LogReader(settings, lifecycle_topic) as lifecycle,
        ):
            if on_total:
                on_total(requests.total + lifecycle.total)
            split = shares(requests.bounds, processes or default_processes()) if FORK else []
            whole = False
            if len(split) > 1:
                whole = await _rederive_beside(
                    settings, check, split, requests, lifecycle, progress
                )
            else:
                await _rederive_here(check, requests, lifecycle, progress)
        summary = check.summary if whole else check.compare()
    summary.seconds = time.monotonic() - started
    return summary


async def _rederive_here(
    check: Rederivation, requests: LogReader, lifecycle: LogReader, progress: Progress | None
) -> None:
    await _read_requests(check, requests, progress)
    await _read_recorded(check, lifecycle, progress, [])


async def _read_requests(
    check: Rederivation, requests: LogReader, progress: Progress | None
) -> None:
    async for batch in requests.batches():
        for record in batch:
            check.request(record)
        if progress:
            progress(len(batch))


async def _rederive_beside(
    settings: Settings,
    check: Rederivation,
    split: list[dict[int, tuple[int, int]]],
    requests: LogReader,
    lifecycle: LogReader,
    progress: Progress | None,
) -> bool:
    """A forked process per share of the [requests] partitions re-derives its people's
    decisions (reading its share itself, up to the offsets captured here) while this one reads
    [lifecycle]. Each then matches what it derived with the digests of the recorded events.
    True when that accounts for every recorded event (the summary is whole); otherwise (an
    event not recorded byte for byte as derived, or a request in two shares) the derived
    events are brought here for :meth:`Rederivation.compare` to match field by field."""
    helpers = [
        Helper(f"verify {sorted(share)}", _derive, settings, requests.topic, share, check.policy)
        for share in split
    ]
    try:
        await _read_recorded(check, lifecycle, progress, helpers)
        digests = check.digests()
        read = {}
        for helper, answer in answers(helpers, progress):  # each as soon as it has derived
            read[helper] = answer
            helper.send(digests)
        for helper in helpers:
            check.tally(*read[helper])
        matchings = dict(answers(helpers, progress))
        whole = check.settle([matchings[helper] for helper in helpers])
        for helper in helpers:
            helper.send(not whole)  # whether to send every derived event
        for helper in helpers:
            derived = helper.result(progress)
            if derived is not None:
                check.absorb(derived)
        return whole
    finally:
        for helper in helpers:
            helper.stop()


async def _read_recorded(
    check: Rederivation, lifecycle: LogReader, progress: Progress | None, helpers: list[Helper]
) -> None:
    async for batch in lifecycle.batches():
        for record in batch:
            check.recorded(record)
        if progress:
            progress(len(batch))
        for helper in helpers:
            helper.drain(progress)


def _derive(
    channel: Channel,
    settings: Settings,
    topic: str,
    share: dict[int, tuple[int, int]],
    policy: Policy,
) -> dict[Identity, list[bytes]] | None:
    """A helper's side: re-derive the decisions of one share of the [requests] partitions;
    answer with what it read, then with its match of the recorded events' digests; hand over
    every derived event if asked."""
    check = Rederivation(policy, VerifySummary(topic, ""))

    async def read() -> None:
        async with LogReader(settings, topic, bounds=share) as requests:
            await _read_requests(check, requests, channel.progress)

    with heap.bulk():
        asyncio.run(read())
        channel.answer((check.summary.messages, check.summary.skipped))
        channel.answer(check.match(channel.receive()))
    return check.derived if channel.receive() else None


@dataclass
class Matching:
    """One share's derived events matched with the recorded events' digests (each identity's
    first derived event with every recorded one)."""

    taken: bytes  # a byte a recorded event, in record order: 1 if it matched, else 0
    derived: int = 0
    matched: int = 0
    repeated: int = 0
    missing: list[Identity] = field(default_factory=list)  # once per derived event not recorded


SAME = None  # a recorded event byte for byte the one derived first for its identity
# what most identities were recorded as: once, byte for byte (one tuple shared by them all)
_ONCE_SAME: tuple[None] = (SAME,)
Recorded = Sequence[dict[str, Any] | None]  # an identity's recorded events, in record order


class Rederivation:
    """Re-runs the rules over [requests] records (in offset order per partition) and matches
    what they derive with the [lifecycle] records, by each event's identity.

    Derived events are kept as the bytes the ledger would have written (the same codec); a
    recorded record with exactly those bytes matches without being decoded. Any other is
    decoded and compared field by field (every field but ``schema_version``). A helper that
    derived a share matches its events with the recorded ones' SHA-256 digests instead
    (:meth:`match`); when the shares' matches take every recorded record once, that is the
    summary (:meth:`settle`), else its derived events come here for :meth:`compare`."""

    def __init__(self, policy: Policy, summary: VerifySummary) -> None:
        self.policy = policy
        self.summary = summary
        self._states: dict[str, PersonState] = {}
        self.derived: dict[Identity, list[bytes]] = {}
        self._recorded: list[Record] = []

    def request(self, record: Record) -> None:
        self.summary.messages += 1
        try:
            message = decode_requests(record.value)
            if isinstance(message, GapProbe):
                return  # a worker's nudge to its own ledger: it decides nothing
            # the ledger's clock only sets deadlines; the record's time stands in for it
            outcome = handle(
                self._states.get(message.person), message, self.policy, record.timestamp_ms
            )
        except Exception as exc:  # the ledger dead-letters these and keeps its state
            self.summary.skipped.append(
                Skipped(record.topic, record.partition, record.offset, repr(exc)[:300])
            )
            return
        self._states[message.person] = outcome.state
        for event in outcome.events:
            self.derived.setdefault(event.identity(), []).append(encode(event))

    def tally(self, messages: int, skipped: list[Skipped]) -> None:
        """What a helper read from its share of the partitions."""
        self.summary.messages += messages
        self.summary.skipped += sorted(skipped, key=lambda s: (s.partition, s.offset))

    def absorb(self, derived: dict[Identity, list[bytes]]) -> None:
        """What a helper derived from its share of the partitions. A request's events all
        derive from its person's messages, in one partition: the shares' identities do not
        overlap (were one to, its events would follow the ones derived before)."""
        for identity in derived.keys() & self.derived.keys():
            derived[identity] = self.derived[identity] + derived[identity]
        self.derived.update(derived)

    def recorded(self, record: Record) -> None:
        self._recorded.append(record)  # matched once everything is derived

    def digests(self) -> list[bytes]:
        """The recorded events' digests, in record order, for the helpers to match."""
        return [_digest(record.value) for record in self._recorded]

    def match(self, digests: list[bytes]) -> Matching:
        """A helper's side: which recorded events are byte for byte the first this share
        derived for their identity, and what that makes of each identity."""
        first = {_digest(events[0]): identity for identity, events in self.derived.items()}
        hits = [first.get(digest) for digest in digests]
        matching = Matching(bytes(hit is not None for hit in hits))
        seen = Counter(hit for hit in hits if hit is not None)
        matching.derived = sum(map(len, self.derived.values()))
        if seen.total() == len(seen) == len(self.derived) == matching.derived:
            matching.matched = matching.derived  # most: each derived once, recorded once
            return matching
        for identity, ours in self.derived.items():
            derived, recorded = len(ours), seen[identity]
            matching.matched += min(derived, recorded)
            matching.repeated += max(recorded - derived, 0)
            matching.missing += [identity] * (derived - recorded)
        return matching

    def settle(self, matchings: list[Matching]) -> bool:
        """The summary from the helpers' matchings, if together they took every recorded
        event exactly once (True); else nothing changes and :meth:`compare` decides."""
        taken = 0  # a byte a recorded event (as one integer): 1 once a share took it
        for matching in matchings:
            theirs = int.from_bytes(matching.taken)
            if taken & theirs:
                return False
            taken |= theirs
        if taken != int.from_bytes(b"\x01" * len(self._recorded)):
            return False
        summary = self.summary
        summary.recorded = len(self._recorded)
        for matching in matchings:
            summary.derived += matching.derived
            summary.matched += matching.matched
            summary.repeated += matching.repeated
            summary.differences += [Difference("missing", *key) for key in matching.missing]
        summary.differences.sort(key=Difference.key)
        self._recorded = []
        return True

    def compare(self) -> VerifySummary:
        summary = self.summary
        first = {events[0]: identity for identity, events in self.derived.items()}
        recorded: dict[Identity, Recorded] = {}
        for record in self._recorded:
            identity = first.get(record.value) if record.value is not None else None
            if identity is not None:
                theirs = recorded.get(identity)
                recorded[identity] = _ONCE_SAME if theirs is None else [*theirs, SAME]
                continue
            logged = _lifecycle_event(record, summary.skipped)
            if logged is not None:
                key = logged.identity()
                recorded[key] = [*recorded.get(key, ()), _comparable(logged)]
        self._recorded = []
        summary.derived = sum(map(len, self.derived.values()))
        summary.recorded = sum(map(len, recorded.values()))
        _compare(self.derived, recorded, summary)
        return summary


def _digest(value: bytes | None) -> bytes:
    # a record without a value matches nothing derived (compare() skips it with its reason)
    return b"" if value is None else sha256(value).digest()


def _comparable(event: LifecycleEvent) -> dict[str, Any]:
    # the event's fields as validated (no dump: a third of --verify's time went to it);
    # schema_version says which code wrote the event, not what was decided
    fields = dict(event.__dict__)
    del fields["schema_version"]
    return fields


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _compare(
    derived: dict[Identity, list[bytes]],
    recorded: dict[Identity, Recorded],
    summary: VerifySummary,
) -> None:
    for identity, ours in derived.items():
        theirs = recorded.get(identity, ())
        if theirs is _ONCE_SAME and len(ours) == 1:  # most: one event, recorded as derived
            summary.matched += 1
            continue
        expected: dict[str, Any] | None = None  # the first derived, decoded only if needed
        for index, got in enumerate(theirs):
            if got is not SAME:
                if expected is None:
                    expected = _comparable(decode(LifecycleEvent, ours[0]))
                if got != expected:
                    changed = {
                        k: (_plain(expected.get(k)), _plain(got.get(k)))
                        for k in sorted(expected.keys() | got.keys())
                        if expected.get(k) != got.get(k)
                    }
                    summary.differences.append(Difference("changed", *identity, fields=changed))
                    continue
            if index < len(ours):
                summary.matched += 1
            else:
                summary.repeated += 1
        missing = len(ours) - len(theirs)
        summary.differences.extend(Difference("missing", *identity) for _ in range(missing))
    for identity in recorded.keys() - derived.keys():
        summary.differences.extend(Difference("unexpected", *identity) for _ in recorded[identity])
    # by identity (a stable sort: an identity's own differences keep their order)
    summary.differences.sort(key=Difference.key)


def _lifecycle_event(record: Any, skipped: list[Skipped]) -> LifecycleEvent | None:
    """The record's lifecycle event, or None after noting why it was skipped."""
    try:
        return decode(LifecycleEvent, record.value)
    except DecodeError as exc:
        skipped.append(Skipped(record.topic, record.partition, record.offset, str(exc)))
        return None

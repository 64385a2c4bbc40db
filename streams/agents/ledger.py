"""The ledger agent: the only writer of per-person state and the only place decisions happen.

One instance per partition of [requests] (key = person). For each message: decode → load the
person's state → ``models.ledger.handle`` (decide, then evolve) → emit commands, lifecycle
events and dead letters → store the new state. A message that does not decode goes to the
dead-letter topic; nothing stops the partition (faust acks a message whose handler raised, so
nothing may escape this loop).

The deadline timer only *reads* the table and sends ``DeadlineExpired`` to the person's
partition; the ledger acts on it in stream context, where the table may be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from aiokafka.errors import KafkaError
from faust.streams import _current_event
from faust.types import TP

from models.events import (
    GapProbe,
    RequestsValue,
)
from models.ledger import PersonState, Policy, handle
from streams.agents.deadlines import DeadlineIndex
from streams.agents.forgetting import Forgetting
from streams.agents.outputs import (
    LEDGER_ERROR,
    NONE_SENT,
    UNDECODABLE,
    Batch,
    Emitter,
    Identity,
    SendNow,
    Withdraw,
    handed,
)
from streams.codecs import decode, decode_requests, encode
from streams.errors import DecodeError
from streams.gaps import GapRepair, LogStart, ReadRange, Record
from streams.kafka_options import sending_now, withdraw
from streams.observability import WorkerMetrics
from streams.runtime import Clock, DeadLetters, Source, Topics
from streams.topics import partition_of

log = logging.getLogger(__name__)

# the table also keeps, per partition, the next offset the ledger expects (not a person key:
# persons are "site:email")
OFFSET_MARK = b"\x00next-offset:"
MARK_EVERY = 32
# a skipped range is read back this many records at a time, one batch each (``streams.gaps``):
# a partition with no mark (its changelog lost) was read back whole, from its log start
GAP_CHUNK = 5_000
# a stored state with nothing in flight (pydantic writes an empty field exactly so, and no
# string in the JSON can hold it unescaped)
NOTHING_IN_FLIGHT = b'"inflight":{}'
BATCH = 500  # messages decided before their outputs' acknowledgements are awaited together
# how long a batch right behind another gathers (one after a quiet spell goes at once;
# ``streams.faust_transport.Stream``): 5 ms gave lower latency at 60/s than 2 ms, and 0 gave
# smaller batches under load (``bench/PROFILE.md``, thirtieth round)
WITHIN_SECONDS = 0.005
# (topic, partition, first, last): offsets the ledger read back itself and decided, for faust
# to count as done (``streams.faust_transport.Consumer.acknowledge_range``)
Acknowledge = Callable[[str, int, int, int], Awaitable[None]]
# (topic, partition): faust commits nothing more of it until it is released, or does again
# (``streams.faust_transport.Consumer.hold_commits``, ``release_commits``)
Hold = Callable[[str, int], None]
# partition -> the last offset faust took of it from Kafka (``Consumer.taken``)
Taken = Callable[[], dict[int, int]]
# the table's changelog writes since the last call, each done once Kafka took it or gave up on
# it (``streams.faust_transport.Table.written``)
Written = Callable[[], Sequence[Awaitable[Any]]]


def register(
    app: Any,
    *,
    topics: Topics,
    table: Any,
    policy: Policy,
    read_range: ReadRange,
    log_start: LogStart,
    deadline_check_seconds: float,
    gap_check_seconds: float,
    rebalance_grace_ms: int | None,
    dead_letters: DeadLetters,
    metrics: WorkerMetrics,
    clock: Clock,
) -> None:
    ledger = Ledger(
        table,
        policy,
        topics,
        read_range,
        rebalance_grace_ms,
        dead_letters,
        metrics,
        clock,
        send_now=lambda: sending_now(app.producer),
        withdraw=lambda deliveries: withdraw(app.producer, deliveries),
        acknowledge=lambda topic, partition, first, last: app.consumer.acknowledge_range(
            TP(topic, partition), first, last
        ),
        taken=lambda: app.consumer.taken(topics.requests.get_topic_name()),
        partitions=app.conf.topic_partitions,
        written=table.written,
        hold=lambda topic, partition: app.consumer.hold_commits(TP(topic, partition)),
        release=lambda topic, partition: app.consumer.release_commits(TP(topic, partition)),
        log_start=log_start,
    )
    app.on_partitions_revoked.connect(ledger.rebalanced)
    app.on_rebalance_complete.connect(ledger.recovered)  # its tables recovered, streams not resumed
    app.agent(topics.requests, name="ledger")(ledger.consume)
    app.timer(interval=deadline_check_seconds, name="deadlines")(ledger.check_deadlines)
    app.timer(interval=gap_check_seconds, name="gaps")(ledger.check_gaps)


class Ledger:
    def __init__(
        self,
        table: Any,
        policy: Policy,
        topics: Topics,
        read_range: ReadRange,
        rebalance_grace_ms: int | None,
        dead_letters: DeadLetters,
        metrics: WorkerMetrics,
        clock: Clock,
        send_now: SendNow = lambda: None,
        withdraw: Withdraw | None = None,
        acknowledge: Acknowledge | None = None,
        taken: Taken = dict,
        partitions: int | None = None,
        written: Written = list,
        hold: Hold | None = None,
        release: Hold | None = None,
        log_start: LogStart | None = None,
        gap_chunk: int = GAP_CHUNK,
    ) -> None:
        self._table = table
        self._policy = policy
        self._topics = topics
        self._dead_letters = dead_letters
        self._clock = clock
        self._states = StateCache()
        self._metrics = metrics
        self._emit = Emitter(topics, dead_letters)
        self._gaps = GapRepair(
            "ledger",
            load_mark=lambda _, partition: _mark(table, partition),
            read_range=read_range,
            on_repaired=metrics.gaps_repaired.inc,
            mark_every=MARK_EVERY,
            log_start=log_start,
            chunk=gap_chunk,
        )
        self._due = DeadlineIndex(
            {stage: policy.deadline_span_ms(stage) for stage in ("generating", "publishing")},
            grace_ms=rebalance_grace_ms,
        )
        self._due.rebalanced(clock.now_ms())  # all in the table was issued before this process
        self._forgetting = Forgetting(policy, partition_of(partitions) if partitions else None)
        self._scan = TableScan(table, self._due, self._forgetting)
        self._deciding = Batch()  # the batch between its decisions and its stored states
        self._send_now = send_now
        self._withdraw = withdraw
        self._acknowledge = acknowledge
        self._taken = taken
        self._written = written
        self._hold = hold
        self._release = release
        # the partitions (topic, partition) of a batch not stored, whose commits faust holds
        # until a batch of them is (``_undecided``)
        self._held: set[tuple[str, int]] = set()
        self._behind: dict[int, tuple[int, int]] = {}  # partition -> (expected, taken) last look
        # the outputs Kafka acknowledged of records whose batch was not stored, by record, until
        # a batch that decided them again is (kept across a rebalance: whoever decides them
        # again, they were sent; only this worker can leave them out)
        self._sent: dict[Source, set[Identity]] = {}

    async def consume(self, stream: Any) -> None:
        """The agent: batches of its partitions' messages in order, skipped ones repaired
        first. A batch's outputs are sent at once (not held for the producer's linger) and
        acknowledged by Kafka before its states are stored, so a stored state never claims an
        output that a crash could still lose. Its states (and the people it forgets) are then
        written to the changelog, sent at once too, and its offsets are marked only once Kafka
        acknowledged those writes (one wait a batch: :meth:`_changelog_taken`): the table's
        offset mark, from which a worker recovering the partition decides again, and faust's
        acknowledgement of the batch, which it commits when the next batch is asked for. So
        neither passes a state change the changelog lacks (before, a worker that lost the
        partition, or stopped, before Kafka took it left the next owner the person's earlier
        state, and a mark or a commit after the batch). What was read back is then
        acknowledged to faust, which never delivered it and would not commit past it
        otherwise. A batch not stored, or not marked (``_undecided``), is decided again
        without the outputs Kafka took of it: an executor runs each command once (a call
        billed once), a letter or a transition is written once. faust acknowledges it all the
        same (held, faust's wait for its streams at a rebalance would wait for it) but commits
        nothing more of its partitions until a batch of each is stored: the partition's next
        owner decides from that commit, or from the table's mark before it. A gap longer than
        ``GAP_CHUNK`` is read back a chunk a batch: the batch marks its partition where the
        chunk ended and leaves the message that found the gap, and the partition's messages
        after it, to the next look (:meth:`_read_on`)."""
        async for events in stream.take_events(BATCH, within=WITHIN_SECONDS):
            began = time.perf_counter()  # (the phases' times: talkstream_ledger_batch_seconds)
            batch = self._deciding = Batch(self._withdraw)
            marks: dict[bytes, tuple[bytes, Any]] = {}
            read_back: list[tuple[str, int, int, int]] = []
            firsts: dict[tuple[str, int], int] = {}  # the first offset decided, by partition
            read_back_records = 0
            # partitions whose gap is read back a chunk a batch: where this one's read stopped,
            # and the offset of the message that found the gap (it, and the partition's
            # messages after it in this batch, are read back with the rest)
            cut: dict[tuple[str, int], tuple[int, int]] = {}
            try:
                for event in events:
                    msg = event.message
                    if (msg.topic, msg.partition) in cut:
                        continue
                    batch.event = event
                    skipped = await self._gaps.skipped(msg.topic, msg.partition, msg.offset)
                    lettered = False  # a record of its own dead-lettered: the mark passes it
                    for record in skipped:
                        lettered |= await self.process(batch, record)
                    firsts.setdefault(
                        (msg.topic, msg.partition), skipped[0].offset if skipped else msg.offset
                    )
                    if skipped:
                        read_back_records += len(skipped)
                        first, last = skipped[0].offset, skipped[-1].offset
                        read_back.append((msg.topic, msg.partition, first, last))
                    stopped = self._gaps.cut_short(msg.topic, msg.partition)
                    if stopped is not None:  # marked where it stopped; a probe reads on
                        cut[(msg.topic, msg.partition)] = (stopped, msg.offset)
                        mark = OFFSET_MARK + str(msg.partition).encode()
                        marks[mark] = (str(stopped).encode(), event)
                        continue
                    lettered |= await self.process(batch, _Record(msg, event.key, event.value))
                    if self._gaps.processed(msg.topic, msg.partition, msg.offset) or lettered:
                        mark = OFFSET_MARK + str(msg.partition).encode()
                        marks[mark] = (str(msg.offset + 1).encode(), event)
            except Exception as exc:  # a gap not read back: Kafka cannot be reached
                await batch.delivered(self._send_now, failed=exc)
                await self._undecided(events, firsts, exc, batch, "a batch was not decided in full")
                continue
            decided = time.perf_counter()
            try:
                await batch.delivered(self._send_now)
            except Exception as exc:  # Kafka gave up on an output (no leader for that long)
                await self._undecided(
                    events, firsts, exc, batch, "Kafka did not take every output of a batch"
                )
                continue
            delivered = time.perf_counter()
            latest: dict[int, Any] = {}  # an event of each partition decided
            for person, (state, event) in batch.states.items():
                with _in_stream_of(event):
                    self._table[person] = self._states.store(person, state)
                self._forgetting.track(event.message.partition, person, state)
            for transition in batch.transitions:  # once: a batch decided again made them again
                self._metrics.observe(transition)
            for event in events:
                latest[event.message.partition] = event
            self._forget(latest)
            storing = time.perf_counter()
            failed = await self._changelog_taken()
            stored_at = time.perf_counter()
            if failed is not None:  # Kafka gave up on a write of the table: decided again
                batch.taken()
                await self._undecided(
                    events,
                    firsts,
                    failed,
                    batch,
                    "Kafka did not take every changelog write of a batch",
                )
                continue
            if batch.again:
                log.info(
                    "ledger: a batch decided again is stored; %s outputs Kafka had taken before "
                    "were not sent again",
                    batch.not_again,
                )
                for source in batch.again:
                    self._sent.pop(source, None)
            for mark, (offset, event) in marks.items():
                with _in_stream_of(event):
                    self._table[mark] = offset
            self._metrics.stored_batch(
                len(events) + read_back_records,
                decided - began,
                delivered - decided,
                stored_at - storing,
            )
            if self._acknowledge is not None:
                for topic, partition, first, last in read_back:
                    await self._acknowledge(topic, partition, first, last)
            for held in self._held.intersection(firsts):  # decided again from where it was
                self._held.discard(held)
                if self._release is not None:
                    self._release(*held)
            for (_, partition), (stopped, found_at) in cut.items():
                await self._read_on(partition, stopped, found_at)
            self._deciding = Batch()

    async def _read_on(self, partition: int, stopped: int, offset: int) -> None:
        """A gap read back a chunk at a time, stored and marked up to ``stopped``: a probe to
        the partition is the next look, which reads on from there (its next message would
        too, but a quiet partition may have none for hours; the gap timer's probe comes two
        looks later, and does if this one is not sent)."""
        try:
            await self._probe(partition, stopped, offset)
        except KafkaError as exc:  # (not the agent's end: its batch is stored)
            log.warning(
                "ledger could not probe partition=%s to read on from offset %s (%s): the gap "
                "timer's probe will",
                partition, stopped, type(exc).__name__,
            )  # fmt: skip

    async def _changelog_taken(self) -> BaseException | None:
        """Wait until Kafka acknowledged every changelog write of the table since the batch
        before: this batch's states and forgotten people, the offset mark the batch before
        wrote once its own were taken, a write given up on and written again meanwhile
        (``streams.faust_transport.Topic._written_again``), in one wait for the batch (they
        go without the producer's linger: ``Topic.publish_message``). Returns the failure of
        one Kafka gave up on (no leader for the producer's request timeout, a stopping worker
        that gave up on Kafka), else None."""
        written = self._written()
        if not written:
            return None
        results = await asyncio.gather(*written, return_exceptions=True)
        return next((r for r in results if isinstance(r, BaseException)), None)

    def _forget(self, latest: dict[int, Any]) -> None:
        """Delete the people of these partitions whose state the rules forgot a margin ago
        (``streams.agents.forgetting``), in the stream of one of the partition's events (the
        changelog's tombstone goes to the person's partition)."""
        now = self._clock.now_ms()
        for partition, event in latest.items():
            for person in self._forgetting.due(partition, now):
                raw = stored(self._table, person)
                if raw is None:
                    continue
                state = self._states.load(person, raw)
                if state is None or not self._forgetting.ripe(state, now):
                    if state is not None:
                        self._forgetting.track(partition, person, state)
                    continue
                with _in_stream_of(event):
                    del self._table[person]
                self._states.drop(person)

    async def _undecided(
        self,
        events: Sequence[Any],
        firsts: dict[tuple[str, int], int],
        exc: BaseException,
        batch: Batch,
        what: str,
    ) -> None:
        """A batch whose outputs Kafka did not all take, or that could not be decided in full
        (a gap before one of its messages could not be read back: Kafka out of reach), is not
        stored; nor marked, one whose changelog writes Kafka did not all take (its states are
        in the table: deciding it again sends nothing of what it did, and writes them again):
        each of its partitions expects the batch's first offset again (its next
        message, or the gap timer's probe, reads the batch back and decides it again; one that
        it did not reach expects what it did, or its first offset in the batch if it expected
        nothing, no offset mark), and the deadlines tracked from its states are
        forgotten (the table, scanned again, is what is in flight). faust is told the batch is
        done all the same (it waits for what its streams took at a rebalance or a stop), but
        commits nothing more of its partitions until a batch of each is stored
        (``hold``, ``release``): a partition's next owner starts from that commit, or from the
        offset mark before it, so a worker that stops, or dies, before the batch is decided
        again leaves it to be decided by whoever comes next. (faust committed past it before:
        a partition with no offset mark yet, the first batch a worker took of it, left its next
        owner nothing to read the batch back from.) The agent crashed here
        before: faust acked the batch and restarted the agent, which went on after the batch as
        if it were decided, and a request whose command was lost stayed in flight for good,
        with no deadline that would re-issue it.

        The outputs Kafka did take are remembered by record, and the decision of the same
        record again (from the same stored state: the same outputs, but for the clock's issue
        times) leaves them out: they were sent in full again before, so an executor ran a
        command twice (OpenAI billed twice) and a letter or a transition was written twice.
        Those the batch held back once Kafka had given up on one of its outputs, or took
        back from the producer unsent (``Batch.holds``, ``Batch._settled``), go now, after
        what Kafka gave up on, in the order they were decided.
        A worker that stops before the batch decided again is stored, or a partition that
        moves meanwhile, still sends them again (at-least-once: README, "Production")."""
        for source, identities in batch.acknowledged.items():
            self._sent.setdefault(source, set()).update(identities)
        starts: dict[tuple[str, int], int] = {}  # each partition's first offset in the batch
        for event in events:
            starts.setdefault((event.message.topic, event.message.partition), event.message.offset)
        for key, offset in starts.items():
            if key not in firsts and await self._gaps.expectation(*key, log_start=False) is None:
                firsts[key] = offset  # not reached, and nothing expected of it (no offset mark)
        log.warning(
            "ledger: %s (%s): decided again from %s (the %s of its %s outputs sent that "
            "Kafka took are not sent again; once Kafka had given up on one, %s were held back "
            "and %s taken back unsent)",
            what,
            type(exc).__name__,
            ", ".join(f"partition={p} offset={o}" for (_, p), o in sorted(firsts.items()))
            or "where it was",
            sum(map(len, batch.acknowledged.values())),
            len(batch.deliveries),
            batch.held,
            batch.withdrawn,
        )
        for (topic, partition), offset in firsts.items():
            self._gaps.rewind(topic, partition, offset)
        for key in starts:
            if key not in self._held:
                self._held.add(key)
                if self._hold is not None:
                    self._hold(*key)
        self._scan.soon()  # before the next look for what is overdue
        self._deciding = Batch()

    async def process(self, batch: Batch, record: Record) -> bool:
        """decode → the person's state (as this batch left it) → decide and evolve → emit
        (what Kafka took of the outputs of deciding this record before, if its batch was not
        stored, is left out). True when the record itself is dead-lettered (it does not
        decode, or deciding it failed): no state records that, so the batch writes the
        partition's offset mark past it (a new owner, or this worker restarted, re-reads from
        the mark, and wrote a second letter of the same record)."""
        source = (record.topic, record.partition, record.offset)
        sent = self._sent.get(source, NONE_SENT) if self._sent else NONE_SENT
        if sent:
            batch.again.append(source)
            batch.not_again += len(sent)
        try:
            message: RequestsValue = decode_requests(record.value)
        except DecodeError as exc:
            # acknowledged before the mark passes it, as any output
            if UNDECODABLE not in sent and ("instead", *UNDECODABLE) not in sent:
                await self._letter(batch, source, UNDECODABLE, str(exc), record)
            return True
        if isinstance(message, GapProbe):
            return False  # (a probe has done its work: its arrival repaired any gap before it)
        try:
            person = message.person.encode()
            newest = batch.states.get(person)
            state = newest[0] if newest else self._states.load(person, stored(self._table, person))
            outcome = handle(state, message, self._policy, self._clock.now_ms())
            await self._emit(outcome, source, batch, sent)
            batch.transitions += outcome.events
            batch.states[person] = (outcome.state, batch.event)
            self._due.track(message.person, outcome.state)
            return False
        except KafkaError:  # the producer did not take an output (no room, no metadata for
            raise  # its request timeout): the batch is decided again, as when Kafka gives up
        except Exception as exc:  # a bug: refuse loudly, keep the partition flowing
            log.exception(
                "ledger failed request_id=%s partition=%s offset=%s",
                message.request_id,
                record.partition,
                record.offset,
            )
            if LEDGER_ERROR in sent or ("instead", *LEDGER_ERROR) in sent:
                return True
            reason = f"ledger error: {exc!r}"[:500]
            await self._letter(
                batch, source, LEDGER_ERROR, reason, record, request_id=message.request_id
            )
            return True

    async def _letter(
        self,
        batch: Batch,
        source: Source,
        identity: Identity,
        reason: str,
        record: Record,
        request_id: str | None = None,
    ) -> None:
        """A letter of the record being decided, sent with the batch's outputs (and, if
        Kafka refuses it, the same letter without the record's value)."""
        if batch.holds(request_id):
            return  # sent when the batch is decided again
        letter: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason,
            "key": record.key,
            "value": record.value,
            "request_id": request_id,
        }
        delivery = await handed(self._dead_letters.write(**letter))
        batch.send(source, identity, delivery, self._emit.instead_of_letter(letter), request_id)

    def rebalanced(self, *_: Any, **__: Any) -> None:
        self._gaps.forget()
        self._held.clear()  # (faust forgets its holds of the partitions revoked)
        self._forgetting.clear()  # the scan after the recovery tracks those it owns again
        self._behind.clear()

    async def check_gaps(self) -> None:
        """The timer: a partition of which faust took offsets from Kafka that the ledger has
        not received, and still so at the next look (the ledger received nothing of it
        meanwhile, and faust took nothing more), had them dropped on the way: the gap would be
        repaired at the partition's next message, and a quiet partition may have none for
        hours. A GapProbe sent to it is that message. If the offsets were only slow (a batch
        held up longer than a look), they reach the ledger before the probe, which then finds
        no gap: a probe is never wrong, at worst one record."""
        topic = self._topics.requests.get_topic_name()
        behind: dict[int, tuple[int, int]] = {}
        for partition, taken in self._taken().items():
            try:
                expected = await self._gaps.expectation(topic, partition)
            except KafkaError:  # (its log start, with no mark): asked again at the next look
                continue
            if expected is None or expected > taken:
                continue  # nothing known of it, or everything taken received
            behind[partition] = (expected, taken)
            if self._behind.get(partition) != (expected, taken):
                continue  # first seen so: a look later it may have arrived
            log.info(
                "ledger probes partition=%s: offsets %s..%s were taken from Kafka and not "
                "received",
                partition, expected, taken,
            )  # fmt: skip
            await self._probe(partition, expected, taken)
        self._behind = behind

    async def _probe(self, partition: int, expected: int, taken: int) -> None:
        """A GapProbe to ``partition``: its arrival makes the ledger read back what it has not
        decided before it, from ``expected``."""
        probe = GapProbe(
            partition=partition, expected=expected, taken=taken, at_ms=self._clock.now_ms()
        )
        await self._topics.requests.send(value=encode(probe), partition=partition)

    def recovered(self, *_: Any, **__: Any) -> None:
        """The rebalance is complete. With a rebalance grace, work issued before now gets only
        the grace: the worker that owned a partition before may have issued work (and died
        with its call) after this worker's rebalance began, which is when its partitions were
        revoked."""
        self._due.rebalanced(self._clock.now_ms())
        self._scan.soon()  # the partitions this worker now owns, as recovered

    async def check_deadlines(self) -> None:
        """The timer: reads the table only; overdue work goes to the person's partition."""
        if self._scan.pending:
            self._scan.run()
            # the batch being decided has tracked states the table does not hold yet
            for person, (state, _) in self._deciding.states.items():
                self._due.track(person.decode(), state)
        for expired in self._due.overdue(self._clock.now_ms()):
            log.info(
                "deadline expired request_id=%s attempt=%s stage=%s",
                expired.request_id,
                expired.attempt,
                expired.stage,
            )
            delivery = await self._topics.requests.send(
                key=expired.person.encode(), value=encode(expired)
            )
            delivery.add_done_callback(functools.partial(self._due.delivered, expired))


@contextlib.contextmanager
def _in_stream_of(event: Any) -> Iterator[None]:
    """Write the table as if while iterating ``event``: faust takes a changelog record's
    partition from the current event, which a batch (take_events) does not set when its
    states are stored after the outputs' acknowledgements (faust has no public way to)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class _Record:
    """A faust message as a :class:`~streams.gaps.Record` (faust keeps key and value apart)."""

    __slots__ = ("key", "offset", "partition", "topic", "value")

    def __init__(self, message: Any, key: bytes | None, value: bytes | None) -> None:
        self.topic, self.partition, self.offset = message.topic, message.partition, message.offset
        self.key, self.value = key, value


def stored(table: Any, key: bytes) -> bytes | None:
    """The table's value for ``key``, or None, in one read of its store: faust's ``Table.get``
    asks the store whether it holds the key and then reads it (two reads of RocksDB, 7% of a
    busy ledger's time). Only the table's sensors, which this app does not run, miss it. (A
    plain mapping, a table without a changelog, is its own store.)"""
    try:
        return getattr(table, "data", table)[key]  # type: ignore[no-any-return]
    except KeyError:
        return None


async def _mark(table: Any, partition: int) -> int | None:
    raw = stored(table, OFFSET_MARK + str(partition).encode())
    return int(raw) if raw else None


class TableScan:
    """Rebuilds the deadline index from the whole table once the worker has recovered it
    (after a start or a rebalance): the in-flight work of the partitions it now owns. Only
    then: the ledger tracks every decision itself, and reading a table of a million people
    takes seconds of the worker's loop."""

    def __init__(
        self, table: Any, due: DeadlineIndex, forgetting: Forgetting | None = None
    ) -> None:
        self._table = table
        self._due = due
        self._forgetting = forgetting
        self.pending = True

    def soon(self) -> None:
        self.pending = True

    def run(self) -> None:
        self.pending = False
        self._due.clear()
        for person, raw in self._table.items():
            if raw is None or person.startswith(OFFSET_MARK):
                continue
            if self._forgetting is not None:
                self._forgetting.track_raw(person, raw)
            # most people have nothing in flight: no need to decode them
            if NOTHING_IN_FLIGHT in raw:
                continue
            self._due.track(person.decode(), decode(PersonState, raw))


class StateCache:
    """Decoded person states by the exact bytes they were stored as: a hit skips the JSON
    parse (a large part of the ledger's time), and any other value in the table — recovered
    from the changelog, written by an earlier owner — simply misses and is decoded."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._states: dict[bytes, tuple[bytes, PersonState]] = {}

    def load(self, person: bytes, raw: bytes | None) -> PersonState | None:
        if raw is None:
            return None
        cached = self._states.get(person)
        if cached is not None and cached[0] == raw:
            return cached[1]
        return decode(PersonState, raw)

    def drop(self, person: bytes) -> None:
        self._states.pop(person, None)

    def store(self, person: bytes, state: PersonState) -> bytes:
        raw = encode(state)
        self._states.pop(person, None)
        self._states[person] = (raw, state)
        if len(self._states) > self._size:
            del self._states[next(iter(self._states))]
        return raw

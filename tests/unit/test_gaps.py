"""Gap repair (``streams.gaps``), used by the ledger: the offset marks and
the read-back of a range faust skipped, with a fake mark store and a fake log."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiokafka.errors import KafkaConnectionError

from models.events import DeadLetter, GapProbe, GenerateText, LifecycleEvent
from models.ledger import PersonState, Policy
from models.lifecycle import State
from streams.agents.ledger import OFFSET_MARK, Ledger
from streams.agents.outputs import SendNow
from streams.codecs import decode, encode
from streams.gaps import GapRepair
from streams.observability import WorkerMetrics
from streams.runtime import DeadLetters, Topics
from tests.unit.domain_builders import PERSON, T0, generation_failed, received

TOPIC = "t-requests"
POLICY = Policy(generation_deadline_ms=120_000, publish_deadline_ms=60_000, max_wait_ms=0)


class FixedClock:
    def now_ms(self) -> int:
        return T0 * 1000


class SettableClock:
    def __init__(self) -> None:
        self.now = T0 * 1000

    def now_ms(self) -> int:
        return self.now


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None


@dataclass
class FakeLog:
    """A partition's records 0..size-1, and the ranges asked for."""

    size: int = 100
    reads: list[tuple[int, int, int]] = field(default_factory=list)

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Rec]:
        self.reads.append((partition, start, end))
        return [Rec(topic, partition, o) for o in range(start, min(end, self.size))]


def repair(
    marks: dict[int, int], log: FakeLog, every: int | None = 4, chunk: int | None = None
) -> tuple[GapRepair, list]:
    repaired: list[int] = []

    async def load(topic: str, partition: int) -> int | None:
        assert topic == TOPIC
        return marks.get(partition)

    gaps = GapRepair("test", load, log.read, repaired.append, mark_every=every, chunk=chunk)
    return gaps, repaired


def skipped(gaps: GapRepair, partition: int, offset: int) -> list[int]:
    return [r.offset for r in asyncio.run(gaps.skipped(TOPIC, partition, offset))]


def test_without_a_mark_nothing_counts_as_skipped() -> None:
    log = FakeLog()
    gaps, repaired = repair({}, log)
    assert skipped(gaps, 0, 57) == []
    assert log.reads == [] and repaired == []


def test_a_partition_with_no_mark_expects_its_log_start(caplog: pytest.LogCaptureFixture) -> None:
    """No mark: nothing of the partition was decided (its first batch writes one), so the
    agent expects the earliest offset Kafka holds of it, asked once until a rebalance. Its
    first messages dropped on the way (a rebalance in a new deployment's first minutes, the
    partition empty before) are read back, a WARNING and counted: the next ones were decided
    alone, and faust, with no commit of the partition to check against, committed past them
    (CI: one webhook of twelve never decided)."""
    log, repaired, asked = FakeLog(), [], []

    async def no_mark(topic: str, partition: int) -> int | None:
        return None

    async def log_start(topic: str, partition: int) -> int:
        asked.append(partition)
        return {0: 0, 1: 40}[partition]

    gaps = GapRepair("test", no_mark, log.read, repaired.append, mark_every=4, log_start=log_start)
    with caplog.at_level("INFO", logger="streams.gaps"):
        assert skipped(gaps, 0, 0) == []  # its first message: nothing skipped
        assert skipped(gaps, 1, 42) == [40, 41]  # its first two dropped
    assert [(r.levelname, r.getMessage().split(" offsets=")[1]) for r in caplog.records] == [
        ("WARNING", "40..41 (nothing of it decided before: from its log start): repairing")
    ]
    assert repaired == [2] and log.reads == [(1, 40, 42)]
    assert asyncio.run(gaps.expectation(TOPIC, 1)) == 40
    assert asyncio.run(gaps.expectation(TOPIC, 1, log_start=False)) is None  # the mark alone
    assert asked == [0, 1]  # once each
    gaps.forget()  # a rebalance: retention may have moved it meanwhile
    assert asyncio.run(gaps.expectation(TOPIC, 1)) == 40
    assert asked == [0, 1, 1]


def test_a_message_beyond_the_mark_reads_the_range_in_between_back() -> None:
    log = FakeLog()
    gaps, repaired = repair({3: 10}, log)
    assert skipped(gaps, 3, 16) == [10, 11, 12, 13, 14, 15]
    assert log.reads == [(3, 10, 16)]
    assert repaired == [6]


def test_the_expected_message_and_older_ones_are_no_gap() -> None:
    log = FakeLog()
    gaps, _ = repair({0: 10}, log)
    assert skipped(gaps, 0, 10) == []
    assert skipped(gaps, 0, 7) == []  # a re-delivery after a crash: already read
    assert log.reads == []


def test_after_processing_the_next_offset_is_expected_without_asking_the_mark() -> None:
    log = FakeLog()
    marks = {0: 10}
    gaps, _ = repair(marks, log)
    gaps.processed(TOPIC, 0, 10)
    marks[0] = 0  # a stale mark is not consulted while this process knows better
    assert skipped(gaps, 0, 11) == []
    assert skipped(gaps, 0, 13) == [11, 12]


def test_forgetting_after_a_rebalance_goes_back_to_the_marks() -> None:
    log = FakeLog()
    marks = {0: 10}
    gaps, _ = repair(marks, log)
    gaps.processed(TOPIC, 0, 20)
    marks[0] = 30  # another owner moved on meanwhile
    gaps.forget()
    assert skipped(gaps, 0, 33) == [30, 31, 32]


def test_partitions_are_tracked_apart() -> None:
    log = FakeLog()
    gaps, _ = repair({}, log)
    gaps.processed(TOPIC, 0, 5)
    gaps.processed(TOPIC, 1, 50)
    assert skipped(gaps, 0, 6) == []
    assert skipped(gaps, 1, 53) == [51, 52]


@pytest.mark.parametrize(
    ("offsets", "due"),
    [
        ([5, 6, 7, 8, 9], [True, False, False, True, False]),  # first since load, then every 4
        ([0, 1, 5, 6], [True, False, True, False]),  # after a gap the mark is written at once
    ],
)
def test_the_durable_mark_is_due_first_after_a_gap_and_every_n(
    offsets: list[int], due: list[bool]
) -> None:
    gaps, _ = repair({}, FakeLog(), every=4)
    assert [gaps.processed(TOPIC, 0, o) for o in offsets] == due


def test_without_mark_every_no_durable_mark_is_ever_due() -> None:
    gaps, _ = repair({}, FakeLog(), every=None)
    assert [gaps.processed(TOPIC, 0, o) for o in (0, 1, 9)] == [False, False, False]


def test_a_restart_behind_its_last_mark_is_no_alarm_but_a_real_gap_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mark trails the processed offsets by up to ``mark_every``: a worker that restarts
    (or takes the partition over) meets faust's commit up to that far past it, and re-reads
    those messages, logged at INFO. A larger jump after the mark, or any jump once the
    expected offset is known, is faust skipping messages: a WARNING. Both are repaired; only
    the gaps count in ``talkstream_gap_messages_repaired_total`` (a restart's re-reads raised
    it by up to 32 per partition at every restart, read as messages a rebalance dropped)."""
    log = FakeLog()
    gaps, repaired = repair({0: 10, 1: 10}, log, every=4)
    with caplog.at_level("INFO", logger="streams.gaps"):
        assert skipped(gaps, 0, 14) == [10, 11, 12, 13]  # 4 behind the mark: a restart
        gaps.processed(TOPIC, 0, 14)
        assert skipped(gaps, 0, 17) == [15, 16]  # a jump in a partition it knows
        assert skipped(gaps, 1, 15) == [10, 11, 12, 13, 14]  # 5 past the mark
    levels = [(r.levelname, r.getMessage().split(" offsets=")[1]) for r in caplog.records]
    assert levels == [("INFO", "10..13, since its last mark"), ("WARNING", "15..16: repairing"),
                      ("WARNING", "10..14: repairing")]  # fmt: skip
    assert repaired == [2, 5]


def test_a_range_longer_than_a_chunk_is_read_a_chunk_at_each_look(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each look reads ``chunk`` records at most, expects the next offset after them, and says
    where it stopped; the message that found the gap waits for the look that reads up to it.
    The gap is warned of once; each chunk is counted as repaired when read."""
    log = FakeLog()
    gaps, repaired = repair({0: 10}, log, chunk=4)
    with caplog.at_level("INFO", logger="streams.gaps"):
        assert skipped(gaps, 0, 20) == [10, 11, 12, 13]
        assert gaps.cut_short(TOPIC, 0) == 14
        assert skipped(gaps, 0, 21) == [14, 15, 16, 17]  # the next look: a later message
        assert gaps.cut_short(TOPIC, 0) == 18
        assert skipped(gaps, 0, 21) == [18, 19, 20]  # (a message left waiting read back too)
        assert gaps.cut_short(TOPIC, 0) is None  # up to the message: decide it
    assert log.reads == [(0, 10, 14), (0, 14, 18), (0, 18, 21)]
    assert repaired == [4, 4, 3]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "test gap topic=t-requests partition=0 offsets=10..19: repairing, "
                    "4 records at a time"),
    ]  # fmt: skip


# --- the ledger agent: what it read back itself, faust is told is done ---------------------


class Sent:
    """A topic: what was sent to it, each acknowledged at once."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[None]:
        self.values.append(value)
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery


@dataclass
class Event:
    """A faust event of the requests topic, as ``take_events`` yields it."""

    message: Rec
    key: bytes | None
    value: bytes | None


class Stream:
    def __init__(self, *batches: list[Event]) -> None:
        self.batches = batches

    async def take_events(self, _max: int, within: float) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            yield batch


def test_a_range_the_ledger_read_back_is_acknowledged_to_faust_once_its_batch_is_stored() -> None:
    """faust took 53 and 54 from aiokafka and dropped them (a rebalance empties the agents'
    buffers); the ledger reads them back when 55 arrives and decides them. faust, which
    never delivered them, would not commit past 53 until it is told they are done; told only
    once the batch's decisions are stored (a crash before that re-reads them from the mark)."""
    webhooks = {
        offset: encode(received(f"req-{offset}", delivery_id=f"d-{offset}"))
        for offset in range(50, 56)
    }

    async def read_range(topic: str, partition: int, start: int, end: int) -> list[Rec]:
        return [Rec(topic, partition, o, PERSON.encode(), webhooks[o]) for o in range(start, end)]

    table: dict[bytes, bytes] = {}
    stored_when_told: list[bool] = []
    told: list[tuple[str, int, int, int]] = []

    async def acknowledge(topic: str, partition: int, first: int, last: int) -> None:
        stored_when_told.append(PERSON.encode() in table)
        told.append((topic, partition, first, last))

    lifecycle = Sent()
    topics = Topics(
        requests=Sent(), generate=Sent(), completions=Sent(), lifecycle=lifecycle, deadletter=None
    )
    metrics = WorkerMetrics()
    ledger = Ledger(
        table,
        POLICY,
        topics,
        read_range,
        30_000,
        DeadLetters(Sent(), metrics.dead_letters, FixedClock()),
        metrics,
        FixedClock(),
        acknowledge=acknowledge,
    )
    delivered = [
        Event(Rec(TOPIC, 3, offset), PERSON.encode(), webhooks[offset])
        for offset in (50, 51, 52, 55)
    ]
    asyncio.run(ledger.consume(Stream(delivered[:2], delivered[2:])))

    assert told == [(TOPIC, 3, 53, 54)]
    assert stored_when_told == [True]
    received_ids = {
        event.request_id
        for event in map(lambda raw: decode(LifecycleEvent, raw), lifecycle.values)
        if event.state == State.RECEIVED
    }
    assert received_ids == {f"req-{offset}" for offset in range(50, 56)}  # 53, 54 decided too


# --- the ledger's gap timer: a quiet partition whose dropped offsets would wait for ever -------


class Requests(Sent):
    """[requests] as the gap timer uses it: its name, and probes sent to a partition."""

    def __init__(self) -> None:
        super().__init__()
        self.partitions: list[int | None] = []

    def get_topic_name(self) -> str:
        return TOPIC

    async def send(  # type: ignore[override]
        self, *, key: bytes | None = None, value: bytes, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.partitions.append(partition)
        return await super().send(key=key, value=value)


class Quiet:
    """A ledger on partition 3 of a fake log of webhooks, faust's taken offsets set by hand."""

    def __init__(
        self,
        table: dict[bytes, bytes] | None = None,
        generate: Sent | None = None,
        lifecycle: Sent | None = None,
        send_now: SendNow = lambda: None,
        log_start: int | None = None,
        gap_chunk: int = 5_000,
    ) -> None:
        self.webhooks = {
            offset: encode(received(f"req-{offset}", delivery_id=f"d-{offset}"))
            for offset in range(50, 60)
        }
        self.taken: dict[int, int] = {}
        self.told: list[tuple[str, int, int, int]] = []
        self.requests, self.deadletter = Requests(), Sent()
        self.lifecycle = lifecycle or Sent()
        self.generate = generate or Sent()
        metrics = self.metrics = WorkerMetrics()
        self.ledger = Ledger(
            {} if table is None else table,
            POLICY,
            Topics(
                requests=self.requests,
                generate=self.generate,
                completions=Sent(),
                lifecycle=self.lifecycle,
                deadletter=None,
            ),
            self.read_range,
            30_000,
            DeadLetters(self.deadletter, metrics.dead_letters, FixedClock()),
            metrics,
            FixedClock(),
            send_now=send_now,
            acknowledge=self.acknowledge,
            taken=lambda: dict(self.taken),
            log_start=None if log_start is None else self.log_start,
            gap_chunk=gap_chunk,
        )
        self.start = log_start

    async def log_start(self, topic: str, partition: int) -> int:
        assert self.start is not None
        return self.start

    async def read_range(self, topic: str, partition: int, start: int, end: int) -> list[Rec]:
        return [self.record(o) for o in range(start, end)]

    async def acknowledge(self, topic: str, partition: int, first: int, last: int) -> None:
        self.told.append((topic, partition, first, last))

    def record(self, offset: int) -> Rec:
        return Rec(TOPIC, 3, offset, PERSON.encode(), self.webhooks[offset])

    async def deliver(self, *offsets: int) -> None:
        """The ledger receives these offsets (faust took them too)."""
        events = [Event(r, r.key, r.value) for r in map(self.record, offsets)]
        await self.ledger.consume(Stream(events))
        self.taken[3] = max(offsets)

    async def looks(self, n: int) -> list[list[tuple[int, int, int]]]:
        """The probes each of ``n`` looks of the timer sent: (partition, expected, taken)."""
        sent = []
        for _ in range(n):
            before = len(self.requests.values)
            await self.ledger.check_gaps()
            probes = [decode(GapProbe, raw) for raw in self.requests.values[before:]]
            sent.append([(p.partition, p.expected, p.taken) for p in probes])
        return sent

    def decided(self) -> set[str]:
        return {
            event.request_id
            for event in map(lambda raw: decode(LifecycleEvent, raw), self.lifecycle.values)
            if event.state == State.RECEIVED
        }


def test_offsets_faust_took_and_dropped_on_a_quiet_partition_are_probed_and_decided() -> None:
    """faust took 53 and 54 and the ledger never received them (a rebalance empties the
    agents' buffers), and no webhook follows on that partition: the ledger would repair the
    gap only at its next message. Still so at the timer's second look, a GapProbe goes to the
    partition; its arrival makes the ledger read 53..54 back and decide them, and it decides
    nothing itself."""

    async def scenario() -> Quiet:
        quiet = Quiet()
        await quiet.deliver(50, 51, 52)
        quiet.taken[3] = 54  # taken, dropped on the way
        [first, second, third] = await quiet.looks(3)
        assert first == []  # a look later, they may have arrived
        assert second == [(3, 53, 54)]
        assert third == [(3, 53, 54)]  # not arrived yet: probed again
        assert quiet.requests.partitions == [3, 3]
        # the probe arrives (the second one follows it): the gap before it is repaired
        quiet.webhooks[55] = quiet.webhooks[56] = quiet.requests.values[0]
        await quiet.deliver(55, 56)
        assert await quiet.looks(2) == [[], []]  # everything taken was received
        return quiet

    quiet = asyncio.run(scenario())
    assert quiet.told == [(TOPIC, 3, 53, 54)]
    assert quiet.decided() == {f"req-{offset}" for offset in range(50, 55)}
    assert quiet.deadletter.values == []  # a probe is no poison


def test_a_long_gap_is_read_back_a_chunk_a_batch_each_marked_and_probed_on() -> None:
    """A gap longer than a chunk (a partition with no mark and a long log, its changelog lost,
    was read back whole, into memory, and decided in one batch): each batch reads one chunk
    back and decides it, marks the partition where it stopped, and leaves the message that
    found the gap for later; a probe to the partition is the next look, which reads on. Every
    request is decided once, in order."""
    table: dict[bytes, bytes] = {}
    marks: list[bytes] = []

    async def scenario() -> Quiet:
        quiet = Quiet(table, gap_chunk=3)
        await quiet.deliver(50)
        for found_at in (59, 60, 61, 62):  # the webhook after the gap, then each probe
            await quiet.deliver(found_at)
            marks.append(table[OFFSET_MARK + b"3"])
            if found_at < 62:  # the probe sent is the partition's next record
                quiet.webhooks[found_at + 1] = quiet.requests.values[-1]
        return quiet

    quiet = asyncio.run(scenario())
    assert quiet.told == [(TOPIC, 3, 51, 53), (TOPIC, 3, 54, 56), (TOPIC, 3, 57, 59),
                          (TOPIC, 3, 60, 61)]  # fmt: skip
    assert marks == [b"54", b"57", b"60", b"63"]
    probes = [decode(GapProbe, raw) for raw in quiet.requests.values]
    assert [(p.partition, p.expected, p.taken) for p in probes] == [(3, 54, 59), (3, 57, 60),
                                                                    (3, 60, 61)]  # fmt: skip
    received = Counter(
        event.request_id
        for event in map(lambda raw: decode(LifecycleEvent, raw), quiet.lifecycle.values)
        if event.state == State.RECEIVED
    )
    assert received == Counter(f"req-{offset}" for offset in range(50, 60))  # each once
    assert quiet.metrics.gaps_repaired._value.get() == 11  # 51..61, read back in four looks
    assert quiet.deadletter.values == []


def test_a_chunks_probe_kafka_did_not_take_leaves_the_reading_on_to_the_gap_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The probe after a chunk is not taken (Kafka out of reach): the batch stays stored, the
    agent goes on, and the gap timer's probe reads on two looks later."""

    async def scenario() -> Quiet:
        quiet = Quiet(gap_chunk=3)
        await quiet.deliver(50)
        probing = quiet.requests.send

        async def refused(**_: object) -> asyncio.Future[None]:
            raise KafkaConnectionError()

        quiet.requests.send = refused  # type: ignore[method-assign]
        await quiet.deliver(59)
        quiet.requests.send = probing  # type: ignore[method-assign]
        assert await quiet.looks(2) == [[], [(3, 54, 59)]]
        return quiet

    with caplog.at_level("WARNING", logger="streams.agents.ledger"):
        quiet = asyncio.run(scenario())
    assert quiet.decided() == {f"req-{offset}" for offset in range(50, 54)}
    assert [r.getMessage() for r in caplog.records if r.name == "streams.agents.ledger"] == [
        "ledger could not probe partition=3 to read on from offset 54 (KafkaConnectionError): "
        "the gap timer's probe will"
    ]


@pytest.mark.parametrize(
    ("case", "probes"),
    [
        ("everything taken was received", [[], [], []]),
        ("faust takes more between the looks", [[], [], [(3, 53, 57)]]),
        ("the ledger receives some between the looks", [[], [], [(3, 54, 54)]]),
        # expected from the mark again, which trails (written at 50, the first since loaded)
        ("a rebalance between the looks", [[], [], [(3, 51, 54)]]),
    ],
)
def test_a_partition_is_probed_only_when_a_look_finds_it_as_the_last_did(
    case: str, probes: list[list[tuple[int, int, int]]]
) -> None:
    async def scenario() -> list[list[tuple[int, int, int]]]:
        quiet = Quiet()
        await quiet.deliver(50, 51, 52)
        quiet.taken[3] = 52 if case.startswith("everything") else 54
        seen = await quiet.looks(1)
        if case.startswith("faust takes more"):
            quiet.taken[3] = 57
        elif case.startswith("the ledger receives"):
            await quiet.deliver(53)
            quiet.taken[3] = 54
        elif case.startswith("a rebalance"):
            quiet.ledger.rebalanced()
            quiet.taken[3] = 54  # (the transport forgets what it took of a revoked partition)
        return seen + await quiet.looks(2)

    assert asyncio.run(scenario()) == probes


def test_a_partition_the_ledger_has_not_seen_since_its_assignment_is_behind_its_mark() -> None:
    """A new owner that received nothing of a partition expects what its mark says; with no
    mark (nothing ever decided there), its log start; with neither known, nothing is known to
    be behind."""

    async def scenario(
        table: dict[bytes, bytes], log_start: int | None = None
    ) -> list[list[tuple[int, int, int]]]:
        quiet = Quiet(table, log_start=log_start)
        quiet.taken[3] = 51
        return await quiet.looks(2)

    assert asyncio.run(scenario({OFFSET_MARK + b"3": b"50"})) == [[], [(3, 50, 51)]]
    assert asyncio.run(scenario({}, log_start=50)) == [[], [(3, 50, 51)]]
    assert asyncio.run(scenario({})) == [[], []]


def test_the_first_records_of_a_partition_nothing_was_decided_of_are_read_back_if_dropped() -> None:
    """The CI failure: a partition no webhook had reached yet (no mark) got three while the
    ledger's group rebalanced; the first was dropped from the agent's buffer and the next two
    delivered. Decided alone, the first was committed past by faust (no commit of the
    partition to see a gap against): a webhook accepted and never decided. From the log
    start, the first is read back and decided before them, and faust is told it is done."""

    async def scenario() -> Quiet:
        quiet = Quiet(log_start=50)
        await quiet.deliver(51, 52)
        return quiet

    quiet = asyncio.run(scenario())
    assert quiet.decided() == {"req-50", "req-51", "req-52"}
    assert quiet.told == [(TOPIC, 3, 50, 50)]
    assert quiet.metrics.gaps_repaired._value.get() == 1


# --- a batch whose outputs Kafka did not all take ---------------------------------------------


class GivesUp(Sent):
    """[generate] through a broker outage: the record sent ``refused``-th (from 0) is given up
    on (no leader for longer than the producer's request timeout), the others taken."""

    def __init__(self, refused: int) -> None:
        super().__init__()
        self.refused = refused

    def get_topic_name(self) -> str:
        return "t-generate"

    def taken(self) -> list[bytes]:
        return [value for i, value in enumerate(self.values) if i != self.refused]

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[None]:
        delivery = await super().send(key=key, value=value)
        if len(self.values) - 1 == self.refused:
            delivery = asyncio.get_running_loop().create_future()
            delivery.set_exception(RuntimeError("LeaderNotAvailableError"))
        return delivery


@pytest.mark.parametrize("refused", [0, 1], ids=["the first batch", "a later batch"])
def test_a_batch_whose_outputs_kafka_gave_up_on_is_decided_again(caplog, refused: int) -> None:
    """The ledger decided a batch and Kafka gave up on its commands (a broker outage): the
    agent crashed, faust acked the batch and restarted it, and it went on after the batch as
    if it were decided. Its states were never stored, so no deadline would re-issue them: in
    a fresh clone's test run, a webhook accepted before the outage stayed "generating" for
    good. The batch is now decided again at the partition's next message, also when it was
    the partition's first (no durable mark to go back to)."""
    table: dict[bytes, bytes] = {}
    quiet = Quiet(table, generate=GivesUp(refused))

    async def run() -> None:
        await quiet.deliver(50)
        with contextlib.suppress(RuntimeError):  # faust restarted a crashed agent
            await quiet.deliver(51, 52)
        await quiet.deliver(53)

    with caplog.at_level("WARNING", logger="streams.agents.ledger"):
        asyncio.run(run())
    state = decode(PersonState, table[PERSON.encode()])
    assert set(state.inflight) == {f"req-{offset}" for offset in (50, 51, 52, 53)}
    again = "partition=3 offset=50" if refused == 0 else "partition=3 offset=51"
    assert (
        f"Kafka did not take every output of a batch (RuntimeError): decided again from {again}"
        in caplog.text
    )


def test_each_batch_stored_is_timed_by_phase_and_counted_by_its_records() -> None:
    """``talkstream_ledger_batch_seconds{phase}`` and ``talkstream_ledger_batch_records``: where
    a batch's time goes (deciding, Kafka's acknowledgement of its outputs, of its changelog
    writes) and how many records it decided, the ones read back included; a batch not stored
    (Kafka gave up on an output) is not counted: its records are, in the batch that decides
    them again."""
    quiet = Quiet(generate=GivesUp(1))

    async def run() -> None:
        await quiet.deliver(50)
        with contextlib.suppress(RuntimeError):  # faust restarted a crashed agent
            await quiet.deliver(51, 52)
        await quiet.deliver(53)  # 51 and 52 read back and decided with it

    asyncio.run(run())
    value = quiet.metrics.registry.get_sample_value
    assert value("talkstream_ledger_batch_records_count") == 2
    assert value("talkstream_ledger_batch_records_sum") == 4
    assert value("talkstream_ledger_batch_records_bucket", {"le": "1.0"}) == 1
    for phase in ("deciding", "outputs", "changelog"):
        assert value("talkstream_ledger_batch_seconds_count", {"phase": phase}) == 2
        assert value("talkstream_ledger_batch_seconds_sum", {"phase": phase}) >= 0


@pytest.mark.parametrize("refused", [0, 1], ids=["the first batch", "a later batch"])
def test_a_batch_decided_again_counts_its_transitions_once(refused: int) -> None:
    """``talkstream_transitions_total`` counts transitions by the state reached: a batch
    decided again (Kafka gave up on one of its outputs) makes the same transitions again,
    which happened once. They were counted at each decision: a broker outage inflated every
    state's rate, ``generation_failed``'s alert included."""
    quiet = Quiet(generate=GivesUp(refused))

    async def run() -> None:
        await quiet.deliver(50)
        with contextlib.suppress(RuntimeError):  # faust restarted a crashed agent
            await quiet.deliver(51, 52)
        await quiet.deliver(53)

    asyncio.run(run())
    counted = {
        state: quiet.metrics.registry.get_sample_value(
            "talkstream_transitions_total", {"state": state}
        )
        for state in ("received", "admitted", "generating")
    }
    assert counted == {"received": 4, "admitted": 4, "generating": 4}  # req-50 .. req-53


def test_a_batch_decided_again_sends_only_what_kafka_did_not_take() -> None:
    """A batch of which Kafka gave up on one output is decided again: its outputs that Kafka
    took the first time were sent again, and made again what they make. A command reached
    its executor twice (an OpenAI call made and billed twice), a letter was written and
    counted twice, a transition recorded twice. Now each goes once, whatever the clock
    changed in it (a command's issue time)."""
    generate = GivesUp(2)
    quiet = Quiet(generate=generate)
    quiet.webhooks[51] = encode(generation_failed("req-50"))  # req-50 given up on: a letter
    quiet.webhooks[52] = b"not json"  # a letter

    async def run() -> None:
        await quiet.deliver(50)  # [generate] 0: req-50
        with contextlib.suppress(RuntimeError):  # faust restarted a crashed agent
            await quiet.deliver(51, 52, 53, 54)  # [generate] 1: req-53, 2: req-54 given up on
        clock.now = T0 * 1000 + 5_000  # decided again a little later
        await quiet.deliver(55)  # 51..54 read back and decided again

    clock = quiet.ledger._clock = SettableClock()
    asyncio.run(run())
    calls = Counter(
        (command.request_id, command.attempt)
        for command in map(lambda raw: decode(GenerateText, raw), generate.taken())
    )
    assert calls == {(f"req-{offset}", 1): 1 for offset in (50, 53, 54, 55)}
    recorded = Counter(decode(LifecycleEvent, raw).identity() for raw in quiet.lifecycle.values)
    assert [identity for identity, n in recorded.items() if n > 1] == []
    assert {state for _, _, state, _ in recorded} >= {"received", "generation_failed"}
    letters = [decode(DeadLetter, raw) for raw in quiet.deadletter.values]
    assert sorted((letter.topic, letter.offset) for letter in letters) == [
        ("t-generate", -1),
        (TOPIC, 52),
    ]
    counted = quiet.metrics.registry.get_sample_value
    assert counted("talkstream_dead_letters_total", {"topic": "t-generate"}) == 1
    assert counted("talkstream_dead_letters_total", {"topic": TOPIC}) == 1


class Unreadable(Quiet):
    """A ledger whose first read-back fails: Kafka cannot be reached (a broker outage)."""

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.failures = 1
        super().__init__(table)

    async def read_range(self, topic: str, partition: int, start: int, end: int) -> list[Rec]:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        return await super().read_range(topic, partition, start, end)


def test_a_batch_that_could_not_read_a_gap_back_is_decided_again() -> None:
    """A batch that needs a gap read back while Kafka cannot be reached: the read-back's error
    escaped the agent (faust acked the batch and restarted it) after the batch had decided
    and sent what came before the gap, and the ledger went on after it as if it were
    decided. Those states were never stored: a request whose command went out was not in
    flight in the table (its result changed nothing, no deadline re-issued it, it never
    ended), or was re-issued later and called again. Now the batch is decided again, and
    what Kafka took of it is not sent again."""
    table: dict[bytes, bytes] = {}
    quiet = Unreadable(table)

    async def run() -> None:
        await quiet.deliver(50)
        with contextlib.suppress(KafkaConnectionError):  # faust restarted a crashed agent
            await quiet.deliver(51, 53)  # 52 skipped: read back while Kafka is down
        await quiet.deliver(54)

    asyncio.run(run())
    state = decode(PersonState, table[PERSON.encode()])
    assert set(state.inflight) == {f"req-{offset}" for offset in range(50, 55)}
    calls = Counter(decode(GenerateText, raw).request_id for raw in quiet.generate.values)
    assert calls == {f"req-{offset}": 1 for offset in range(50, 55)}

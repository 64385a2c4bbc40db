"""Gap repair (``streams.gaps``), used by the ledger: the offset marks and
the read-back of a range faust skipped, with a fake mark store and a fake log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from streams.gaps import GapRepair

TOPIC = "t-requests"


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


def repair(marks: dict[int, int], log: FakeLog, every: int | None = 4) -> tuple[GapRepair, list]:
    repaired: list[int] = []

    async def load(topic: str, partition: int) -> int | None:
        assert topic == TOPIC
        return marks.get(partition)

    return GapRepair("test", load, log.read, repaired.append, mark_every=every), repaired


def skipped(gaps: GapRepair, partition: int, offset: int) -> list[int]:
    return [r.offset for r in asyncio.run(gaps.skipped(TOPIC, partition, offset))]


def test_without_a_mark_nothing_counts_as_skipped() -> None:
    log = FakeLog()
    gaps, repaired = repair({}, log)
    assert skipped(gaps, 0, 57) == []
    assert log.reads == [] and repaired == []


def test_a_message_beyond_the_mark_reads_the_range_in_between_back() -> None:
    log = FakeLog()
    gaps, repaired = repair({3: 10}, log)
    assert skipped(gaps, 3, 14) == [10, 11, 12, 13]
    assert log.reads == [(3, 10, 14)]
    assert repaired == [4]


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
    expected offset is known, is faust skipping messages: a WARNING. Both are repaired."""
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
    assert repaired == [4, 2, 5]

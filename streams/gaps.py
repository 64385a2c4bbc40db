"""Gap repair: faust can commit past messages it never delivered; read them back.

Seen here on every rebalance under load: a worker joining or leaving drops the agents' buffers,
and faust's commit logic then jumps the gap (100+ messages). An agent that must see every
message (the ledger) keeps, per partition, the next offset it expects; a message
beyond it means the range in between was skipped, and :meth:`GapRepair.skipped` reads that
range back from Kafka so the agent processes it first.

Where the expectation comes from on first sight of a partition (after a start or a rebalance)
is the agent's own *offset mark*: the ledger keeps one in its table (it moves with the
partition). It writes its mark only every ``mark_every`` offsets (:meth:`GapRepair.processed`
says when): a new owner that starts up to that many behind only re-reads messages whose
effects are idempotent (the ledger also writes it past a record it dead-lettered itself: a
letter is not). A partition with no mark had nothing of it decided (its first batch writes
one), so the agent expects its *log start*, the earliest offset Kafka holds of it: a partition
still empty when a rebalance dropped its first messages from the agent's buffer (a new
deployment's first minutes) had the next ones decided alone, and faust, which has no commit
of it to check a gap against, committed past the first. (That request was never decided: a
webhook accepted, and lost.) (The projector reads with a consumer of its own and seeks to the
marks its SQL rows hold: it needs no repair.)

A range is read back ``chunk`` records at most at a time (:meth:`GapRepair.cut_short` says
when the read did not reach the message that found the gap): a partition with no mark and a
long log (its changelog lost) was read back whole, into memory, and decided in one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


LoadMark = Callable[[str, int], Awaitable[int | None]]  # (topic, partition) -> next offset
LogStart = Callable[[str, int], Awaitable[int]]  # (topic, partition) -> its earliest offset
ReadRange = Callable[[str, int, int, int], Awaitable[Sequence[Any]]]  # topic, part, [start, end)


class GapRepair:
    def __init__(
        self,
        agent: str,
        load_mark: LoadMark,
        read_range: ReadRange,
        on_repaired: Callable[[int], None],
        mark_every: int | None = None,
        log_start: LogStart | None = None,
        chunk: int | None = None,
    ) -> None:
        self._agent = agent
        self._load_mark = load_mark
        self._read_range = read_range
        self._on_repaired = on_repaired
        self._mark_every = mark_every
        self._log_start = log_start
        self._expected: dict[tuple[str, int], int] = {}
        # the log start of each partition found without a mark, asked once since the last
        # rebalance
        self._starts: dict[tuple[str, int], int] = {}
        self._chunk = chunk
        # the partitions whose last read back stopped at ``chunk`` records, before the message
        # that found the gap: the offset it read up to
        self._cut: dict[tuple[str, int], int] = {}

    async def skipped(self, topic: str, partition: int, offset: int) -> Sequence[Record]:
        """The records of ``partition`` between the offset expected and ``offset`` (excluded),
        read back from Kafka; none when ``offset`` is the one expected (or nothing is known).
        At most ``chunk`` of them: when the range is longer, the next offset expected is the
        one after the last read, and :meth:`cut_short` says so (the caller leaves ``offset``
        for a later look, which reads on from there)."""
        going_on = self._cut.pop((topic, partition), None)  # where the last look stopped
        expected = self._expected.get((topic, partition))
        from_mark = expected is None
        unmarked = False
        if expected is None:
            expected = await self._load_mark(topic, partition)
            if expected is None:
                expected, unmarked = await self._start(topic, partition), True
        if expected is None or expected >= offset:
            return []
        end = offset if self._chunk is None else min(offset, expected + self._chunk)
        if going_on == expected:  # reading on from where the last look stopped (said then)
            self._on_repaired(end - expected)
        elif from_mark and not unmarked and offset - expected <= (self._mark_every or 0):
            # what a restart or a new owner meets: faust committed past the last mark, which
            # trails by up to ``mark_every``; those messages were most likely decided already,
            # and deciding them again changes nothing (a warning at every restart alarms for
            # nothing); read back all the same, in case faust skipped them
            # (not counted as repaired either: the counter would rise at every restart)
            log.info(
                "%s re-reads topic=%s partition=%s offsets=%s..%s, since its last mark",
                self._agent, topic, partition, expected, offset - 1,
            )  # fmt: skip
        else:
            log.warning(
                "%s gap topic=%s partition=%s offsets=%s..%s%s: repairing%s",
                self._agent, topic, partition, expected, offset - 1,
                " (nothing of it decided before: from its log start)" if unmarked else "",
                f", {self._chunk} records at a time" if end < offset else "",
            )  # fmt: skip
            self._on_repaired(end - expected)
        records = await self._read_range(topic, partition, expected, end)
        if end < offset:
            self._expected[(topic, partition)] = end
            self._cut[(topic, partition)] = end
        return records

    def cut_short(self, topic: str, partition: int) -> int | None:
        """Where the last read back of ``partition`` stopped, when it stopped at ``chunk``
        records before the message that found the gap (that message, and the partition's
        others after it, wait for the next look); None when it read the whole range."""
        return self._cut.get((topic, partition))

    async def expectation(
        self, topic: str, partition: int, *, log_start: bool = True
    ) -> int | None:
        """The next offset of ``partition`` the agent awaits: as it processed it, or its mark
        when it has processed nothing of it since it was (re)assigned, or (``log_start``) its
        log start when it has no mark, which Kafka is asked (not kept: the agent's first
        message of it decides how a gap from the mark is told)."""
        expected = self._expected.get((topic, partition))
        if expected is None:
            expected = await self._load_mark(topic, partition)
        if expected is None and log_start:
            return await self._start(topic, partition)
        return expected

    async def _start(self, topic: str, partition: int) -> int | None:
        """The log start of a partition with no mark (asked of Kafka once), if it can be asked."""
        if self._log_start is None:
            return None
        start = self._starts.get((topic, partition))
        if start is None:
            start = self._starts[(topic, partition)] = await self._log_start(topic, partition)
        return start

    def processed(self, topic: str, partition: int, offset: int) -> bool:
        """Record that ``offset`` was processed; True when the durable mark is due: the first
        message since the expectation was (re)loaded, one after a gap, or every ``mark_every``."""
        previous = self._expected.get((topic, partition))
        self._expected[(topic, partition)] = offset + 1
        if self._mark_every is None:
            return False
        return previous != offset or offset % self._mark_every == 0

    def rewind(self, topic: str, partition: int, offset: int) -> None:
        """Expect ``offset`` again (processed, but its batch was not stored): the next message
        of the partition, or a probe, reads it back from there."""
        expected = self._expected.get((topic, partition))
        if expected is None or offset < expected:
            self._expected[(topic, partition)] = offset

    def forget(self) -> None:
        """After a rebalance: partitions may have moved, so expectations come from marks again
        (and log starts, which retention may have moved meanwhile, from Kafka)."""
        self._expected.clear()
        self._starts.clear()
        self._cut.clear()

"""What an executor commits of each partition: how far it took it, and the mark of what it has
not reported.

An executor commits the records it took before their calls start (a command is called at most
once per delivery); each commit's metadata is a :class:`~streams.agents.marks.Mark`: this run,
the offsets it took and has not reported yet, and the calls of the partition other runs went
on with (``streams.agents.lost``). :class:`Commits` keeps the offset taken and the mark last
committed of each partition, and says what to commit: a batch just taken, and any partition
whose mark has changed since (its calls reported), so that a crash leaves its next run, or the
partition's next owner, a mark that names what was lost.

A mark is at most :data:`~streams.agents.marks.MARK_BYTES` long, which the broker's default
``offset.metadata.max.bytes`` (4096) takes. A broker set to keep less refuses a commit whose
mark is longer (``OffsetMetadataTooLargeError``, the commit's own error: the group stays as it
is): the executor read its batch again at each refusal, and one whose mark did not shrink (a
call that never reported, ranges no report joins) stalled its partitions for good. A refusal
for the mark's size now halves the most a mark of this run may be, down to
:data:`~streams.agents.marks.MARK_LEAST_BYTES`, and the commit is sent again at once with its
marks shortened to fit (``Mark.fitting``: what they leave out is re-issued at its deadline).
The most learned is doubled again (up to ``MARK_BYTES``) after :data:`RAISE_AFTER` commits
passed in a row: an operator who raised the broker's limit (as the stall's ERROR asks) would
otherwise have the run keep marks at their least, naming nothing lost, until it restarts. A
broker still keeping less refuses the next longer mark, which halves the most again (an INFO
line then, not a WARNING: it said nothing new). A refusal that a mark at its least still
meets is the executor's to say (``Executor.refused``).
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import InvalidCommitOffsetSizeError, OffsetMetadataTooLargeError

from streams.agents import marks as _marks
from streams.agents.lost import LostWork
from streams.agents.marks import MARK_BYTES, Mark, Ranges, Running, Unreported

log = logging.getLogger("streams.agents.executors")  # the executors' lines

# what a broker answers a commit whose metadata (its mark) is longer than it keeps
TOO_LONG = (OffsetMetadataTooLargeError, InvalidCommitOffsetSizeError)
# a refusal for the mark's size, and the most a mark is now (once a refusal, for the run)
SHORTER = (
    "%s: the broker refused a commit for its mark's size (%s, %s bytes; its "
    "offset.metadata.max.bytes is less): marks are now at most %s bytes, those left out of "
    "them re-issued by the ledger at their deadline, not told lost at once"
)
# commits passed in a row after which a most lowered by refusals is doubled again (a broker's
# limit raised since): a broker still keeping less costs one refused commit, sent again at once
# with shorter marks, per this many
RAISE_AFTER = 1000


class Commits:
    """One executor run's commits: :attr:`taken` (the next offset of each partition) and
    :attr:`marked` (the mark of each partition's last commit)."""

    def __init__(
        self, *, instance: str, run_id: str, unreported: Unreported, lost: LostWork
    ) -> None:
        self._instance = instance
        self._run_id = run_id
        self.most = MARK_BYTES  # a mark's most: halved at each refusal for its size
        self.passed = 0  # commits passed since the last refusal for a mark's size, or raise
        self._raised = False  # the most was raised since the last refusal: a probe of it
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._lost = lost  # the executor's: the partitions read again, the calls elsewhere
        self.taken: dict[TopicPartition, int] = {}  # next offset per partition
        self.marked: dict[TopicPartition, Mark] = {}  # the mark of each last commit

    def mark(self, oldest: int, unreported: Ranges, running: tuple[Running, ...] = ()) -> Mark:
        return Mark(self._instance, self._run_id, oldest, unreported, running).fitting(self.most)

    def marks(
        self, offsets: dict[TopicPartition, int], first: dict[TopicPartition, int]
    ) -> dict[TopicPartition, tuple[int, Mark]]:
        """What to commit: the new offsets (a batch taken from ``first`` to each), and the
        partitions whose unreported offsets changed since their last commit, each with its
        mark."""
        marks = {}
        for tp in {*offsets, *self.taken}:
            if tp in self._lost.reading:
                continue
            at = offsets.get(tp, self.taken.get(tp, 0))
            taking = range(first.get(tp, at), at)
            mark = self.mark(
                self._unreported.oldest(tp, taking.start),
                self._unreported.ranges(tp, taking),
                self._lost.elsewhere.of(tp),
            )
            if tp in offsets or self.marked.get(tp) != mark:
                marks[tp] = (at, mark)
        return marks

    async def commit(
        self, consumer: AIOKafkaConsumer | None, marks: dict[TopicPartition, tuple[int, Mark]]
    ) -> None:
        """Commits each partition's offset with its mark (what is not reported); a refusal for
        a mark's size halves :attr:`most` (down to ``MARK_LEAST_BYTES``) and commits again
        with the marks shortened to it; a refusal at the least is raised. :data:`RAISE_AFTER`
        commits passed in a row double a lowered most again."""
        if not marks or consumer is None:
            return
        while True:
            try:
                await consumer.commit({tp: (at, mark.encode()) for tp, (at, mark) in marks.items()})
            except TOO_LONG as exc:
                self.passed = 0
                shorter = self._shorter(marks)
                if shorter is None:
                    raise  # no shorter mark: the executor says so (``Executor.refused``)
                # a raised most refused: the broker still keeps less, as already said
                level = logging.INFO if self._raised else logging.WARNING
                self._raised = False
                log.log(level, SHORTER, self._instance, type(exc).__name__,
                        max(len(mark.encode()) for _, mark in marks.values()),
                        self.most)  # fmt: skip
                marks = shorter
                continue
            break
        self.marked.update({tp: mark for tp, (_, mark) in marks.items()})
        self.passed += 1
        if self.most < MARK_BYTES and self.passed >= RAISE_AFTER:
            self.most, self.passed, self._raised = min(self.most * 2, MARK_BYTES), 0, True
            log.debug("%s: %s commits passed: marks may be %s bytes again",
                      self._instance, RAISE_AFTER, self.most)  # fmt: skip

    def _shorter(
        self, marks: dict[TopicPartition, tuple[int, Mark]]
    ) -> dict[TopicPartition, tuple[int, Mark]] | None:
        """``marks`` refused for their size, within half the most (halved again while that
        shortens none of them); None when none is shorter within ``MARK_LEAST_BYTES``."""
        longest = max(len(mark.encode()) for _, mark in marks.values())
        while self.most > _marks.MARK_LEAST_BYTES:
            self.most = max(min(self.most, longest) // 2, _marks.MARK_LEAST_BYTES)
            shorter = {tp: (at, mark.fitting(self.most)) for tp, (at, mark) in marks.items()}
            if shorter != marks:
                return shorter
        return None

    def named(self, taken: list[tuple[TopicPartition, int, int]]) -> bool:
        """Whether the last commit of a partition names lost an offset of ``taken`` (what
        ``Unreported.reported`` settled of a command: its commit failed, or the partition is
        not committed while a range a previous run lost is read again): a command sent on now
        (forwarded, handed back) would be told lost, and re-issued, if this run ended, while
        the copy sent was called too. (A partition given up since is its hand-over's mark's.)"""
        for tp, offset, _ in taken:
            mark = self.marked.get(tp)
            if mark is not None and mark.lost(offset):
                return True
        return False

    def forget(self, tp: TopicPartition) -> None:
        """A partition given up: no longer this run's to commit."""
        self.marked.pop(tp, None)
        self.taken.pop(tp, None)

"""What an executor commits of each partition: how far it took it, and the mark of what it has
not reported.

An executor commits the records it took before their calls start (a command is called at most
once per delivery); each commit's metadata is a :class:`~streams.agents.marks.Mark`: this run,
the offsets it took and has not reported yet, and the calls of the partition other runs went
on with (``streams.agents.lost``). :class:`Commits` keeps the offset taken and the mark last
committed of each partition, and says what to commit: a batch just taken, and any partition
whose mark has changed since (its calls reported), so that a crash leaves its next run, or the
partition's next owner, a mark that names what was lost.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.agents.lost import LostWork
from streams.agents.marks import Mark, Ranges, Running, Unreported


class Commits:
    """One executor run's commits: :attr:`taken` (the next offset of each partition) and
    :attr:`marked` (the mark of each partition's last commit)."""

    def __init__(
        self, *, instance: str, run_id: str, unreported: Unreported, lost: LostWork
    ) -> None:
        self._instance = instance
        self._run_id = run_id
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._lost = lost  # the executor's: the partitions read again, the calls elsewhere
        self.taken: dict[TopicPartition, int] = {}  # next offset per partition
        self.marked: dict[TopicPartition, Mark] = {}  # the mark of each last commit

    def mark(
        self, oldest: int, unreported: Ranges | None, running: tuple[Running, ...] = ()
    ) -> Mark:
        return Mark(self._instance, self._run_id, oldest, unreported, running).fitting()

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
        """Commits each partition's offset with its mark (what is not reported)."""
        if marks and consumer is not None:
            await consumer.commit({tp: (at, mark.encode()) for tp, (at, mark) in marks.items()})
            self.marked.update({tp: mark for tp, (_, mark) in marks.items()})

    def forget(self, tp: TopicPartition) -> None:
        """A partition given up: no longer this run's to commit."""
        self.marked.pop(tp, None)
        self.taken.pop(tp, None)

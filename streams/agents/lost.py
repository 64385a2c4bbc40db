"""What an executor's partitions lost: read again and told to the ledger, not left to deadlines.

An executor commits what it took before the work starts; each commit's mark
(``streams.agents.marks``) notes which run of the instance took the records and which of them
are not reported yet. When the last commit of a partition it is given is another run's (this
instance's previous run, a restart with no rebalance; or another worker's, one that died), what
that run took and did not report is read again from its oldest unreported offset
(:meth:`LostWork.read_again`) and each such attempt is told to its person's ledger as lost,
``DeadlineExpired(lost=True)`` (:meth:`LostWork.past_lost`): it is re-issued now, not after its
deadline (the ledger of their people may be on a worker that saw no rebalance). Until a lost
range's end is read, the partition is not committed. Those reported before change nothing (the
ledger acts on a lost attempt only while it is current); what cannot be told is left to the
deadlines, as before the marks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.events import DeadlineExpired
from streams.agents.marks import Mark
from streams.agents.work import Work
from streams.codecs import encode
from streams.runtime import Clock, Topics

log = logging.getLogger("streams.agents.executors")  # the executors' lines, as before the split


class LostWork:
    """One executor's lost work: the partitions read again up to the end of a range another
    run left unreported (:attr:`reading`), and the telling of the ledger."""

    def __init__(
        self, *, name: str, instance: str, work: Work[Any], topics: Topics, clock: Clock
    ) -> None:
        self._name = name  # the executor's, in its log lines
        self._instance = instance
        self._work = work
        self._topics = topics
        self._clock = clock
        self.reading: dict[TopicPartition, tuple[int, Mark]] = {}  # a previous run's, up to here
        self._told: dict[TopicPartition, int] = {}  # of it, attempts told lost so far

    def read_again(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, mark: Mark
    ) -> None:
        """``tp``'s last commit, up to ``offset``, is ``mark``'s run's, which left attempts from
        ``mark.oldest`` unreported: read again from there, to tell the ledger they were lost."""
        self.reading[tp] = (offset, mark)
        consumer.seek(tp, mark.oldest)
        which = (
            f"offsets {mark.oldest}-{offset - 1}"
            if mark.unreported is None
            else f"{sum(min(b, offset) - a for a, b in mark.unreported)} offsets "
            f"between {mark.oldest} and {offset - 1}"
        )
        log.info("%s: partition %s: %s were taken by %s and not reported; telling the "
                 "ledger they were lost", self._name, tp.partition, which,
                 self.whose(mark))  # fmt: skip

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer this executor's: its new owner reads its marks."""
        self.reading.pop(tp, None)
        self._told.pop(tp, None)

    async def past_lost(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, int]:
        """Sends the ledger, for each record of ``batch`` below its partition's lost range's
        end, that the attempt was lost, and leaves in ``batch`` only records to take; returns
        the offsets where lost ranges ended (to commit)."""
        ended: dict[TopicPartition, int] = {}
        for tp in [tp for tp in batch if tp in self.reading]:
            (end, mark), records = self.reading[tp], batch.pop(tp)
            lost = [r.value for r in records if r.offset < end and mark.lost(r.offset)]
            try:
                told = len(await self.tell_lost(lost))
            except Exception as exc:  # their deadlines re-issue them, as before the marks
                log.warning("%s could not tell the ledger what its previous run lost (%s); "
                            "their deadlines re-issue them", self._name,
                            type(exc).__name__)  # fmt: skip
                told = 0
            self._told[tp] = self._told.get(tp, 0) + told
            if records[-1].offset + 1 < end:
                continue  # more of the range to come
            del self.reading[tp]
            ended[tp] = end
            log.info("%s: partition %s: %s attempts of the previous run told lost (those it "
                     "reported change nothing)", self._name, tp.partition,
                     self._told.pop(tp))  # fmt: skip
            rest = [r for r in records if r.offset >= end]
            if rest:
                batch[tp] = rest
        return ended

    async def tell_lost(self, values: list[bytes]) -> list[Any]:
        """Each command in ``values`` told to its person's ledger as lost (acknowledged);
        returns those told."""
        told, deliveries, now = [], [], self._clock.now_ms()
        for value in values:
            try:
                command = self._work.decode(value)
            except Exception:  # the previous run dead-lettered it
                continue
            lost = DeadlineExpired(
                request_id=command.request_id,
                person=command.person,
                attempt=command.attempt,
                stage=self._work.stage,
                at_ms=now,
                lost=True,
            )
            deliveries.append(
                await self._topics.requests.send(key=command.person.encode(), value=encode(lost))
            )
            told.append(command)
        if deliveries:  # acknowledged before the range is committed as done
            await asyncio.gather(*deliveries)
        return told

    def whose(self, mark: Mark) -> str:
        if mark.instance == self._instance:
            return "this instance's previous run"
        return f"{mark.instance}'s run {mark.run}"

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
deadlines, as before the marks. A stopping executor tells the calls its drain cut short the
same way (:meth:`LostWork.tell_lost`).

A rebalance that moves a partition away lets the calls of it already running finish where they
run. The hand-over's mark lists them (:class:`~streams.agents.marks.Running`,
:meth:`LostWork.handing`) with the run calling them and its member id in the group, and whoever
owns the partition then carries them in its own marks (:meth:`LostWork.watch`) and asks the
group's coordinator who its members are (DescribeGroups, every :data:`ELSEWHERE_CHECK_S`,
:meth:`LostWork.check_elsewhere`): once that member is no longer one (it died and missed its
session, or the worker's next run took its place under a new id), those offsets are read again
and told to the ledger as lost, like a previous run's. Past their deadline (``watch_ms``) they
are no longer watched: the ledger re-issues them anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.events import DeadlineExpired
from streams.agents.marks import Elsewhere, Mark, Running, Unreported
from streams.agents.work import Work
from streams.codecs import encode
from streams.kafka_options import group_member_ids, member_id
from streams.runtime import Clock, Topics

log = logging.getLogger("streams.agents.executors")  # the executors' lines, as before the split

ELSEWHERE_CHECK_S = 2.0  # how often the runs calling what a partition's marks list are looked up


class LostWork:
    """One executor's lost work: the partitions read again up to the end of a range another
    run left unreported (:attr:`reading`), the calls of its partitions other runs went on with
    (:attr:`elsewhere`, carried in its marks), and the telling of the ledger."""

    def __init__(
        self,
        *,
        name: str,
        instance: str,
        group: str,
        run_id: str,
        watch_ms: int | None,
        unreported: Unreported,
        work: Work[Any],
        topics: Topics,
        clock: Clock,
    ) -> None:
        self._name = name  # the executor's, in its log lines
        self._instance = instance
        self._group = group
        self._run_id = run_id
        self._watch_ms = watch_ms  # see ``ExecutorConfig.watch_ms``
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._work = work
        self._topics = topics
        self._clock = clock
        self.reading: dict[TopicPartition, tuple[int, Mark]] = {}  # a previous run's, up to here
        self._told: dict[TopicPartition, int] = {}  # of it, attempts told lost so far
        self.elsewhere = Elsewhere()  # calls of its partitions that other runs went on with
        self._checked_at = 0.0  # when the group's members were last looked up

    def watch(self, tp: TopicPartition, mark: Mark) -> bool:
        """The calls ``mark`` lists as running in runs that gave ``tp`` up, carried on in this
        run's marks until their run is gone (:meth:`check_elsewhere`); this run's own, if it
        still knows them (given straight back), are its unreported calls again. Whether any
        are carried."""
        mine = tp in self._unreported.partitions()
        elsewhere = tuple(r for r in mark.running if not (mine and r.run == self._run_id))
        if elsewhere:
            self.elsewhere.carry(tp, elsewhere)
            self._checked_at = 0.0  # looked up at once
        return bool(elsewhere)

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
        self.elsewhere.carry(tp, ())

    def handing(
        self, tp: TopicPartition, consumer: AIOKafkaConsumer | None, but: Collection[int] = ()
    ) -> tuple[Running, ...]:
        """What a hand-over's mark of ``tp`` lists as running elsewhere: what its marks listed
        so, and this run's calls of it not reported, but the offsets in ``but`` (commands it
        could not hand back, which the mark lists as lost) (unless too many to list: their
        deadline re-issues them if this run dies first; so do they if it is no member of the
        group now, which then gives the partition over without it)."""
        running = self.elsewhere.of(tp)
        ranges, whole = self._unreported.listing(tp, but=but)
        if not ranges:
            return running
        member = member_id(consumer) if consumer is not None else ""
        if not whole or not member:
            why = "too many to list" if not whole else "not a member of the group"
            log.warning("%s: partition %s: calls still running left out of its hand-over (%s); "
                        "if this worker dies first, their deadlines re-issue them",
                        self._name, tp.partition, why)  # fmt: skip
            return running
        handed = Running(self._instance, self._run_id, member, ranges, self._clock.now_ms())
        return (*running, handed)

    async def check_elsewhere(
        self, consumer: AIOKafkaConsumer, taken: dict[TopicPartition, int]
    ) -> None:
        """While marks list calls running in other runs, the group's members are looked up
        every :data:`ELSEWHERE_CHECK_S`; the calls of a run no longer among them (by its
        member id then) are read again from the partition and told to the ledger as lost, like a
        previous run's (:meth:`past_lost`), one run's at a time per partition, of the partitions
        the executor has ``taken`` from. Until they are told, the last commit of the partition
        keeps listing them."""
        now = asyncio.get_running_loop().time()
        if not self.elsewhere or now - self._checked_at < ELSEWHERE_CHECK_S:
            return
        self._checked_at = now
        if self._watch_ms is not None:  # past their deadline: the ledger's
            for tp, running in self.elsewhere.expire(self._clock.now_ms() - self._watch_ms):
                log.info("%s: partition %s: no longer watching the calls %s's run %s went on "
                         "with (past their deadline)", self._name, tp.partition,
                         running.instance, running.run)  # fmt: skip
        if not self.elsewhere:
            return
        try:
            members = await group_member_ids(consumer, self._group)
        except Exception as exc:  # asked again at the next check
            log.warning("%s could not look up its group's members (%s)",
                        self._name, type(exc).__name__)  # fmt: skip
            return
        for tp, first in self.elsewhere.gone(members).items():
            if tp in self.reading or tp not in taken:
                continue
            mark = Mark(first.instance, first.run, first.offsets[0][0], first.offsets)
            try:
                consumer.seek(tp, mark.oldest)
            except Exception as exc:  # no longer assigned: its marks keep listing them
                log.warning("%s: partition %s: could not read again what %s was calling (%s)",
                            self._name, tp.partition, self.whose(mark),
                            type(exc).__name__)  # fmt: skip
                continue
            self.reading[tp] = (taken[tp], mark)  # its commits wait for the range's end
            self.elsewhere.told(tp, first)
            log.info("%s: partition %s: %s offsets between %s and %s were still being called "
                     "by %s, which left the group; telling the ledger they were lost",
                     self._name, tp.partition, sum(b - a for a, b in first.offsets),
                     mark.oldest, first.offsets[-1][1] - 1,
                     self.whose(mark))  # fmt: skip

    async def past_lost(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, int]:
        """Sends the ledger, for each record of ``batch`` below its partition's lost range's
        end, that the attempt was lost, and leaves in ``batch`` only records to take; returns
        the offsets where lost ranges ended (to commit).

        A partition revoked while the ledger was told (the group rebalanced meanwhile: a
        member's session ran out) is its new owner's, which reads its marks: nothing of it is
        counted, ended or committed here, and a range read again since it came back (another
        assignment, another mark) is left to its own batches. The worker crashed here, once
        under load (``KeyError`` on the range forgotten by the revoke, the whole app down)."""
        ended: dict[TopicPartition, int] = {}
        for tp in [tp for tp in batch if tp in self.reading]:
            reading, records = self.reading[tp], batch.pop(tp)
            end, mark = reading
            lost = [r.value for r in records if r.offset < end and mark.lost(r.offset)]
            try:
                told = len(await self.tell_lost(lost))
            except Exception as exc:  # their deadlines re-issue them, as before the marks
                log.warning("%s could not tell the ledger what its previous run lost (%s); "
                            "their deadlines re-issue them", self._name,
                            type(exc).__name__)  # fmt: skip
                told = 0
            if self.reading.get(tp) is not reading:  # revoked meanwhile (:meth:`forget`)
                continue
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

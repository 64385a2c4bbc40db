"""What an executor does when a rebalance moves its partitions: it hands over what it holds of
those it gives up, and reads the marks of those it is given.

An executor commits what it took before the work starts, so a partition's next owner would not
see the commands this worker took and did not start: on a revoke (:meth:`HandOver.hand_back`)
those still queued go back to the topic, in order, and the partition is committed with a mark
that leaves nothing of this run's to tell lost but the commands Kafka did not take back (told
lost by the next owner) and the calls still running here (they finish and report here; the
mark lists them as running elsewhere, ``streams.agents.lost``). On an
assign (:meth:`HandOver.recover`) each partition's last mark says what another run took and did
not report: read again and told to the ledger as lost, or carried on while its run still calls
it. A stopping executor hands its queued commands back the same way (:meth:`HandOver.send_back`).

A command is handed back once the last commit of its partition no longer names it
(:meth:`HandOver.send_back`), as a forward is (``streams.agents.forwarding``): the mark without
the queued commands is committed first, and only those it no longer names are sent. Sent first
and committed after Kafka took them back, they were named by the partition's last mark
meanwhile: a worker that died in between left the next owner (or its next run) telling the
ledger they were lost, and the ledger, their attempt current, re-issued them while the copies
handed back were called too: one OpenAI call made twice, billed twice. A crash before that
commit leaves them named (never handed back: told lost, re-issued, called once); one after it,
each handed back, or, if Kafka had not taken it yet, left to its deadline. A commit that fails
hands back none of the commands its last mark names (sent, each would be told lost by the
partition's next reader and called from its copy too); they stay named, told lost by it. A
command Kafka did not take back is named by a commit made after the sends, told lost by the
next reader; if that commit fails too, it waits for its deadline (a WARNING counts them).
(Kafka may hold one whose delivery failed all the same: named lost, it is then called twice, as
before this order; ``streams.agents.forwarding`` sends a forward again instead.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from streams.agents.called import Called
from streams.agents.commits import Commits
from streams.agents.lost import LostWork
from streams.agents.marks import Mark, Unreported, listed
from streams.agents.results import NOT_HANDED_BACK, log_unsent
from streams.kafka_options import committed_with_metadata
from streams.runtime import Topics
from streams.upstream.scheduler import Job, Scheduler

log = logging.getLogger("streams.agents.executors")  # the executors' lines, as before the split

Marks = dict[TopicPartition, tuple[int, Mark]]  # what a commit carries: offset and mark
# the commit before a hand-back failed: the commands its last mark names are not handed back
NOT_UNMARKED = (
    "%s could not commit its marks before handing back (%s): the queued commands its last "
    "commit names are not handed back; told lost by the partition's next reader"
)
# nor the commit naming those Kafka did not take back: their deadline re-issues them
NOT_NAMED = (
    "%s could not commit the marks naming %s commands it could not hand back (%s): re-issued "
    "at their deadline"
)


class HandOver:
    """One executor run's side of its group's rebalances (and of its stop's hand-back)."""

    def __init__(
        self,
        *,
        name: str,
        run_id: str,
        scheduler: Scheduler,
        topics: Topics,
        called: Called,
        unreported: Unreported,
        lost: LostWork,
        commits: Commits,
    ) -> None:
        self._name = name  # the executor's (generator | publisher), in its log lines
        self._run_id = run_id
        self._scheduler = scheduler  # the executor's: the commands it queued by target
        self._topics = topics
        self._called = called  # the executor's: the commands this run took lately
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._lost = lost
        self._commits = commits

    async def send_back(
        self,
        consumer: AIOKafkaConsumer | None,
        jobs: list[Job[Any]],
        marks: Callable[[list[Job[Any]]], Marks],
    ) -> list[Job[Any]]:
        """Queued commands back to their topic, in order, acknowledged, each once the last
        commit of its partition no longer names it. Each is taken out of what is unreported
        and the marks that follow (``marks([])``) are committed first; then only those the
        last commit does not name lost are sent (one sent while a mark still named it had a
        crash before the next commit leave the partition's next owner telling the ledger it
        was lost: re-issued while the copy handed back was called too, one call made twice).
        One still named (that commit failed) is not sent: told lost by the partition's next
        reader, re-issued, called once. One Kafka did not take back is this run's to report
        again, and the marks are committed again naming it (``marks(unsent)``): told lost by
        the next reader; if that commit fails too, a command the last commit does not name
        waits for its deadline (a WARNING says how many). Returns those not handed back."""
        settled = [(job, self._unreported.reported(job.key, job.attempt)) for job in jobs]
        failed = await self._commit(consumer, marks, [])
        if failed is not None:
            log.warning(NOT_UNMARKED, self._name, type(failed).__name__)
        topic = self._topics.generate if self._name == "generator" else self._topics.completions
        deliveries, unsent = [], []
        for job, taken in settled:
            if self._commits.named(taken):  # a crash would have it told lost: not sent
                unsent.append((job, taken))
                continue
            self._called.forget(job.key, job.attempt)  # whoever takes it back calls it
            key, value = job.record
            try:
                deliveries.append((job, taken, await topic.send(key=key, value=value)))
            except Exception as exc:
                log_unsent(exc, NOT_HANDED_BACK, self._name, job.key)
                unsent.append((job, taken))
        for job, taken, delivery in deliveries:
            try:
                await delivery
            except Exception as exc:
                log_unsent(exc, NOT_HANDED_BACK, self._name, job.key)
                unsent.append((job, taken))
        for job, taken in unsent:  # this run's to report again: named by the next commit
            self._unreported.restore(job.key, taken)
        failed = await self._commit(consumer, marks, [job for job, _ in unsent]) if unsent else None
        waiting = sum(not self._commits.named(taken) for _, taken in unsent)
        if failed is not None and waiting:
            log.warning(NOT_NAMED, self._name, waiting, type(failed).__name__)
        return [job for job, _ in unsent]

    async def _commit(
        self,
        consumer: AIOKafkaConsumer | None,
        marks: Callable[[list[Job[Any]]], Marks],
        unsent: list[Job[Any]],
    ) -> Exception | None:
        """``marks(unsent)`` committed; what failed it, if it failed."""
        try:
            await self._commits.commit(consumer, marks(unsent))
        except Exception as exc:
            return exc
        return None

    async def hand_back(
        self, consumer: AIOKafkaConsumer | None, revoked: set[TopicPartition]
    ) -> None:
        """Commands of partitions this worker lost that it took but did not start go back to
        their topic, in order, for the new owner (they were committed as taken, so it would
        not see them otherwise), each once the partitions' hand-over marks no longer name it
        (:meth:`send_back`). Calls already running finish here and report."""
        jobs = self._scheduler.take_back(set(revoked))
        taken = self._commits.taken

        def handed(unsent: list[Job[Any]]) -> Marks:
            # what the partitions' next owner finds: nothing of this run's to call lost now
            # but the commands that could not be handed back, and the calls still running
            # here, with this run, as running elsewhere (they report; if this run leaves the
            # group first, a crash, the owner tells the ledger they were lost)
            marks = {}
            for tp in revoked:
                if tp in taken and tp not in self._lost.reading:
                    mark = self._handed_mark(
                        tp, taken[tp], [job for job in unsent if job.origin == tp], consumer
                    )
                    if mark is not None:
                        marks[tp] = (taken[tp], mark)
            return marks

        unsent = await self.send_back(consumer, jobs, handed)
        if jobs:
            log.info("%s handed back %s queued commands of revoked partitions",
                     self._name, len(jobs) - len(unsent))  # fmt: skip
        # the calls still running here stay listed: a rebalance revokes every partition and
        # may give this worker some of them back (``recover``), whose marks must then list
        # those calls again, or a crash before they end would lose them to their deadline
        for tp in revoked:
            self._commits.forget(tp)
            self._lost.forget(tp)

    def _handed_mark(
        self,
        tp: TopicPartition,
        at: int,
        unsent: list[Job[Any]],
        consumer: AIOKafkaConsumer | None,
    ) -> Mark | None:
        """The mark a revoked partition is handed over with: the commands of it that could not
        be handed back, as taken and not reported (the next owner tells the ledger at once
        that they were lost), and the calls running here as running elsewhere. It kept its
        last mark whole when one command could not be handed back, which listed those handed
        back fine too: the next owner told the ledger they were lost as well, and each was
        re-issued as another attempt (an attempt spent, its call possibly billed twice, the
        copy handed back called too). None (the last mark stays) when an unsent command's
        offset is not known; too many to list, the oldest are (the rest: their deadlines)."""
        offsets = sorted(
            {o for job in unsent for o in self._unreported.offsets(tp, job.key, job.attempt)}
        )
        if unsent and not offsets:
            return None
        lost = listed((o, o + 1) for o in offsets)  # (too many: the oldest; the rest, deadlines)
        running = self._lost.handing(tp, consumer, but=set(offsets))
        return self._commits.mark(offsets[0] if offsets else at, lost, running)

    async def recover(
        self, consumer: AIOKafkaConsumer | None, assigned: set[TopicPartition]
    ) -> None:
        """Partitions whose last commit is another run's, this instance's (a restart, with no
        rebalance) or another worker's (one that died: a run that hands a partition over
        commits that it left nothing unreported): what that run took and did not report is
        read again, from its oldest unreported offset, and each such attempt is told to the
        ledger as lost: this is how lost work is re-issued before its deadline (a rebalance
        grace in the ledger, off by default, would not do either: the executors' groups
        rebalance apart from the ledger's, which sees none when the dead worker is back
        within its session timeout after its executors' partitions moved). The calls a mark
        lists as running elsewhere (a hand-over's) are carried on in this run's marks and
        told lost once their run has left the group (``LostWork.check_elsewhere``)."""
        self._unreported.forget(self._unreported.partitions() - assigned)  # others' now
        if consumer is None or not assigned:
            return
        try:
            committed = await committed_with_metadata(consumer, assigned)
        except Exception as exc:  # the deadlines re-issue whatever was lost
            log.warning("%s could not read its partitions' marks (%s)",
                        self._name, type(exc).__name__)  # fmt: skip
            return
        for tp, (offset, metadata) in committed.items():
            mark = Mark.parse(metadata)
            if mark is None:
                continue
            # calls other runs went on with after giving the partition up
            if self._lost.watch(tp, mark):
                self._commits.taken.setdefault(tp, offset)  # its next commit carries them
            if mark.run == self._run_id or mark.oldest >= offset:
                self._mark_running(tp, offset)
                continue
            if mark.oldest < offset:
                self._lost.read_again(consumer, tp, offset, mark)

    def _mark_running(self, tp: TopicPartition, offset: int) -> None:
        """A partition given back to this run by a rebalance: the calls of it still running
        here (its hand-over's mark listed them as running elsewhere) are marked again as this
        run's by the executor's next commit (its loop's next turn, within half a second), so
        a crash before they end has its next run, or the partition's next owner, tell the
        ledger they were lost, not their deadline. Not committed from here: a commit inside
        the rebalance listener, before the group's other members have synced, is refused
        (``REBALANCE_IN_PROGRESS``) and aiokafka rejoins, which makes the others' listeners
        commit into the next rebalance in turn, a storm for as long as calls run (the
        projector's group had it: 02f47e7). Until that commit the hand-over's mark lists
        them as running in this run, whose crash has them told lost all the same."""
        if self._unreported.partitions() & {tp}:
            self._commits.taken[tp] = offset  # its next commit carries them


class OnRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """An executor's consumer's rebalance listener: its partitions handed over and recovered."""

    def __init__(self, handover: HandOver, consumer: AIOKafkaConsumer) -> None:
        self._handover = handover
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._handover.hand_back(self._consumer, revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._handover.recover(self._consumer, assigned)

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
command Kafka surely did not take back (the producer refused it, or failed it before it held it:
a stop that gave up on Kafka) is named by a commit made after the sends, told lost by the next
reader; if that commit fails too, it waits for its deadline (a WARNING counts them).

A command whose delivery failed once the producer held it may be in Kafka all the same (a
leader that wrote it and stepped down before it acknowledged it answers NotLeaderForPartition;
the producer retries until no leader is left and gives up: the case ``streams.agents.called``
describes for the ledger's commands). Named lost, the next reader told the ledger, which
re-issued it while the copy Kafka held was read and called too: one OpenAI call made twice.
It is named by no mark now, and sent again (:meth:`HandOver.send_held`: the executor's loop,
and its stop once more), the same record to the same partition, until Kafka acknowledges it;
whoever owns the partition calls the first copy it takes (``streams.agents.called``). A run
that ends first leaves it to whoever takes the copy Kafka may hold (at once: its partition's
owner reads it within seconds), or else to its deadline. One not acknowledged once it has
waited past the most a command waits for its target is sent no more: its deadline is near. A
stop counts those left in a WARNING.

The forwards held for a revoked partition (``streams.agents.forwarding``: those an answer took
out of their queue, or whose commit or delivery failed, not sent yet) go the same way, to their
organisation's partition, after the hand-over's mark: it lists them neither as lost nor as
running here. Listed as running in this run and forwarded by the loop after, they were told
lost by the partition's next owner once this run left the group (a crash; a stop) while the
organisation's executor still had them to call, and re-issued: one call made twice (a call
running here reports its result to the person's partition before any such news, which then
changes nothing; a forward reports nothing here). One the producer refuses is named lost by the
commit after, as a hand-back; one whose delivery fails is held to forward again (the
forwarding's next send), named by no mark.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import CancelledError
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from streams.agents.called import Called
from streams.agents.commits import Commits
from streams.agents.forwarding import Forwarding, Held, read_late
from streams.agents.lost import LostWork
from streams.agents.marks import Mark, Unreported, listed
from streams.agents.results import NOT_HANDED_BACK, log_unsent
from streams.kafka_options import GivenUp, committed_with_metadata
from streams.runtime import Topics
from streams.upstream.scheduler import Job, Scheduler

log = logging.getLogger("streams.agents.executors")  # the executors' lines, as before the split

Marks = dict[TopicPartition, tuple[int, Mark]]  # what a commit carries: offset and mark
# the commit before a hand-back failed: the commands its last mark names are not handed back
NOT_UNMARKED = (
    "%s could not commit its marks before handing back (%s): the queued commands its last "
    "commit names are not handed back; told lost by the partition's next reader"
)
# a held forward a hand-over could not send (the producer refused it): named lost after it
NOT_FORWARDED = "%s could not forward request_id=%s"
# a hand-back (or a hand-over's forward) whose delivery failed: Kafka may hold it (in an
# outage, one per command and send: ``streams.logs.REPEATED``)
SENT_AGAIN = (
    "%s could not %s request_id=%s (%s: %s): Kafka may hold it: sent again until it takes it, "
    "not told lost"
)
# one sent again for so long that a copy taken now would not be called any more
PAST_ITS_WAIT = (
    "%s: request_id=%s attempt=%s, handed back and not acknowledged, has waited past %ss for "
    "its target: no longer sent again; re-issued at its deadline"
)
# how long a hand-over waits for Kafka's answers to what it sends on (Kafka answers within
# milliseconds): it runs in the consumer's rebalance listener, and in an outage the producer's
# request timeout (20 minutes) held the rebalance, and the group's other members, as long;
# those not answered by then are read at the executor's loop's next turns
HAND_OVER_WAIT_SECONDS = 2.0
# nor the commit naming those Kafka did not take back: their deadline re-issues them
NOT_NAMED = (
    "%s could not commit the marks naming %s commands it could not hand back (%s): re-issued "
    "at their deadline"
)


class _Out(NamedTuple):
    """A command a hand-over sends on: a queued one back to its topic (``forward`` None), or a
    held forward to its organisation's partition."""

    job: Job[Any]
    forward: Held | None = None

    @property
    def key(self) -> bytes:
        return self.forward.organization.encode() if self.forward else self.job.record[0]

    @property
    def written(self) -> bool:
        """Whether Kafka may hold a copy already (an earlier delivery of it failed)."""
        return self.forward is not None and self.forward.written


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
        forwarding: Forwarding,
    ) -> None:
        self._name = name  # the executor's (generator | publisher), in its log lines
        self._run_id = run_id
        self._scheduler = scheduler  # the executor's: the commands it queued by target
        self._topics = topics
        self._called = called  # the executor's: the commands this run took lately
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._lost = lost
        self._commits = commits
        self._forwarding = forwarding  # the executor's: the forwards it holds
        self._held: list[Job[Any]] = []  # handed back, Kafka may hold them: to send again
        self._sending: list[tuple[Job[Any], asyncio.Future[Any]]] = []  # (sent again)
        # the revokes this run began: a batch the executor's loop fetched before one is not
        # taken (``Executor._handed_over``)
        self.revokes = 0
        # its group has given this run its partitions (none, too, where the group has more
        # members than the topic partitions) and what other runs left of them was read: until
        # then the commands in its topic wait for it, and ``/readyz`` says so
        # (``Executor.joining``); False again from a revoke until the rebalance it began
        # assigns (a rebalance, or the group lost and rejoined: ready after the first
        # assignment, it said so through every later one)
        self.assigned = False
        self.rebalances = 0  # the revokes its group made after a first assignment

    @property
    def held(self) -> int:
        """The commands handed back whose delivery failed (Kafka may hold them), to send
        again (:meth:`send_held`), or sent again and not answered yet."""
        return len(self._held) + len(self._sending)

    async def send_back(
        self,
        consumer: AIOKafkaConsumer | None,
        jobs: list[Job[Any]],
        marks: Callable[[list[Job[Any]]], Marks],
        forwards: Sequence[Held] = (),
    ) -> list[Job[Any]]:
        """Queued commands back to their topic, in order (and ``forwards``, held, to their
        organisation's partition), acknowledged, each once the last commit of its partition no
        longer names it. Each is taken out of what is unreported and the marks that follow
        (``marks([])``) are committed first; then only those the last commit does not name
        lost are sent (one sent while a mark still named it had a crash before the next commit
        leave the partition's next owner telling the ledger it was lost: re-issued while the
        copy sent was called too, one call made twice). One still named (that commit failed)
        is not sent: told lost by the partition's next reader, re-issued, called once. One
        Kafka surely did not take (the producer refused it, or failed it before it held it: a
        stop that gave up on Kafka) is this run's to report again, and the marks are committed
        again naming it (``marks(unsent)``): told lost by the next reader; if that commit fails
        too, a command the last commit does not name waits for its deadline (a WARNING says
        how many). One whose delivery failed may be in Kafka all the same (a leader that wrote
        it and stepped down before it acknowledged): named lost, it was re-issued while that
        copy was called too. No mark names it: it is sent again (:meth:`send_held`, a forward
        by the forwarding's next send) until Kafka acknowledges it, and whoever takes its
        copies calls the first (``streams.agents.called``); a run that ends first leaves it to
        its deadline. Kafka's answers are waited for :data:`HAND_OVER_WAIT_SECONDS` at most
        (a revoke's hand-over runs in the rebalance listener, which an outage held for the
        producer's request timeout, 20 minutes): one not answered by then is read at the loop's
        next turns, as one sent again is (:meth:`_unanswered`), named lost by no mark: counted
        as sent on. Returns those not sent on (named, or held to send again)."""
        outs = [_Out(job) for job in jobs] + [_Out(entry.job, entry) for entry in forwards]
        settled = [(out, self._unreported.reported(out.job.key, out.job.attempt)) for out in outs]
        failed = await self._commit(consumer, marks, [])
        if failed is not None:
            log.warning(NOT_UNMARKED, self._name, type(failed).__name__)
        topic = self._topics.generate if self._name == "generator" else self._topics.completions
        deliveries, unsent, again = [], [], []
        for out, taken in settled:
            if self._commits.named(taken):  # a crash would have it told lost: not sent
                unsent.append((out, taken))
                continue
            if out.forward is None:
                self._called.forget(out.job.key, out.job.attempt)  # whoever takes it calls it
            try:
                delivery = await topic.send(key=out.key, value=out.job.record[1])
                if delivery.done() and delivery.exception() is not None:  # never held
                    raise delivery.exception()  # (a stop's: the producer gave up on Kafka)
            except Exception as exc:  # this copy surely not written
                _not_sent_on(exc, self._name, out, again=out.written)
                if out.written:  # an earlier copy may be there: sent again
                    again.append(out)
                else:
                    unsent.append((out, taken))
                continue
            deliveries.append((out, delivery))
        if deliveries:  # (in the rebalance listener: an outage held the rebalance 20 minutes)
            try:
                await asyncio.wait([delivery for _, delivery in deliveries],
                                   timeout=HAND_OVER_WAIT_SECONDS)  # fmt: skip
            except CancelledError:  # (a stop cut short): each answer read at the run's end
                for out, delivery in deliveries:
                    self._unanswered(out, delivery)
                raise
        for out, delivery in deliveries:
            if not delivery.done():  # Kafka's answer read at the loop's next turns
                self._unanswered(out, delivery)
                continue
            try:
                await delivery
            except Exception as exc:  # perhaps written: sent again, named lost by no mark
                _not_sent_on(exc, self._name, out, again=True)
                again.append(out)
                continue
            if out.forward is not None:
                self._forwarding.acknowledged(out.forward)
        if forwards:
            self._forwarding.summarise()
        for out in again:
            if out.forward is None:
                self._held.append(out.job)
        self._forwarding.hold(out.forward._replace(written=True)
                              for out in again if out.forward is not None)  # fmt: skip
        for out, taken in unsent:  # this run's to report again: named by the next commit
            self._unreported.restore(out.job.key, taken)
        named = [out.job for out, _ in unsent]
        failed = await self._commit(consumer, marks, named) if unsent else None
        waiting = sum(not self._commits.named(taken) for _, taken in unsent)
        if failed is not None and waiting:
            log.warning(NOT_NAMED, self._name, waiting, type(failed).__name__)
        return named + [out.job for out in again]

    def _unanswered(self, out: _Out, delivery: asyncio.Future[Any]) -> None:
        """A hand-over's send Kafka has not answered within :data:`HAND_OVER_WAIT_SECONDS`:
        its answer is read as a send again's is, at the loop's next turns (a queued command's
        by :meth:`send_held`, a forward's by the forwarding's next send): acknowledged, done;
        failed, held and sent again, named lost by no mark (Kafka may hold it)."""
        if out.forward is None:
            self._sending.append((out.job, delivery))
            if self._forwarding.left:  # (the run ended first: no next turn reads it)
                self.leave()
        else:
            self._forwarding.sending(out.forward, delivery)

    async def send_held(self, *, wait: bool = False) -> None:
        """The commands handed back whose delivery failed sent again, the same record to the
        same partition, until Kafka acknowledges them (the executor's loop, and its stop once
        more, ``wait``-ing for Kafka's answers). The loop does not wait for them: each send's
        outcome is read at its next turn (a delivery Kafka gives up on after the producer's
        request timeout, 20 minutes, would have stalled every partition the executor reads,
        and had its consumer leave the group past its poll interval). No mark of this run
        names them (their partition was handed over, or the stop's last mark left them out): a
        run that ends first leaves them to their deadline, and a copy Kafka holds to whoever
        takes it. One that has waited past the most a command waits for its target is sent no
        more (its deadline, that wait and its call's, is near: it is re-issued then, and a
        copy written that late could be called beside the re-issue; sent again for good, one
        Kafka refuses for good, its authorization gone, was sent at every turn of the loop)."""
        self._settle()
        held, self._held = self._held, []
        topic = self._topics.generate if self._name == "generator" else self._topics.completions
        now, most = (self._scheduler.now(), self._scheduler.max_wait_s) if held else (0.0, 0.0)
        for job in held:
            if now - job.issued_s > most:
                log.info(PAST_ITS_WAIT, self._name, job.key, job.attempt, most)
                continue
            try:
                delivery = await topic.send(key=job.record[0], value=job.record[1])
            except Exception as exc:  # an earlier copy may be there: sent again
                _not_sent_on(exc, self._name, _Out(job), again=True)
                self._held.append(job)
                continue
            self._sending.append((job, delivery))
        if wait and self._sending:
            await asyncio.wait([delivery for _, delivery in self._sending])
        self._settle()

    def leave(self) -> None:
        """The run ends (its stop, or its loop's end): the hand-backs Kafka has not answered
        are no longer this run's to send again; each answer is read when it comes
        (``forwarding.read_late``), as is any of a hand-over ending after the run."""
        sending, self._sending = self._sending, []
        for job, delivery in sending:
            read_late(delivery, self._name, "hand back", job.key)

    def _settle(self) -> None:
        """The sends again that Kafka answered: acknowledged, done; failed, held again."""
        sending, self._sending = self._sending, []
        for job, delivery in sending:
            if not delivery.done():
                self._sending.append((job, delivery))
            elif delivery.cancelled() or delivery.exception() is not None:
                failed = CancelledError() if delivery.cancelled() else delivery.exception()
                _not_sent_on(failed or CancelledError(), self._name, _Out(job), again=True)
                self._held.append(job)

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
        (:meth:`send_back`). Calls already running finish here and report. A forwarding's send
        in progress ends first (``Forwarding.lock``), and none starts until this ends: one the
        executor's loop began before the revoke, waiting on its commit, held a forward this did
        not take, named lost by its mark, and forwarded it once that commit had failed (its
        partition forgotten here): told lost by the next owner, and called where it went too.
        So does a batch the loop is committing (held by the same lock until its commands are
        queued: taken back here), and the loop takes none it fetched before the revoke
        (:attr:`revokes`, ``Executor._handed_over``): committed after this mark, its mark
        listed the calls running here as the run's, not reported (told lost by the next owner,
        and re-issued while they ran), and its commands queued after the queues were taken
        back were called here too."""
        self.revokes += 1
        if self.assigned:
            self.rebalances += 1
        self.assigned = False
        async with self._forwarding.lock:
            await self._hand_back(consumer, revoked)

    async def _hand_back(
        self, consumer: AIOKafkaConsumer | None, revoked: set[TopicPartition]
    ) -> None:
        jobs = self._scheduler.take_back(set(revoked))
        forwards = self._forwarding.take(revoked)  # sent after the mark too, never listed
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

        unsent = await self.send_back(consumer, jobs, handed, forwards)
        if jobs:
            log.info("%s handed back %s queued commands of revoked partitions",
                     self._name, len(set(map(id, jobs)) - set(map(id, unsent))))  # fmt: skip
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
        try:
            await self._recover(consumer, assigned)
        finally:  # (its marks not read: the deadlines re-issue what was lost)
            self.assigned = True

    async def _recover(
        self, consumer: AIOKafkaConsumer | None, assigned: set[TopicPartition]
    ) -> None:
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


def _not_sent_on(exc: BaseException, name: str, out: _Out, *, again: bool) -> None:
    """A hand-over's send Kafka did not acknowledge: told lost by the partition's next reader
    (the producer refused it: surely not written), or (``again``: Kafka may hold it) sent
    again, named lost by no mark. A WARNING (a stop's ``GivenUp`` is counted in its own
    WARNING: DEBUG; anything but Kafka's refusal an ERROR, ``log_unsent``)."""
    what = "forward" if out.forward is not None else "hand back"
    if not again:
        log_unsent(exc, NOT_HANDED_BACK if out.forward is None else NOT_FORWARDED, name,
                   out.job.key)  # fmt: skip
    elif isinstance(exc, GivenUp):
        log.debug("%s could not %s request_id=%s (the stop gave up on Kafka): sent again",
                  name, what, out.job.key)  # fmt: skip
    else:
        log.warning(SENT_AGAIN, name, what, out.job.key, type(exc).__name__, exc)

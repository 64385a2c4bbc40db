"""The executors: slow work off the person's partition, paced per upstream target.

generator: [generate] → OpenAI → GenerationAttempt{Succeeded,Failed} → [requests]
publisher: [completions] → Talkable → PublicationAttempt{Succeeded,Failed} → [requests]

Each reads its topic with a plain aiokafka consumer in its own group (static membership, so a
restarted worker takes its partitions straight back) and **commits what it took before the work
starts**: a command is called at most once per delivery, even across a crash, and a copy of one
it took lately (the topic holding a command twice: ``streams.agents.called``) is not called.
Each commit also notes (its mark, ``streams.agents.commits`` and ``streams.agents.marks``)
which run of this instance took the records and which of them are not reported yet (the oldest,
and the ranges they make, the oldest 32, however many offsets those hold). A record that does
not decode is committed only once Kafka acknowledged its dead letter (``Executor._decoded``).
A batch whose commit fails is read again from its first offset, none of it called, and a
record of it lettered is not lettered again (``Executor._read_again``). A command then waits
in its target's queue (``streams.upstream.scheduler``): an OpenAI key, a Talkable site, and its
call's result goes to [requests] (``streams.agents.results``). The topics are keyed by target,
so all of a target's calls meet in one scheduler, whichever worker runs it; when a rebalance moves a
partition away, the commands of it that are still queued are handed back to the topic for the
new owner, each once a commit no longer names it (calls already running finish here, and the
hand-over's mark lists them: ``streams.agents.handover``); so are the forwards it holds of
them sent on, to their organisation's partition. One Kafka may hold though it did not
acknowledge it is named lost by no mark, and sent again until it does. A generator that knows a
command's OpenAI organisation forwards it to the organisation's own partition when another
executor owns that, so one executor paces each organisation: ``streams.agents.forwarding``.

What another run took and did not report (this instance's previous run, a worker that died, or
one that gave a partition up and left the group before its calls ended) is read again from
the marks and told to the ledger as lost, ``DeadlineExpired(lost=True)``, by whoever owns the
partition then: ``streams.agents.lost``.

The executors run a command and report what happened; every retry, park and dead letter is
the ledger's decision. Whatever goes wrong becomes a reported failure with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalStateError,
    TopicAuthorizationFailedError,
)

from streams.agents.called import CALLED_REMEMBERED, LETTERED_REMEMBERED, Called, Lettered
from streams.agents.commits import TOO_LONG, Commits
from streams.agents.forwarding import STOP_WAIT_SECONDS, Forwarding
from streams.agents.handover import HandOver, OnRebalance
from streams.agents.lost import LostWork
from streams.agents.marks import Unreported
from streams.agents.results import Results
from streams.agents.work import Work
from streams.kafka_options import consumer_lag, group_consumer, stop_consumer
from streams.observability import WorkerMetrics
from streams.runtime import LETTER_AGAIN_SECONDS, Clock, DeadLetters, Topics
from streams.upstream.scheduler import Outcome, Scheduler

log = logging.getLogger(__name__)

FETCH_RECORDS = 500
# how long an executor waits before it takes again a batch whose commit failed (a refusal the
# coordinator answers at once would otherwise have it fetched and committed again without pause)
COMMIT_AGAIN_SECONDS = 1.0
# a commit that failed: what it was for is read again (in a lasting failure, one line a batch:
# ``streams.logs.REPEATED``)
NOT_COMMITTED = (
    "%s could not commit (%s): what it took since its last commit is read again, none of it called"
)
# a commit refused for as long as an operator does not act (``Executor.refused``): the same
# batch read again a second apart, its partitions stalled, and /readyz saying so
REFUSED = (
    "%s could not commit (%s: %s): what it took since its last commit is read again, none of "
    "it called, until an operator acts; /readyz answers 503 meanwhile"
)
# the refusals no shorter mark fixes, and what an operator must do
LASTING: dict[type[Exception], str] = {
    GroupAuthorizationFailedError: "its Kafka principal may not commit to the group",
    TopicAuthorizationFailedError: "its Kafka principal may not read the topic",
    **{
        refusal: "the broker's offset.metadata.max.bytes is below the least mark, its "
        "instance, run and oldest offset"
        for refusal in TOO_LONG
    },
}


@dataclass(frozen=True)
class ExecutorConfig:
    name: str  # generator | publisher
    topic: str  # full topic name
    group: str  # consumer group
    instance: str  # static member id within the group
    consumer_options: dict[str, Any]
    # how long after a hand-over the calls it listed are watched: their deadline (queue wait
    # and call), past which the ledger re-issues them anyway (None: until their run leaves)
    watch_ms: int | None = None


class Executor:
    """Commands from one topic into one scheduler; results back to [requests]."""

    def __init__(
        self,
        config: ExecutorConfig,
        scheduler: Scheduler,
        work: Work[Any],
        *,
        topics: Topics,
        dead_letters: DeadLetters,
        clock: Clock,
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self._work = work
        self._dead_letters = dead_letters
        self._clock = clock
        self.consumer: AIOKafkaConsumer | None = None
        self.on_outcome: Callable[[Outcome[Any]], None] | None = None  # metrics hook
        self.run_id = uuid.uuid4().hex[:12]  # this run of the instance, in its commits' marks
        self._unreported = Unreported()
        self._called = Called(CALLED_REMEMBERED)  # the commands this run took lately
        self._lettered = Lettered(LETTERED_REMEMBERED)  # the poison records it lettered lately
        self.lost = LostWork(  # what other runs left unreported, or went on calling elsewhere
            name=config.name,
            instance=config.instance,
            group=config.group,
            run_id=self.run_id,
            watch_ms=config.watch_ms,
            unreported=self._unreported,
            work=work,
            topics=topics,
            clock=clock,
        )
        self.commits = Commits(  # how far it took each partition, and what it did not report
            instance=config.instance,
            run_id=self.run_id,
            unreported=self._unreported,
            lost=self.lost,
        )
        self.forwarding = Forwarding(  # commands to the executor pacing their organisation
            name=config.name,
            topics=topics,
            scheduler=scheduler,
            work=work,
            called=self._called,
            unreported=self._unreported,
            commits=self.commits,
            consumer=lambda: self.consumer,
        )
        self.handover = HandOver(  # its side of its group's rebalances
            name=config.name,
            run_id=self.run_id,
            scheduler=scheduler,
            topics=topics,
            called=self._called,
            unreported=self._unreported,
            lost=self.lost,
            commits=self.commits,
            forwarding=self.forwarding,
        )
        scheduler.on_organization = self.forwarding.named  # its queued commands go at once
        # held from a batch's commit until its jobs are queued (against a stop; against a
        # revoke's hand-over, ``Forwarding.lock``)
        self._taking = asyncio.Lock()
        self._stopping = False
        self.refused: str | None = None  # why Kafka refuses its commits for good, if it does
        self._results = Results(name=config.name, work=work, topics=topics, clock=clock)

    @property
    def stopping(self) -> bool:
        """Told to stop: it takes nothing more (``/readyz`` says so, not its closed consumer's
        missing connections)."""
        return self._stopping

    @property
    def joining(self) -> str | None:
        """Why it takes no command now, for ``/readyz``: its group has not given it its
        partitions since it started (a worker, or its executors' child, said ready while the
        commands waited in the topic for the group's join, seconds on a loaded host, past a
        request's ``MAX_WAIT_SECONDS``), or since a revoke began a rebalance (another member
        joined or left, or this one missed its session and rejoins); None once it has."""
        if self.handover.assigned:
            return None
        if self.handover.rebalances:
            return f"the {self.config.name} rejoining its consumer group (a rebalance)"
        return f"the {self.config.name} joining its consumer group"

    @property
    def taken(self) -> dict[TopicPartition, int]:
        """The next offset of each partition this run holds (what its commits carry)."""
        return self.commits.taken

    def lag(self) -> dict[tuple[str, int], int]:
        """Records of each assigned partition not taken yet."""
        return consumer_lag(self.consumer, self.taken)

    async def run(self) -> None:
        consumer = self.consumer = group_consumer(
            self.config.consumer_options,
            self.config.group,
            self.config.instance,
            max_poll_records=FETCH_RECORDS,
        )
        consumer.subscribe([self.config.topic], listener=OnRebalance(self.handover, consumer))
        dispatcher: asyncio.Task[None] | None = None
        try:
            await consumer.start()  # (stopped too when a stop cancels it here)
            dispatcher = asyncio.create_task(self.scheduler.run())
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)
                async with self._taking:
                    if self._stopping:  # not committed: the next run takes it
                        return
                    await self._take_batch(consumer, batch)
                    await self.forwarding.send()  # (those queued when an answer named it)
                    await self.handover.send_held()  # (handed back, Kafka may hold them)
                    await self.lost.check_elsewhere(consumer, self.taken)
        finally:
            self._leave()
            if dispatcher is not None:
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await stop_consumer(consumer)  # (reads a commit's end the stop cut short)

    async def _take_batch(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]
    ) -> None:
        revokes = self.handover.revokes  # (fetched before any revoke since)
        ended = await self.lost.past_lost(batch)
        commands, again = await self._decoded(batch)
        offsets = {**ended, **{tp: again.get(tp, rs[-1].offset + 1) for tp, rs in batch.items()}}
        marks = self.commits.marks(offsets, {tp: rs[0].offset for tp, rs in batch.items()})
        if not marks:
            return
        if self.handover.revokes != revokes or self.forwarding.lock.locked():
            self._handed_over(batch)
            return
        async with self.forwarding.lock:  # (a revoke's hand-over waits for the batch queued)
            try:  # taken, before any work: at most one call per delivery
                await self.commits.commit(self.consumer, marks)
            except Exception as exc:  # not taken: read again, none of it called
                self._not_committed(exc)
                first = {tp: rs[0].offset for tp, rs in batch.items()}
                self._read_again(consumer, {**first, **ended})
                failed = True
            else:
                failed = False
                self.refused = None
                self.taken.update(offsets)
                for tp, offset in again.items():  # its letter not written: read again from it
                    with contextlib.suppress(IllegalStateError):  # no longer assigned
                        consumer.seek(tp, offset)
                for tp, taken in commands.items():
                    for record, command in taken:
                        await self._take(tp, record, command)
        if failed:
            await asyncio.sleep(COMMIT_AGAIN_SECONDS)  # (not committed again without pause)
            return
        await self.forwarding.send()
        if again:  # (not sent again without pause)
            await asyncio.sleep(LETTER_AGAIN_SECONDS)

    def _handed_over(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """A batch whose partitions a revoke's hand-over gives up since it was fetched (it
        runs, or ran while the batch was decoded, or the lost ranges read again were told):
        not committed, none of it queued. The hand-over committed each partition with its
        mark (what it could not hand back as lost, the calls still running here as running
        elsewhere); the loop's commit after it had the batch's offsets and a mark listing those
        calls as this run's not reported: the partition's next owner told the ledger they were
        lost and had them re-issued while they ran here, and the batch's commands, queued
        after the hand-over took the queues back, were called here while that mark named them
        lost. Not read again from here either: the group's next assignment reads each
        partition from its last commit (a seek now could be into an assignment given since,
        and read again what another owner took)."""
        if batch:
            log.info("%s: a batch of %s records fetched before a revoke is left to the "
                     "partitions' next owner", self.config.name,
                     sum(map(len, batch.values())))  # fmt: skip

    def _not_committed(self, exc: Exception) -> None:
        """A commit that failed: a WARNING for what passes (a rebalance, the coordinator), an
        ERROR and :attr:`refused` (``/readyz``) for a refusal no retry and no shorter mark
        fixes (an authorization, a broker keeping less metadata than a mark at its least):
        its partitions are stalled until an operator acts, which a WARNING a batch hid."""
        why = next((why for kind, why in LASTING.items() if isinstance(exc, kind)), None)
        if why is None:
            log.warning(NOT_COMMITTED, self.config.name, type(exc).__name__)
            return
        self.refused = f"{self.config.name} cannot commit: {type(exc).__name__} ({why})"
        log.error(REFUSED, self.config.name, type(exc).__name__, why)

    def _read_again(self, consumer: AIOKafkaConsumer, first: dict[TopicPartition, int]) -> None:
        """A batch whose commit failed is read again from ``first`` (each partition's first
        offset not committed), none of it called: its consumer's position is past it. A
        commit fails for a rebalance (its partitions' new owner, this run too, reads them from
        the last commit anyway), and for reasons of its own while the group stays as it is (a
        mark larger than the broker's ``offset.metadata.max.bytes``, an authorization refused,
        an error of the coordinator): the batch was skipped then, its commands called by no one
        until the ledger re-issued them at their deadline. Its poison records, lettered, are
        not lettered again (:attr:`_lettered`); a lost range told to the ledger is not told
        again (read again from its end)."""
        for tp, offset in first.items():
            with contextlib.suppress(IllegalStateError):  # no longer assigned: the owner's
                consumer.seek(tp, offset)

    async def _decoded(
        self, batch: dict[TopicPartition, list[Any]]
    ) -> tuple[dict[TopicPartition, list[tuple[Any, Any]]], dict[TopicPartition, int]]:
        """The commands of ``batch``, with their records, by partition, before it is committed:
        a record that does not decode is dead-lettered, its letter acknowledged, before its
        offset is. If Kafka did not take a letter (no leader for longer than the producer's
        request timeout), its partition is taken up to that record only, and read again from
        it (returned: the offset of each such partition), so that it is lettered again: a
        commit past it left it neither called nor in the dead-letter topic, for no operator to
        see or redrive. (The letters of later records of the partition were not sent: each
        record is written once Kafka took the one before.)"""
        commands: dict[TopicPartition, list[tuple[Any, Any]]] = {}
        again: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            taken = commands[tp] = []
            for record in records:
                if (tp, record.offset) in self._lettered:  # read again: lettered already
                    continue
                try:
                    command = await self._dead_letters.decoded(
                        self._work.decode,
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                    )
                except Exception:  # not written (said by ``DeadLetters``): read again
                    again[tp] = record.offset
                    break
                if command is None:  # lettered (acknowledged): not again if read again
                    self._lettered.add(tp, record.offset)
                else:
                    taken.append((record, command))
        return commands, again

    async def stop(self, drain_s: float) -> None:
        """A graceful stop (the app's ``on_stop``, its producer still up) settles everything
        this run took: nothing more is taken, the calls running get ``drain_s`` to end and
        report, those cut short are told to the ledger as lost, and the commands still queued
        go back to the topic as they are (the next run takes them without spending an
        attempt), each once a commit whose mark no longer names it has passed
        (``HandOver.send_back``): the last mark leaves nothing to tell but what Kafka surely did
        not take (told lost by the next run). One whose delivery failed (Kafka may hold it) is
        sent once more, and if Kafka still does not acknowledge it, named by no mark: left to
        whoever takes the copy Kafka may hold, or else to its deadline (a WARNING counts them)."""
        async with self._taking:
            self._stopping = True
            if self.consumer is None or not self.taken:
                return
            try:
                await self._stop(drain_s)
            finally:  # (also cut short: the executors' process bounds its stop)
                self._leave()

    async def _stop(self, drain_s: float) -> None:
        """:meth:`stop`'s work, under ``_taking``."""
        await self.forwarding.send()
        cut = await self.scheduler.drain(drain_s)
        # those Kafka may hold, once more (never called here), and Kafka's answers read
        await self.forwarding.send(wait=STOP_WAIT_SECONDS)
        self.forwarding.summarise(final=True)
        async with self.forwarding.lock:  # (a revoke's hand-over waits: ``_hand_back``)
            queued, told, unsent = await self._hand_back(cut)
        sent = len(queued) - len(unsent)
        log.info("%s stopping: %s queued commands handed back for the next run, %s calls "
                 "cut short after %ss and told lost", self.config.name, sent, len(told),
                 drain_s)  # fmt: skip
        if self.handover.held:  # named by no mark: a copy Kafka holds is called once
            log.warning("%s stopping: %s commands handed back that Kafka did not "
                        "acknowledge (it may hold them) are left to their deadline",
                        self.config.name, self.handover.held)  # fmt: skip
        unanswered = self.forwarding.unanswered  # named by no mark: Kafka's to take
        if self.forwarding.held > unanswered:  # unreported: the next owner tells them lost
            log.warning("%s stopping: %s forwards Kafka did not acknowledge are left to "
                        "the next run to tell lost", self.config.name,
                        self.forwarding.held - unanswered)  # fmt: skip
        if unanswered:
            log.warning("%s stopping: %s forwards Kafka has not answered after %ss are "
                        "called where they went if it takes them, else re-issued at their "
                        "deadline", self.config.name, unanswered,
                        STOP_WAIT_SECONDS)  # fmt: skip

    def _leave(self) -> None:
        """The run ends (its stop, or its loop's end, a crash's too): the forwards and the
        hand-backs Kafka has not answered are read when it answers, each failure said
        (``forwarding.read_late``); unread, one that failed later (the producer's stop
        waiting for Kafka) was only asyncio's ERROR "Future exception was never retrieved"."""
        self.forwarding.leave()
        self.handover.leave()

    async def _hand_back(self, cut: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        """The stop's hand-back (:meth:`stop`): the calls ``cut`` short told lost, the commands
        still queued sent back to their topic, and those Kafka may hold sent once more; returns
        the commands queued, the calls told lost, and the commands not handed back. Run under
        ``Forwarding.lock``, as a revoke's hand-over (``HandOver.hand_back``) is: one that ran
        beside it (a rebalance while the stop told the ledger of its cut calls, or waited for
        a commit or for Kafka) took back nothing (the stop had the queued commands), committed
        a mark listing them as still running in this run, and forgot their partition; the
        stop then handed them back, named by no commit of its own: once this run left the
        group the partition's next owner told the ledger they were lost, re-issued while the
        copies handed back were called too. (And one the producer refused was named by no
        mark: left to its deadline.) The hand-over now runs after it, its mark listing what
        the stop left unreported."""
        queued = self.scheduler.take_back(set(self.taken))
        try:
            told = await self.lost.tell_lost([job.record[1] for job in cut])
        except Exception as exc:  # still unreported: the next run tells them
            log.warning("%s could not tell the ledger of the calls it cut short (%s)",
                        self.config.name, type(exc).__name__)  # fmt: skip
            told = []
        for command in told:
            self._unreported.reported(command.request_id, command.attempt)
        # committed without the queued commands before they are sent: the last mark named
        # them, and a crash between Kafka taking them back and the stop's commit had the
        # next run tell the ledger they were lost, re-issued while the copies were called
        # (those not handed back are unreported again: the changed marks name them)
        unsent = await self.handover.send_back(
            self.consumer, queued, lambda unsent: self.commits.marks({}, {})
        )
        # those Kafka may hold, once more (never told lost), answered before the stop goes on
        await self.handover.send_held(wait=True)
        return queued, told, unsent

    async def _take(self, tp: TopicPartition, record: Any, command: Any) -> None:
        first = self._called.took(command.request_id, command.attempt, (tp, record.offset))
        if first is not None:  # a copy of a command taken before: its call is made, or queued
            log.info("%s: request_id=%s attempt=%s at offset %s of partition %s is a copy of "
                     "the command it took at offset %s of partition %s: not called again",
                     self.config.name, command.request_id, command.attempt, record.offset,
                     tp.partition, first[1], first[0].partition)  # fmt: skip
            return  # (offset -1: it was forwarded there)
        self._unreported.took(tp, record.offset, command.request_id, command.attempt)
        waited = max(self._clock.now_ms() - command.issued_at_ms, 0) / 1000

        async def report(outcome: Outcome[Any]) -> None:
            await self._report(command, outcome)

        job = self._work.job(
            command, issued_s=self.scheduler.now() - waited, origin=tp, report=report
        )
        job.record = (record.key, record.value)
        if self.forwarding.to(job, command):  # another executor paces its organisation
            return
        self.scheduler.submit(self._work.target(command), job, self.forwarding.named_by(job))

    async def _report(self, command: Any, outcome: Outcome[Any]) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if await self._results.send(command, outcome):  # (a mark may name it lost: stale)
            self._unreported.reported(command.request_id, command.attempt, resulted=True)


def register(
    app: Any,
    *,
    executors: list[Executor],
    metrics: WorkerMetrics,
    drain_s: float,
) -> None:
    """Run each executor as a worker task (not a faust agent: it commits by itself), stopped
    before the app (see ``Executor.stop``)."""
    for executor in executors:
        app.task(_runner(executor))
        app.before_stop.append(functools.partial(executor.stop, drain_s))
        metrics.watch(executor)


def _runner(executor: Executor) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await executor.run()

    run.__name__ = executor.config.name
    return run

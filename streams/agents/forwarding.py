"""Commands an executor forwards to the executor that paces their OpenAI organisation.

OpenAI limits an organisation, not a key, and a scheduler paces every key of an organisation
it knows with one pacer (``streams.upstream.scheduler``). But [generate] is keyed by the key
(``streams.agents.outputs.target_key``): with several workers, two keys of one organisation
may sit in partitions two executors own, and each would pace the organisation at its whole
limit. So an executor that knows a command's organisation (an answer named its key's) and does
not own the organisation's own partition of [generate] (the one the producers' partitioner,
murmur2, gives the organisation's id as a record key) forwards the command there
(:func:`destination`): the same record, keyed by the organisation. Whoever owns that partition
calls it, paced with the organisation's other keys from its first call (the record's key names
the organisation: :meth:`Forwarding.named_by`). The commands of a key it queued before an
answer named the organisation go the same way, taken out of their queue as the answer comes
(:meth:`Forwarding.named`): a campaign's blast is taken before any answer.

A command is forwarded once at most: only from its key's partition (a record keyed as the
ledger keys it), never from its organisation's (two executors that knew a key in two
organisations would otherwise send it to and fro). With one worker owning every partition,
nothing is forwarded.

A forward is no longer this run's to report from the commit made before it is sent
(:meth:`Forwarding.send`): the marks are committed without it first, and it is sent only once
the last commit of its partition no longer names it. Counted only once Kafka acknowledged it,
it stayed in the partition's last mark until the executor's loop committed again (up to half
a second later): a worker that died meanwhile had the partition's next owner tell the ledger
it was lost, and the ledger, its attempt current, re-issued it while the executor pacing the
organisation called it. A crash before that commit leaves it named (never forwarded: told lost,
re-issued, called once); one after it leaves it to the ledger's deadline (Kafka took the
forward: called there, and reported; it did not: re-issued at its deadline); a commit that
fails leaves it held, this run's to report, sent after the next. This run calls it only if it
takes it where it went (``streams.agents.called``: a copy of it in its key's partition is not
called).

A command is called once, wherever its forward's fate is unknown. Only a forward the producer
refused outright (its ``send`` raised: it never held the record, so Kafka never wrote it), and
no earlier send of which failed once the producer held it, is called here, as before the
organisation was known, and is this run's to report again (refused after such a failure, it
was called here while the organisation's executor called the copy Kafka held: it is held to
send again instead). One whose
delivery failed may be in the organisation's partition all the same (a leader that wrote it and
stepped down before it acknowledged, then no leader until the producer gave up: the case
``streams.agents.called`` describes for the ledger's commands): calling it here too had the
executor there call it as well, two OpenAI calls billed for one request. It is held and
forwarded again instead (the next :meth:`Forwarding.send`, the executor's loop's or its
stop's), the same record to the same partition, until Kafka acknowledges it; the executor there
calls the first copy it takes and not the next (``streams.agents.called``), and whoever owns
the partition takes it, also if that executor is gone. Until then it is this run's to report
again (from the next commit; it is taken out once more before each send): a run that ends first
(a crash, a stop while Kafka still fails) leaves it in its marks, told lost by the partition's
next owner, and re-issued (the copy Kafka may hold is then called too: the one case left with
two calls). One sent again and acknowledged before a crash is named lost by no mark.

The executor's loop does not wait for Kafka's answer to a forward: :meth:`Forwarding.send`
reads it at a later turn. Kafka gives up on a delivery only after the producer's request
timeout (20 minutes), and the loop, waiting, took nothing of any partition, reported nothing,
and held its stop as long. Until its answer is read a forward is named by no mark (as from the
commit before its send) and not sent again; from its send on it is called where it went (this
run too, given that partition before it read the answer: it was a copy of a command taken
before, not called). A stop waits :data:`STOP_WAIT_SECONDS` at most for the answers: one
still unanswered is left to Kafka (called where it went), or else to its deadline, and a
WARNING counts it.

The forwards held for a partition a rebalance revokes are sent by its hand-over
(``streams.agents.handover``: :meth:`Forwarding.take`), after the hand-over's mark, which lists
them neither lost nor running here: listed as running in this run and sent by the loop after,
they were told lost by the partition's next owner once this run left the group, while the
organisation's executor still had them to call. One whose delivery fails there is held again
(:meth:`Forwarding.hold`), named by no mark: forwarded again until Kafka acknowledges it; one
Kafka did not answer while the hand-over waited is read at the next send
(:meth:`Forwarding.sending`). The
hand-over waits for a send in progress, and a send while it runs sends nothing, its forwards
left to the next (:attr:`Forwarding.lock`): one the loop began before the revoke had the
forwards it took, not held then, and, its commit failing as the group rebalanced, sent one its
partition's last commit still named lost, the partition's marks forgotten by the hand-over
meanwhile: told lost by the next owner, and called where it went too.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from asyncio import CancelledError
from collections.abc import Callable, Collection, Iterable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.agents.called import Called
from streams.agents.commits import Commits
from streams.agents.marks import Unreported
from streams.agents.outputs import target_key
from streams.agents.work import Work
from streams.kafka_options import GivenUp, KeyPartitioner
from streams.runtime import Topics
from streams.upstream.scheduler import Job, Scheduler

log = logging.getLogger("streams.agents.executors")  # the executors' lines

_PARTITIONER = KeyPartitioner()  # the producers' (each key's murmur2 remembered)
SUMMARY_SECONDS = 60.0  # the forwards are said in one INFO line at most this often
# how long a stop waits for Kafka's answers to the forwards it sent (Kafka answers within
# milliseconds; in an outage the stop goes on: a worker's gives Kafka ``KAFKA_STOP_SECONDS``
# in all, and its hand-back needs them too)
STOP_WAIT_SECONDS = 2.0
# a forward or a hand-back Kafka had not answered when the executor's run ended, failed since
# (``read_late``)
FAILED_LATE = (
    "%s could not %s request_id=%s (%s: %s), answered after its run ended: Kafka may hold it; "
    "if it does not, it is re-issued at its deadline"
)
# the commit before a send failed: the forwards wait (in a lasting failure, one line a send:
# ``streams.logs.REPEATED``)
NOT_UNMARKED = (
    "%s could not commit its marks before forwarding (%s): the forwards are held, sent once a "
    "commit no longer names them"
)


class Held(NamedTuple):
    """A forward held to send: the command's job (with the record it was read as), its
    organisation and the partition it goes to, and whether Kafka may hold a copy of it already
    (``written``: a delivery of it failed; a later refusal does not make it surely unwritten)."""

    job: Job[Any]
    organization: str
    to: TopicPartition
    written: bool = False


Settled = list[tuple[TopicPartition, int, int]]  # what ``Unreported.reported`` settled of one


def organization_partition(organization: str, partitions: Collection[int]) -> int:
    """The partition a producer writes a record keyed by the organisation's id to."""
    every = sorted(partitions)
    return int(_PARTITIONER(organization.encode(), every, every))


def destination(
    *,
    keyed_by_its_key: bool,
    organization: str | None,
    partition: int,
    partitions: Collection[int],
    owned: Collection[int],
) -> int | None:
    """Where a command read at ``partition`` is forwarded (None: called here): to its
    ``organization``'s partition, if one is known, the record is keyed as the ledger keys the
    command (``keyed_by_its_key``: not forwarded before), and neither this partition nor
    another this executor ``owned`` is the organisation's."""
    if organization is None or not keyed_by_its_key or not partitions:
        return None
    to = organization_partition(organization, partitions)
    return None if to == partition or to in owned else to


class Forwarding:
    """One executor run's forwards, held until sent and acknowledged (:meth:`send`): those of
    the commands it takes (:meth:`to`), and those of commands it queued before it knew their
    organisation (:meth:`named`)."""

    def __init__(
        self,
        *,
        name: str,
        topics: Topics,
        scheduler: Scheduler,
        work: Work[Any],
        called: Called,
        unreported: Unreported,
        commits: Commits,
        consumer: Callable[[], AIOKafkaConsumer | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name  # the executor's, in its log lines
        self._topics = topics  # [generate] is where it forwards (only OpenAI keys have one)
        self._scheduler = scheduler
        self._work = work
        self._called = called  # the executor's: the commands this run took lately
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._commits = commits  # the executor's: its partitions' marks, committed before a send
        self._consumer = consumer  # the executor's (None before its run)
        self._held: list[Held] = []
        # handed to the producer, Kafka's answer not read yet: with what they settled of the
        # unreported (restored if Kafka does not take them)
        self._sending: list[tuple[Held, Settled, asyncio.Future[Any]]] = []
        # held by each send, by the executor's loop from a batch's commit until it is queued
        # (``Executor._take_batch``), by a revoke's hand-over (``HandOver.hand_back``), and by
        # a stop's hand-back (``Executor._hand_back``): a hand-over while a send waited on a
        # commit, or on the producer, named lost what the send then forwarded, or took what
        # the send still had to report
        self.lock = asyncio.Lock()
        self._clock = clock  # (monotonic seconds) when the forwards are summarised
        self._sent: collections.Counter[tuple[str, int]] = collections.Counter()  # untold
        self._said_at: float | None = None  # the last summary's time
        self.left = False  # the run has ended (:meth:`leave`): no later turn reads an answer

    def to(self, job: Job[Any], command: Any) -> bool:
        """Whether the command just taken (its ``job``, with the record it was read as) is
        forwarded: if so, it is held to send (:meth:`send`), not to call here."""
        job.forwardable = job.record[0] == target_key(command)  # (read from its key's partition)
        where = self._where(job.family)
        return where is not None and where(job)

    @staticmethod
    def named_by(job: Job[Any]) -> str | None:
        """The organisation a command's record names: one forwarded here is keyed by its key's
        organisation (None: keyed as the ledger keys it, by its key, or a publication)."""
        key = job.record[0] if job.family and not job.forwardable else None
        return key.decode(errors="replace") if key else None

    def named(self, family: str) -> None:
        """An answer named the organisation of ``family`` (an OpenAI key): the key's queued
        commands to forward are taken out of their queues at once, before any more of them
        is called, and held (sent by the executor's loop, or its stop)."""
        where = self._where(family)
        if where is not None:
            self._scheduler.take_out(lambda job: job.family == family and where(job))

    def _where(self, family: str) -> Callable[[Job[Any]], bool] | None:
        """For the jobs of ``family`` (an OpenAI key), whether each is forwarded (then held);
        None if none is (its organisation not known, or the executor not running)."""
        organization = self._scheduler.organization(family) if family else None
        consumer = self._consumer()
        if organization is None or consumer is None:
            return None
        known: dict[str, tuple[Collection[int], set[int]]] = {}

        def forwarded(job: Job[Any]) -> bool:
            topic = job.origin.topic
            if topic not in known:  # the topic's partitions, and those the executor owns
                owned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
                known[topic] = (consumer.partitions_for_topic(topic) or (), owned)
            partitions, owned = known[topic]
            to = destination(
                keyed_by_its_key=job.forwardable,
                organization=organization,
                partition=job.origin.partition,
                partitions=partitions,
                owned=owned,
            )
            if to is not None:
                self._held.append(Held(job, organization, TopicPartition(topic, to)))
            return to is not None

        return forwarded

    def summarise(self, *, final: bool = False) -> None:
        """The forwards acknowledged since the last summary, counted by organisation and
        partition, in one INFO line: the first at once, then at most one every
        :data:`SUMMARY_SECONDS` (each forward is a DEBUG line); ``final``: whatever is left
        untold (the executor's stop). With several workers, an organisation's keys on another
        worker's partitions are forwarded all day: a line per send (most carry a command or
        two) was a line per command."""
        if not self._sent:
            return
        now = self._clock()
        if not final and self._said_at is not None and now - self._said_at < SUMMARY_SECONDS:
            return
        sent, self._sent = self._sent, collections.Counter()
        since = "" if self._said_at is None else f" in {now - self._said_at:.0f} s"
        self._said_at = now
        log.info(
            "%s forwarded %s commands%s to the executors pacing their organisation with its "
            "other keys: %s",
            self._name,
            sum(sent.values()),
            since,
            ", ".join(
                f"organization={organization}'s partition {partition}: {count}"
                for (organization, partition), count in sorted(sent.items())
            ),
        )

    @property
    def held(self) -> int:
        """The forwards held, not sent yet or to send again, and those sent that Kafka has not
        answered yet."""
        return len(self._held) + len(self._sending)

    @property
    def unanswered(self) -> int:
        """The forwards sent that Kafka has not answered yet (of :attr:`held`)."""
        return len(self._sending)

    def take(self, partitions: Collection[TopicPartition]) -> list[Held]:
        """The held forwards of commands taken from ``partitions`` (a revoke's), no longer
        held: the hand-over sends them (``streams.agents.handover``), after its mark, which
        then lists them neither as lost nor as running in this run."""
        taken = [entry for entry in self._held if entry.job.origin in partitions]
        self._held = [entry for entry in self._held if entry.job.origin not in partitions]
        return taken

    def hold(self, entries: Iterable[Held]) -> None:
        """Forwards to send again (the next :meth:`send`)."""
        self._held.extend(entries)

    def sending(self, entry: Held, delivery: asyncio.Future[Any]) -> None:
        """A forward a hand-over sent whose answer it did not wait for (``HandOver.send_back``):
        called where it went from now on, and read at the next :meth:`send` as one of its own
        (its partition given up, it settled nothing of this run's to report again)."""
        self._called.forwarded(entry.job.key, entry.job.attempt, entry.to)
        self._sending.append((entry, [], delivery))
        if self.left:  # (a hand-over that ended after the run: no next send reads it)
            self.leave()

    def leave(self) -> None:
        """The run ends (its stop, or its loop's end): the forwards Kafka has not answered are
        no longer this run's to read at a next send; each answer is read when it comes
        (:func:`read_late`), as is any a hand-over ending after the run leaves."""
        self.left = True
        sending, self._sending = self._sending, []
        for entry, _, delivery in sending:
            read_late(delivery, self._name, "forward", entry.job.key)

    def acknowledged(self, entry: Held) -> None:
        """Kafka took the forward: the command is called where it went (a copy of it anywhere
        else is not), and counted in the next summary."""
        job, organization, to, _ = entry
        self._called.forwarded(job.key, job.attempt, to)  # called where it went
        log.debug("%s forwarded request_id=%s attempt=%s to partition %s, organization=%s's",
                  self._name, job.key, job.attempt, to.partition, organization)  # fmt: skip
        self._sent[(organization, to.partition)] += 1

    async def send(self, *, wait: float = 0.0) -> None:
        """The held commands sent to their organisation's partition, keyed by it, each once the
        last commit of its partition no longer names it (the commit of the marks is made first,
        :meth:`_unmarked`; one still named is held). One the producer refused (it never held
        it) is queued here instead, unless an earlier copy's delivery failed; one whose
        delivery failed (Kafka may hold it) is held again, to be sent again, never called here
        (see the module doc): either is this run's to report again.

        Kafka's answers are read as they come, each at the next send (the executor's loop's
        next turn), not waited for (``wait``: at most that many seconds, a stop's): Kafka
        gives up on a delivery only after the producer's request timeout (20 minutes), and the
        loop, waiting, took nothing of any partition meanwhile, said nothing, and held its
        stop. Until its answer a forward is neither held nor this run's to report (as from
        the commit before it was sent), nor sent again; it is counted among the
        :attr:`held`. A revoke's hand-over waits for a send in progress (:attr:`lock`); a send
        while a hand-over runs sends nothing, its forwards left to the next (a hand-over waits
        for Kafka's answers to what it sends on, and in an outage the loop, waiting for the
        hand-over, took nothing meanwhile and held its stop)."""
        if self.lock.locked():  # a revoke's hand-over runs (sends are the loop's, or its stop's)
            return
        async with self.lock:
            self._settle()
            unsent = await self._send_held() if self._held else []
            if wait and self._sending:
                await asyncio.wait([delivery for *_, delivery in self._sending], timeout=wait)
            self._settle()
            self.summarise()
            for job in unsent:  # never written: called here, as before it knew the organisation
                self._scheduler.submit(self._work.target(self._work.decode(job.record[1])), job)

    async def _send_held(self) -> list[Job[Any]]:
        """The held forwards handed to the producer (:meth:`send`); returns those it refused
        that no earlier copy of was written, to call here."""
        held, self._held = self._held, []
        # not this run's to report from here: the marks committed now no longer name them
        settled = [(entry, self._unreported.reported(entry.job.key, entry.job.attempt))
                   for entry in held]  # fmt: skip
        await self._unmarked()
        unsent = []
        topic = self._topics.generate
        for entry, taken in settled:
            job = entry.job
            if self._commits.named(taken):  # a crash would have it told lost: not sent yet
                self._unreported.restore(job.key, taken)
                self._held.append(entry)
                continue
            try:
                delivery = await topic.send(key=entry.organization.encode(), value=job.record[1])
            except Exception as exc:  # not held by the producer: this copy surely not written
                _not_forwarded(exc, self._name, job.key, again=entry.written)
                self._unreported.restore(job.key, taken)  # this run's to report
                if entry.written:  # an earlier copy may be there: sent again, not called here
                    self._held.append(entry)
                else:
                    unsent.append(job)
                continue
            # called where it went, and nowhere else, from now on: this run, given that
            # partition before Kafka's answer is read, calls the forward when it takes it there
            self._called.forwarded(job.key, job.attempt, entry.to)
            self._sending.append((entry, taken, delivery))
        return unsent

    def _settle(self) -> None:
        """The forwards Kafka answered: acknowledged, counted; failed (perhaps written),
        held to forward again, never called here, and this run's to report again (told lost
        if the run ends first)."""
        sending, self._sending = self._sending, []
        for entry, taken, delivery in sending:
            if not delivery.done():
                self._sending.append((entry, taken, delivery))
            elif delivery.cancelled() or delivery.exception() is not None:
                failed = delivery.exception() if not delivery.cancelled() else None
                _not_forwarded(failed or CancelledError(), self._name, entry.job.key, again=True)
                self._unreported.restore(entry.job.key, taken)
                self._held.append(entry._replace(written=True))
            else:
                self.acknowledged(entry)

    async def _unmarked(self) -> None:
        """The marks that changed since their last commit (the held forwards' offsets out of
        them) committed before any forward is sent. Once Kafka acknowledged a forward, a mark
        still naming it (the executor's loop commits the next a batch later, up to half a
        second) had a crash meanwhile leave the partition's next owner telling the ledger it
        was lost, and the ledger, its attempt current, re-issued it while it was called at the
        organisation's executor: one OpenAI call made twice, billed twice. A commit that fails
        leaves them held (``Commits.named``), sent after the next that passes. (The forwards
        of a partition given up are sent by its hand-over, after its mark; one held again since
        is named by no mark of this run.)"""
        try:
            await self._commits.commit(self._consumer(), self._commits.marks({}, {}))
        except Exception as exc:
            log.warning(NOT_UNMARKED, self._name, type(exc).__name__)


def read_late(delivery: asyncio.Future[Any], name: str, what: str, request_id: str) -> None:
    """A delivery (``what``: a forward, a hand-back) Kafka had not answered when its
    executor's run ended: its answer is read when it comes, and a failure said (a WARNING;
    a stop's ``GivenUp``, counted in its own WARNING, a DEBUG line). Left unread, a delivery
    that failed after the run (the producer's stop, waiting for Kafka, failing it) was said
    only by asyncio's ERROR "Future exception was never retrieved" once collected, with a
    traceback and nothing of the command or of what becomes of it."""

    def answered(delivery: asyncio.Future[Any]) -> None:
        failed = None if delivery.cancelled() else delivery.exception()
        if failed is None:
            return
        if isinstance(failed, GivenUp):
            log.debug("%s could not %s request_id=%s (the stop gave up on Kafka)",
                      name, what, request_id)  # fmt: skip
        else:
            log.warning(FAILED_LATE, name, what, request_id, type(failed).__name__, failed)

    delivery.add_done_callback(answered)


def _not_forwarded(exc: BaseException, name: str, request_id: str, *, again: bool = False) -> None:
    """A forward Kafka did not acknowledge: the command is called here, or (``again``: Kafka
    may hold it) forwarded again (a WARNING; a stop's ``GivenUp`` is counted in its own
    WARNING: DEBUG)."""
    then = "Kafka may hold it: forwarded again, not called here" if again else "called here"
    if isinstance(exc, GivenUp):
        log.debug("%s could not forward request_id=%s (the stop gave up on Kafka): %s",
                  name, request_id, then)  # fmt: skip
    else:
        log.warning(
            "%s could not forward request_id=%s (%s: %s): %s",
            name, request_id, type(exc).__name__, exc, then,
        )  # fmt: skip

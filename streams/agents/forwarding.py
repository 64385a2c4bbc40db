"""Commands an executor forwards to the executor that paces their OpenAI organisation.

OpenAI limits an organisation, not a key, and a scheduler paces every key of an organisation
it knows with one pacer (``streams.upstream.scheduler``). But [generate] is keyed by the key
(``streams.agents.outputs.target_key``): with several workers, two keys of one organisation
may sit in partitions two executors own, and each would pace the organisation at its whole
limit. So an executor that knows a command's organisation (an answer named its key's) and does
not own the organisation's own partition of [generate] (the one the producers' partitioner,
murmur2, gives the organisation's id as a record key) forwards the command there
(:func:`destination`): the same record, keyed by the organisation. Whoever owns that partition
calls it, paced with the organisation's other keys (it learns the key's organisation from its
first answer, as any executor). The commands of a key it queued before an answer named the
organisation go the same way (:meth:`Forwarding.queued`).

A command is forwarded once at most: only from its key's partition (a record keyed as the
ledger keys it), never from its organisation's (two executors that knew a key in two
organisations would otherwise send it to and fro). With one worker owning every partition,
nothing is forwarded.

As a hand-back (``streams.agents.handover``), a forward counts once Kafka acknowledged it: the
command is then no longer this run's to report (its marks do not tell it lost), and this run
calls it only if it takes it where it went (``streams.agents.called``: a copy of it in its
key's partition is not called). A forward Kafka did not take is called here, as before.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.agents.called import Called
from streams.agents.marks import Unreported
from streams.agents.outputs import target_key
from streams.agents.results import log_unsent
from streams.agents.work import Work
from streams.runtime import Topics
from streams.upstream.scheduler import Job, Scheduler

log = logging.getLogger("streams.agents.executors")  # the executors' lines

_PARTITIONER = DefaultPartitioner()


def organization_partition(organization: str, partitions: Collection[int]) -> int:
    """The partition a producer writes a record keyed by the organisation's id to."""
    every = sorted(partitions)
    return int(_PARTITIONER(organization.encode(), every, every))


def destination(
    *,
    key: bytes | None,
    own_key: bytes,
    organization: str | None,
    partition: int,
    partitions: Collection[int],
    owned: Collection[int],
) -> int | None:
    """Where a command read at ``partition`` under the record ``key`` is forwarded (None:
    called here): to its ``organization``'s partition, if one is known, the record is keyed
    as the ledger keys the command (``own_key``: not forwarded before), and neither this
    partition nor another this executor ``owned`` is the organisation's."""
    if organization is None or key != own_key or not partitions:
        return None
    to = organization_partition(organization, partitions)
    return None if to == partition or to in owned else to


class Forwarding:
    """One executor run's forwards: those of a batch, held until sent and acknowledged
    (:meth:`hold`, :meth:`send`), and those of commands it queued before it knew their
    organisation (:meth:`queued`)."""

    def __init__(
        self,
        *,
        name: str,
        topics: Topics,
        scheduler: Scheduler,
        work: Work[Any],
        called: Called,
        unreported: Unreported,
    ) -> None:
        self._name = name  # the executor's, in its log lines
        self._topics = topics  # [generate] is where it forwards (only OpenAI keys have one)
        self._scheduler = scheduler
        self._work = work
        self._called = called  # the executor's: the commands this run took lately
        self._unreported = unreported  # the executor's: what this run took and did not report
        self._held: list[tuple[Job[Any], str, str, TopicPartition]] = []

    def to(
        self, consumer: AIOKafkaConsumer | None, tp: TopicPartition, key: bytes | None, command: Any
    ) -> tuple[str, TopicPartition] | None:
        """The command's organisation and the partition it is forwarded to, or None."""
        family = self._work.family(command)
        organization = self._scheduler.organization(family) if family else None
        if organization is None or consumer is None:
            return None
        to = destination(
            key=key,
            own_key=target_key(command),
            organization=organization,
            partition=tp.partition,
            partitions=consumer.partitions_for_topic(tp.topic) or (),
            owned={p.partition for p in consumer.assignment() if p.topic == tp.topic},
        )
        return None if to is None else (organization, TopicPartition(tp.topic, to))

    def hold(self, job: Job[Any], target: str, organization: str, to: TopicPartition) -> None:
        """A command taken, to forward (sent by :meth:`send`, with the batch's others)."""
        self._held.append((job, target, organization, to))

    async def queued(self, consumer: AIOKafkaConsumer | None) -> None:
        """The queued commands of keys whose organisation an answer named since the last look,
        forwarded where it says (a blast taken before the first answer)."""
        families = self._scheduler.named()
        if not families or consumer is None:
            return
        found: dict[int, tuple[str, str, TopicPartition]] = {}

        def forwarded(job: Job[Any]) -> bool:
            if job.family not in families or job.record is None:
                return False
            key, value = job.record
            command = self._work.decode(value)
            where = self.to(consumer, job.origin, key, command)
            if where is not None:
                found[id(job)] = (self._work.target(command), *where)
            return where is not None

        for job in self._scheduler.take_out(forwarded):
            self.hold(job, *found[id(job)])
        await self.send()

    async def send(self) -> None:
        """The held commands sent to their organisation's partition, keyed by it, and
        acknowledged: each is no longer this run's to report. One Kafka did not take is
        queued here instead."""
        if not self._held:
            return
        held, self._held = self._held, []
        deliveries, unsent = [], []
        topic = self._topics.generate
        for job, target, organization, to in held:
            try:
                delivery = await topic.send(key=organization.encode(), value=job.record[1])
            except Exception as exc:
                log_unsent(exc, "%s could not forward request_id=%s", self._name, job.key)
                unsent.append((job, target))
                continue
            deliveries.append((job, target, organization, to, delivery))
        sent: collections.Counter[tuple[str, int]] = collections.Counter()
        for job, target, organization, to, delivery in deliveries:
            try:
                await delivery
            except Exception as exc:
                log_unsent(exc, "%s could not forward request_id=%s", self._name, job.key)
                unsent.append((job, target))
                continue
            self._called.forwarded(job.key, job.attempt, to)  # called where it went
            self._unreported.reported(job.key, job.attempt)  # not ours to report any more
            sent[(organization, to.partition)] += 1
        for (organization, partition), count in sent.items():
            log.info("%s forwarded %s commands to partition %s, organization=%s's: paced there "
                     "with its other keys", self._name, count, partition, organization)  # fmt: skip
        for job, target in unsent:  # called here, as before it knew the organisation
            self._scheduler.submit(target, job)

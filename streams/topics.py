"""Our topics, created up front with a fixed partition count.

faust subscribes an agent only to topics that exist when the worker starts, and a table's
changelog must have as many partitions as the topic it is keyed by, so every topic is created
here, before any worker or ingress runs, with ``TALKSTREAM_PARTITIONS`` partitions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from models.events import (
    DeadLetter,
    GenerateText,
    LifecycleEvent,
    PublishCompletion,
    RequestsValue,
)
from models.state import PersonState
from streams.errors import ConfigError
from streams.kafka_options import (
    KeyPartitioner,
    broker_error,
    client_options,
    stop_consumer,
    waiting_for_kafka,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

LEDGER_TABLE = "ledger"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the catalogue: its name without the app-id prefix, what its records are
    keyed by, the type of its values, who reads it, and its topic-level configuration."""

    name: str
    key: str
    values: Any  # a model, or an annotated union of models (see :meth:`value_names`)
    audience: str
    retention: str = "broker default"
    # set on the topic at its creation, beside min.insync.replicas. Every topic but the
    # changelog says delete: a broker whose own default is compact would keep one record a
    # key, the last transition of a request, the last command of an OpenAI key or a site
    config: dict[str, str] = field(default_factory=lambda: {"cleanup.policy": "delete"})

    def full_name(self, settings: Settings) -> str:
        return settings.topic(self.name)

    def value_names(self) -> list[str]:
        """The class names of the values, in the order of the union."""
        members = get_args(get_args(self.values)[0]) if get_origin(self.values) else ()
        return [m.__name__ for m in members] or [self.values.__name__]


# The one catalogue: topics, schemas, the app's topics and the topology check derive from it.
CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        "requests",
        "person (site:email); a GapProbe has none (sent to its partition)",
        RequestsValue,
        "internal: the ledger's input and the audit log (sealed secrets inside)",
        retention="broker default (delete); it is the audit log: keep it as long as you want "
        "replays",
    ),
    # keyed by upstream target, so all of one target's calls meet in one executor; a generator
    # forwards a command to the executor pacing its OpenAI organisation keyed by its id
    TopicSpec(
        "generate",
        "OpenAI key fingerprint (forwarded: its organisation)",
        GenerateText,
        "internal: generator commands",
    ),
    # the site lower-cased: a site in any case is one target (models.params.site_identity)
    TopicSpec(
        "completions", "site (lower-cased)", PublishCompletion, "internal: publisher commands"
    ),
    TopicSpec(
        "lifecycle",
        "request_id",
        LifecycleEvent,
        "public: every state transition, no secrets; for analytics consumers",
        retention="broker default (delete); the projection's source: keep it as long as you "
        "want to rebuild it",
    ),
    TopicSpec(
        "deadletter",
        "as received; work the ledger gave up on: request_id",
        DeadLetter,
        "operators",
    ),
    # faust names a table's changelog "<app id>-<table>-changelog"
    TopicSpec(
        f"{LEDGER_TABLE}-changelog",
        "person (site:email)",
        PersonState,
        "internal: the ledger table's changelog (faust); not a consumer contract",
        retention="compacted",
        # a person's entry is one record: created taking what the worker's producer sends at
        # most (Kafka's default), whatever a broker's own message.max.bytes says
        config={"cleanup.policy": "compact", "max.message.bytes": "1048588"},
    ),
)
# what a record of the ledger's changelog holds besides a person's entry: its key, its framing
CHANGELOG_RECORD_SLACK = 1024
BY_NAME = {spec.name: spec for spec in CATALOGUE}

# the topics whose readers write dead letters: the ledger's, the executors', the projector's
LETTER_SOURCES = ("requests", "generate", "completions", "lifecycle")


def letter_source(settings: Settings, name: str) -> str:
    """A dead letter's source topic, given by its full name or without the app id, as the
    letters carry it (full); any other name is a ValueError that lists the ones there are
    (so that a filter by topic never selects nothing without a word)."""
    full = {settings.topic(source) for source in LETTER_SOURCES}
    if name in full:
        return name
    if name in LETTER_SOURCES:
        return settings.topic(name)
    raise ValueError(
        f"{name!r} is not a topic dead letters come from: "
        f"{', '.join(settings.topic(source) for source in LETTER_SOURCES)} "
        f"(or without the app id: {', '.join(LETTER_SOURCES)})"
    )


def consumer_group(settings: Settings, role: str | None = None) -> str:
    """The consumer group of a role: faust's own (the ledger) is the app id; the executors
    (``generator``, ``publisher``) and the projector each have one beside it."""
    return settings.app_id if role is None else f"{settings.app_id}-{role}"


async def coordinators_ready(settings: Settings, groups: list[str], timeout: float = 30.0) -> None:
    """Wait until Kafka names a coordinator for each of ``groups``.

    A broker that has just started loads its offsets topic before it coordinates any group,
    and answers "coordinator not available" meanwhile; a consumer that asks then logs an ERROR
    (aiokafka's, for what it retries anyway) and asks again. Asked here first, a normal start
    logs nothing of it. At the deadline, or if Kafka cannot be asked, this returns: the
    consumers go on asking by themselves."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
    try:
        await admin.start()
        for group in groups:
            while True:
                try:
                    await admin.find_coordinator(group)
                    break
                except KafkaError as exc:
                    if not exc.retriable or loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
    except (KafkaError, TimeoutError, OSError) as exc:
        log.info("the group coordinators did not answer yet (%r); the consumers will ask", exc)
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create any missing topic; returns the names created. Idempotent.

    Topics get ``TALKSTREAM_PARTITIONS`` partitions, ``TALKSTREAM_REPLICATION_FACTOR``
    replicas and ``min.insync.replicas`` = ``TALKSTREAM_MIN_INSYNC_REPLICAS`` (with
    ``acks=all``, a write is acknowledged once that many replicas have it). A topic the
    brokers refuse to create (say, more replicas than brokers) is a :class:`ConfigError` that
    names it; Kafka out of reach is :class:`BrokerUnavailable`, refused credentials
    :class:`~streams.errors.KafkaAuthError`, each with the reason, at once. When some broker
    answered but the one asked did not (a cluster with a broker down: the admin client asks a
    random one), it asks again until ``timeout``: a worker starting during a broker's restart
    must not die of it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await _ensure_once(settings, timeout)
        except _AskAgain as again:
            cause = again.__cause__ or again
            if loop.time() > deadline:
                raise await broker_error(settings, cause) from cause
            log.info("asking Kafka again about the topics: %r", cause)
            await asyncio.sleep(0.5)


def partitions_differ(settings: Settings, counts: dict[str, int]) -> str:
    """What to say when the deployment's topics have other partition counts than this process
    is set for: a person's messages and ledger state live in the partition their key maps to,
    so every process must agree on the count, and it cannot change after creation."""
    grouped: dict[int, list[str]] = {}
    for name, count in counts.items():
        grouped.setdefault(count, []).append(name)
    if len(grouped) > 1 and min(grouped) == settings.partitions:
        # some have the count set, the others more: partitions added to a deployment's topics
        added = "; ".join(
            f"{', '.join(sorted(names))} ({count} partitions)"
            for count, names in sorted(grouped.items())
            if count > settings.partitions
        )
        grown = {name for count, names in grouped.items() if count > settings.partitions
                 for name in names}  # fmt: skip
        why = (
            # the ledger writes a person's state to the partition of their [requests] record
            "The ledger's table is paired with [requests] partition by partition (by faust's "
            "assignor) only while their counts agree, so a person's requests could wait in "
            "Kafka, undecided, on a worker without their state"
            if grown == {settings.topic(f"{LEDGER_TABLE}-changelog")}
            else "A person's messages and state live in the partition their key maps to"
        )
        return (
            f"TALKSTREAM_PARTITIONS is {settings.partitions}, as the topics were created "
            f"({', '.join(sorted(grouped[settings.partitions]))}), but partitions were added "
            f"since to {added}. {why}, so every topic must keep the count it was created with, "
            "and Kafka takes no partition away: give this deployment a TALKSTREAM_APP_ID of its "
            "own (README, Operations: Scale out)"
        )
    listed = "; ".join(
        f"{count} partitions: {', '.join(sorted(names))}"
        for count, names in sorted(grouped.items())
    )
    fix = (
        f"set TALKSTREAM_PARTITIONS={next(iter(grouped))}"
        if len(grouped) == 1
        else "recreate the topics with one count"
    )
    return (
        f"TALKSTREAM_PARTITIONS is {settings.partitions}, but the topics have {listed}. A "
        "topic's partitions are fixed when it is created, and every process must use that count "
        f"(a person's messages and state live in the partition their key maps to): {fix}, or "
        "give this deployment a TALKSTREAM_APP_ID of its own"
    )


def partition_of(partitions: int) -> Callable[[bytes], int]:
    """A person's partition of [requests], as every producer of it maps the key: Kafka's
    default partitioner over ``partitions``, the count the topics were created with
    (``TALKSTREAM_PARTITIONS``, the ledger's changelog's), never the count the broker has now.
    Every record of [requests] is written to the partition this names (the ingress's, the
    executors' results, lost-work reports, deadline signals, redrive), so that partitions added
    to the topic since (``kafka-topics.sh --alter``) stay empty and a person's records keep
    meeting the ledger state of that person."""
    every = list(range(partitions))
    partitioner = KeyPartitioner()  # the producers' (each key's murmur2 remembered)
    return lambda key: partitioner(key, every, every)


def unpaired(actives: Iterable[Any], partitions: int, app_id: str) -> tuple[set[Any], str | None]:
    """The partitions of [requests] this worker holds (of ``actives``, faust's assignment to
    it) without the ledger changelog's partition of the same number, and what to say of them
    (None when there are none). The ledger writes a person's state to the changelog partition
    of their [requests] record and reads it from the table this worker recovered from the
    changelog partitions it holds: faust's assignor gives a worker [requests] partition N
    with changelog partition N only while the two topics have as many partitions (it pairs
    topics of one count), so once partitions were added to either, a worker may be given
    [requests] partition N while another holds changelog partition N: it would decide the
    people of N without their state (a usage count seeded again from the snapshot Talkable
    renders, a limit exceeded; a request admitted again). Their records wait in Kafka instead
    (:class:`streams.faust_transport.Consumer` keeps them paused); only partitions below the
    count the topics were created with (``partitions``) are looked at: nothing of
    talkstream's is written past it (:func:`partition_of`), ``partitions_added`` says those."""
    requests, changelog = f"{app_id}-requests", f"{app_id}-{LEDGER_TABLE}-changelog"
    actives = list(actives)
    states = {tp.partition for tp in actives if tp.topic == changelog}
    apart = {
        tp
        for tp in actives
        if tp.topic == requests and tp.partition < partitions and tp.partition not in states
    }
    if not apart:
        return apart, None
    numbers = ", ".join(str(tp.partition) for tp in sorted(apart, key=lambda tp: tp.partition))
    return apart, (
        f"{requests} and the ledger's {changelog} assigned apart: this worker holds {requests} "
        f"partition {numbers} without the ledger's state of its people (the same partition of "
        f"{changelog} is another worker's), so its ledger decides none of their records, which "
        "wait in Kafka, until the deployment is fixed (faust's assignor pairs the two partition "
        "by partition only while their counts agree: partitions were added to one of them; "
        "deploy under a new TALKSTREAM_APP_ID)"
    )


def partitions_added(assigned: Iterable[Any], partitions: int) -> str | None:
    """What to say when faust gave this worker partitions past the count its topics were
    created with (``partitions``, checked at start): some were added to [requests] or to the
    ledger's changelog since (``kafka-topics.sh --alter``), which its consumer takes at its
    next rebalance. Of [requests]: no ledger keeps the state of a person there; talkstream
    writes nothing there (:func:`partition_of`), but a record another producer writes to one
    stops the worker reading it (faust: ``Unrecognized partition``) and each worker it moves to
    next. Of the changelog: nothing is written there (the ledger writes a person's state to
    the partition of their [requests] record), but faust's assignor pairs [requests]'s
    partitions with the changelog's only while their counts agree, so a worker may be given a
    person's partition of [requests] without their ledger state (:func:`unpaired`: it decides
    none of it). None when every assigned partition is one of the count."""
    past: dict[str, list[int]] = {}
    for tp in assigned:
        if tp.partition >= partitions:
            past.setdefault(tp.topic, []).append(tp.partition)
    if not past:
        return None
    changelog = f"-{LEDGER_TABLE}-changelog"

    def held(grown: Iterable[str]) -> str:
        return "; ".join(
            f"{topic} partition {', '.join(map(str, sorted(past[topic])))}" for topic in grown
        )

    sources = sorted(topic for topic in past if not topic.endswith(changelog))
    changelogs = sorted(topic for topic in past if topic.endswith(changelog))
    said = []
    if sources:
        said.append(
            f"this worker holds {held(sources)}, past the {partitions} the topics were created "
            "with, where no ledger keeps a person's state (a record there stops the worker "
            "that reads it)"
        )
    if changelogs:
        said.append(
            f"this worker holds {held(changelogs)}, past the {partitions} the topics were "
            "created with: the ledger's changelog has more partitions than [requests], and "
            "faust then assigns them apart: a worker given a person's [requests] partition "
            "without their ledger state decides none of it (their records wait in Kafka)"
        )
    return (
        f"partitions added to a deployment's topics: {'; and '.join(said)}; to change the "
        "count, deploy under a new TALKSTREAM_APP_ID"
    )


def _refused_topics(settings: Settings, refused: list[tuple[str, int, str | None]]) -> str:
    """Kafka's refusals of the topics it would not create, once per reason with the topics it
    gave it for (a replication factor above the brokers' count said the same long sentence
    six times, one per topic), and what to set when it is the replication factor."""
    reasons: dict[str, list[str]] = {}
    for name, code, message in refused:
        reasons.setdefault(message or for_code(code).__name__, []).append(name)
    said = "; ".join(f"{', '.join(names)}: {why}" for why, names in reasons.items())
    if any(code == InvalidReplicationFactorError.errno for _, code, _ in refused):
        said += (
            f" (TALKSTREAM_REPLICATION_FACTOR is {settings.replication_factor}: give at most "
            "the number of brokers, 1 for a single broker)"
        )
    return f"Kafka refused to create topics {said}"


class _AskAgain(Exception):
    """The cluster answered, one broker of it did not: another attempt may reach another."""


async def _ensure_once(settings: Settings, timeout: float) -> list[str]:
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        try:
            with waiting_for_kafka(settings, timeout):
                await asyncio.wait_for(admin.start(), timeout)
        except (KafkaError, TimeoutError, OSError) as exc:  # no broker answered at all
            raise await broker_error(settings, exc) from exc
        try:
            existing = set(await admin.list_topics())
            missing = [spec for spec in CATALOGUE if spec.full_name(settings) not in existing]
            present = [spec.full_name(settings) for spec in CATALOGUE if spec not in missing]
            described = await admin.describe_topics(present) if present else []
        except (KafkaError, TimeoutError, OSError) as exc:
            raise _AskAgain() from exc
        for topic in described:  # gone, or without a leader, since it was listed
            if topic["error_code"]:
                raise _AskAgain() from for_code(topic["error_code"])()
        counts = {topic["topic"]: len(topic["partitions"]) for topic in described}
        if any(count != settings.partitions for count in counts.values()):
            raise ConfigError(partitions_differ(settings, counts))  # before creating any
        try:  # the controller's word: a topic just created may not be listed yet
            known = (
                await admin.create_topics(
                    [_new_topic(settings, s) for s in missing], validate_only=True
                )
                if missing
                else None
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            raise _AskAgain() from exc
        late = [
            name
            for name, code, *_ in getattr(known, "topic_errors", [])
            if code == TopicAlreadyExistsError.errno
        ]
        if late:  # exists, not listed yet: asked again, its partitions are compared first
            raise _AskAgain() from TopicAlreadyExistsError(", ".join(late))
        try:
            response = (
                await admin.create_topics([_new_topic(settings, s) for s in missing])
                if missing
                else None
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            raise _AskAgain() from exc
        refused = [
            (name, code, message)
            for name, code, message, *_ in getattr(response, "topic_errors", [])
            if code not in (0, TopicAlreadyExistsError.errno)  # another process raced us
        ]
        if refused:
            raise ConfigError(_refused_topics(settings, refused))
        if missing:
            await _until_every_broker_knows(
                settings, [spec.full_name(settings) for spec in missing], timeout
            )
            log.info(
                "created topics %s replication_factor=%s min_insync_replicas=%s",
                ",".join(spec.full_name(settings) for spec in missing),
                settings.replication_factor,
                settings.insync_replicas,
            )
        await _changelog_takes_an_entry(admin, settings)
        return [spec.full_name(settings) for spec in missing]
    finally:
        await admin.close()


async def _changelog_takes_an_entry(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Refuse a ledger changelog that takes smaller records than a person's entry may be
    (``TALKSTREAM_MAX_ENTRY_BYTES``): the worker's changelog sends of larger entries were
    refused, logged as WARNINGs only, and the state silently not saved (a recovery restores an
    older one: usage windows and dedupe wrong). Not asked (Kafka out of reach): the start goes
    on, as it does for the topics' other settings."""
    name = settings.topic(f"{LEDGER_TABLE}-changelog")
    try:
        [answer] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [(*_, entries)] = answer.resources
        limit = next(int(value) for key, value, *_ in entries if key == "max.message.bytes")
    except (KafkaError, TimeoutError, OSError, ValueError, StopIteration) as exc:
        log.warning("could not ask Kafka for %s's max.message.bytes: %r", name, exc)
        return
    needed = settings.max_entry_bytes + CHANGELOG_RECORD_SLACK
    if limit < needed:
        raise ConfigError(
            f"{name} takes records of at most {limit} bytes (its max.message.bytes), less than "
            f"a person's ledger entry may need ({needed}: TALKSTREAM_MAX_ENTRY_BYTES "
            f"{settings.max_entry_bytes} and its key): raise it (kafka-configs.sh --alter "
            f"--entity-type topics --entity-name {name} --add-config "
            f"max.message.bytes={needed}) or lower TALKSTREAM_MAX_ENTRY_BYTES"
        )


async def _until_every_broker_knows(settings: Settings, names: list[str], timeout: float) -> None:
    """Wait until every broker's metadata has ``names`` with a leader for each partition.

    CreateTopics returns once the controller has the topic; on a cluster (seen with Kafka
    3.9) another broker may answer "unknown topic" for a moment after, and a worker whose
    first metadata comes from it would start without the topic (faust subscribes only to
    topics that exist). At the deadline this logs and returns: the topics do exist.
    """
    client = AIOKafkaClient(**client_options(settings), request_timeout_ms=5000)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await client.bootstrap()
        while lagging := await _lagging(client, names, settings.partitions):
            if loop.time() > deadline:
                log.warning("created topics not yet known everywhere: %s", ",".join(lagging))
                return
            await asyncio.sleep(0.1)
    except (KafkaError, TimeoutError, OSError) as exc:
        log.warning("could not check that every broker knows the new topics: %r", exc)
    finally:
        await client.close()


async def _lagging(client: AIOKafkaClient, names: list[str], partitions: int) -> list[str]:
    """``topic@broker`` for each broker whose metadata lacks a partition or its leader."""
    lagging = []
    for broker in client.cluster.brokers():
        seen = ClusterMetadata()
        try:
            seen.update_metadata(await client.send(broker.nodeId, MetadataRequest(names)))
        except (KafkaError, TimeoutError, OSError):
            lagging += [f"{name}@{broker.nodeId} (no answer)" for name in names]
            continue
        for name in names:
            leaders = [
                seen.leader_for_partition(TopicPartition(name, p))
                for p in seen.partitions_for_topic(name) or set()
            ]
            if sum(leader is not None and leader >= 0 for leader in leaders) < partitions:
                lagging.append(f"{name}@{broker.nodeId}")
    return lagging


def _new_topic(settings: Settings, spec: TopicSpec) -> NewTopic:
    return NewTopic(
        name=spec.full_name(settings),
        num_partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        topic_configs={"min.insync.replicas": str(settings.insync_replicas), **spec.config},
    )


async def log_start(settings: Settings, topic: str, partition: int) -> int:
    """The earliest offset Kafka holds of one partition (0 until retention deletes a record)."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        return int((await consumer.beginning_offsets([tp]))[tp])
    finally:
        await stop_consumer(consumer)


async def read_range(
    settings: Settings, topic: str, partition: int, start: int, end: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Records ``start <= offset < end`` of one partition, read with a group-less consumer
    (from the partition's log start if retention deleted ``start``: the latest, aiokafka's
    default, read nothing)."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records += [r for r in batch.get(tp, []) if start <= r.offset < end]
    finally:
        await stop_consumer(consumer)
    return records

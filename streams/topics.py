"""Our topics, created up front with a fixed partition count.

faust subscribes an agent only to topics that exist when the worker starts, and a table's
changelog must have as many partitions as the topic it is keyed by, so every topic is created
here, before any worker or ingress runs, with ``TALKSTREAM_PARTITIONS`` partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import ConfigError
from streams.kafka_options import broker_error, client_options
from streams.settings import Settings

log = logging.getLogger(__name__)

LEDGER_TABLE = "ledger"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    purpose: str
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t = settings.topic
    return [
        TopicSpec(t("requests"), "person", "webhooks, executor results, deadlines (ledger input)"),
        TopicSpec(t("generate"), "request_id", "GenerateText commands (sealed OpenAI key)"),
        TopicSpec(t("completions"), "request_id", "PublishCompletion commands (sealed key)"),
        TopicSpec(t("lifecycle"), "request_id", "LifecycleEvent: every state transition"),
        TopicSpec(t("deadletter"), "as received", "DeadLetter: poison messages, parked work"),
        # faust names a table's changelog "<app id>-<table>-changelog"
        TopicSpec(
            f"{settings.app_id}-{LEDGER_TABLE}-changelog",
            "person",
            "ledger table changelog",
            {"cleanup.policy": "compact"},
        ),
    ]


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create any missing topic; returns the names created. Idempotent.

    Topics get ``TALKSTREAM_PARTITIONS`` partitions, ``TALKSTREAM_REPLICATION_FACTOR``
    replicas and ``min.insync.replicas`` = ``TALKSTREAM_MIN_INSYNC_REPLICAS`` (with
    ``acks=all``, a write is acknowledged once that many replicas have it). A topic the
    brokers refuse to create (say, more replicas than brokers) is a :class:`ConfigError` that
    names it; Kafka out of reach is :class:`BrokerUnavailable`, refused credentials
    :class:`~streams.errors.KafkaAuthError`, each with the reason.
    """
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        try:
            await asyncio.wait_for(admin.start(), timeout)
            existing = set(await admin.list_topics())
            missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
            response = (
                await admin.create_topics([_new_topic(settings, s) for s in missing])
                if missing
                else None
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            raise await broker_error(settings, exc) from exc
        refused = [
            f"{name}: {message or code}"
            for name, code, message, *_ in getattr(response, "topic_errors", [])
            if code not in (0, TopicAlreadyExistsError.errno)  # another process raced us
        ]
        if refused:
            raise ConfigError("Kafka refused to create topics: " + "; ".join(refused))
        if missing:
            log.info(
                "created topics %s replication_factor=%s min_insync_replicas=%s",
                ",".join(spec.name for spec in missing),
                settings.replication_factor,
                settings.insync_replicas,
            )
        return [spec.name for spec in missing]
    finally:
        await admin.close()


def _new_topic(settings: Settings, spec: TopicSpec) -> NewTopic:
    return NewTopic(
        name=spec.name,
        num_partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        topic_configs={"min.insync.replicas": str(settings.insync_replicas), **spec.config},
    )


async def read_range(
    settings: Settings, topic: str, partition: int, start: int, end: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Records ``start <= offset < end`` of one partition, read with a group-less consumer."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records += [r for r in batch.get(tp, []) if start <= r.offset < end]
    finally:
        # aiokafka 0.14's group-less consumer may re-raise its own cancelled task on stop
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()
    return records

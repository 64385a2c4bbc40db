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

from streams.errors import BrokerUnavailable
from streams.kafka_options import client_options
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
    """Create any missing topic; returns the names created. Idempotent."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process raced us
                await admin.create_topics(
                    [
                        NewTopic(
                            name=spec.name,
                            num_partitions=settings.partitions,
                            replication_factor=settings.replication_factor,
                            topic_configs=spec.config,
                        )
                        for spec in missing
                    ]
                )
            log.info("created topics %s", ",".join(spec.name for spec in missing))
        return [spec.name for spec in missing]
    except (KafkaError, TimeoutError, OSError) as exc:
        raise BrokerUnavailable(
            f"Kafka at {settings.kafka_bootstrap} is not reachable: {type(exc).__name__}"
        ) from exc
    finally:
        await admin.close()


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

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
from typing import Any, get_args, get_origin

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from models.events import (
    DeadLetter,
    GenerateText,
    LifecycleEvent,
    PublishCompletion,
    RequestsValue,
)
from models.state import PersonState
from streams.errors import BrokerUnavailable
from streams.kafka_options import client_options
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
    config: dict[str, str] = field(default_factory=dict)

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
        "person (site:email)",
        RequestsValue,
        "internal: the ledger's input and the audit log (sealed secrets inside)",
        retention="broker default (delete); it is the audit log: keep it as long as you want "
        "replays",
    ),
    # keyed by upstream target, so all of one target's calls meet in one executor
    TopicSpec("generate", "OpenAI key fingerprint", GenerateText, "internal: generator commands"),
    TopicSpec("completions", "site", PublishCompletion, "internal: publisher commands"),
    TopicSpec(
        "lifecycle",
        "request_id",
        LifecycleEvent,
        "public: every state transition, no secrets; for analytics consumers",
    ),
    TopicSpec("deadletter", "as received", DeadLetter, "operators"),
    # faust names a table's changelog "<app id>-<table>-changelog"
    TopicSpec(
        f"{LEDGER_TABLE}-changelog",
        "person (site:email)",
        PersonState,
        "internal: the ledger table's changelog (faust); not a consumer contract",
        retention="compacted",
        config={"cleanup.policy": "compact"},
    ),
)
BY_NAME = {spec.name: spec for spec in CATALOGUE}


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create any missing topic; returns the names created. Idempotent."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = set(await admin.list_topics())
        missing = [spec for spec in CATALOGUE if spec.full_name(settings) not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process raced us
                await admin.create_topics(
                    [
                        NewTopic(
                            name=spec.full_name(settings),
                            num_partitions=settings.partitions,
                            replication_factor=settings.replication_factor,
                            topic_configs=spec.config,
                        )
                        for spec in missing
                    ]
                )
            log.info("created topics %s", ",".join(s.full_name(settings) for s in missing))
        return [spec.full_name(settings) for spec in missing]
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

"""``talkstream topics`` on the session broker: the replication settings reach the topics, and
a topic Kafka refuses to create is an error that names it, not silence."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.dev.kafka import EmbeddedKafka
from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(*_, configs)] = response.resources
    return {c[0]: c[1] for c in configs}


def test_topics_get_min_insync_replicas_and_are_created_once(kafka: EmbeddedKafka) -> None:
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"ttopics{uuid.uuid4().hex[:8]}")
    created = asyncio.run(ensure_topics(settings))

    assert len(created) == 6
    config = asyncio.run(topic_config(kafka.bootstrap, settings.topic("requests")))
    assert config["min.insync.replicas"] == "1"
    assert asyncio.run(ensure_topics(settings)) == []  # idempotent


def test_more_replicas_than_brokers_is_refused_by_name(kafka: EmbeddedKafka) -> None:
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap,
        app_id=f"ttopics{uuid.uuid4().hex[:8]}",
        replication_factor=3,
    )
    with pytest.raises(ConfigError, match=rf"{settings.topic('requests')}: .*replication factor"):
        asyncio.run(ensure_topics(settings))

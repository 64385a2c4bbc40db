"""``talkstream topics`` on the session broker: the replication settings reach the topics, and
a topic Kafka refuses to create is an error that names it, not silence; the consumer groups'
coordinators are asked for before the consumers start."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.dev.kafka import EmbeddedKafka
from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import consumer_group, coordinators_ready, ensure_topics
from tests.support import free_port

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


def test_group_coordinators_are_ready_before_the_consumers_ask(kafka: EmbeddedKafka) -> None:
    """What the worker and the projector wait for at a start: Kafka names a coordinator for
    each of their groups (a consumer asking earlier logs an ERROR and asks again)."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tgroups{uuid.uuid4().hex[:8]}")
    groups = [consumer_group(settings, role) for role in (None, "generator", "projector")]
    assert groups[0] == settings.app_id and groups[2] == f"{settings.app_id}-projector"
    asyncio.run(coordinators_ready(settings, groups, timeout=30.0))

    async def coordinators() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            return [await admin.find_coordinator(group) for group in groups]
        finally:
            await admin.close()

    assert len(asyncio.run(coordinators())) == 3  # each answered at once, no error


def test_group_coordinators_out_of_reach_leave_the_asking_to_the_consumers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", app_id="tgroups-nobody")
    with caplog.at_level("INFO", logger="streams.topics"):
        asyncio.run(coordinators_ready(settings, ["tgroups-nobody"], timeout=1.0))
    assert "the consumers will ask" in caplog.text

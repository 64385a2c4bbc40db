"""The console's reads of Kafka, on a real broker: the dead letters it lists, and how many
older ones it leaves to ``talkstream redrive``."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from models.events import DeadLetter
from streams.codecs import encode
from streams.console.log import read_letters
from streams.dev.kafka import EmbeddedKafka
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


async def write_letters(settings: Settings, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for partition, count in counts.items():
            for i in range(count):
                letter = DeadLetter(
                    topic=settings.topic("requests"),
                    partition=partition,
                    offset=i,
                    reason=f"does not decode #{partition}.{i}",
                    at_ms=1_700_000_000_000 + i,
                )
                await producer.send_and_wait(
                    settings.topic("deadletter"), encode(letter), partition=partition
                )
    finally:
        await producer.stop()


def test_the_newest_letters_of_each_partition_are_read_and_the_older_counted(
    kafka: EmbeddedKafka,
) -> None:
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap, app_id=f"tletters{uuid.uuid4().hex[:8]}", partitions=2
    )
    asyncio.run(ensure_topics(settings))
    asyncio.run(write_letters(settings, {0: 5, 1: 2}))
    read = asyncio.run(read_letters(settings, most=3))
    assert sorted(x.reason for x in read.found) == [
        "does not decode #0.2",
        "does not decode #0.3",
        "does not decode #0.4",
        "does not decode #1.0",
        "does not decode #1.1",
    ]
    assert read.unread == 2  # partition 0's two oldest
    assert asyncio.run(read_letters(settings, most=5)).unread == 0

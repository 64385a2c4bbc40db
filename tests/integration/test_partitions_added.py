"""Partitions added to a live deployment's [requests] (``kafka-topics.sh --alter``, which the
README forbids): the records talkstream writes there still go to the partitions the topics were
created with, where the ledger keeps each person's state, whatever the producer's metadata says
of the topic now. Before, Kafka's default partitioner over the new count sent executors' results
to the added partitions: requests stuck in `generating`, and each worker reading them stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from streams.app import _topics
from streams.errors import ConfigError, PartitionsAdded
from streams.faust_transport import App, Topic
from streams.ingress import KafkaSink
from streams.kafka_options import IdempotentProducer, client_options
from streams.settings import Settings
from streams.topics import ensure_topics, partition_of
from tests.integration.conftest import read_topic


class Started:
    """faust's producer, started, over a real producer (as the worker's: idempotent)."""

    started = True

    def __init__(self, aiokafka: IdempotentProducer) -> None:
        self.aiokafka = aiokafka

    def _ensure_producer(self) -> IdempotentProducer:
        return self.aiokafka


def test_records_of_requests_stay_on_the_partitions_the_topics_were_created_with(kafka) -> None:
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tadded{uuid.uuid4().hex[:8]}")
    requests_name = settings.topic("requests")
    people = [f"acme:{n}@example.com".encode() for n in range(40)]

    async def scenario() -> list[int]:
        await ensure_topics(settings)  # 8 partitions, as configured
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({requests_name: NewPartitions(total_count=10)})
        finally:
            await admin.close()
        producer = IdempotentProducer(**client_options(settings), acks="all")
        await producer.start()
        # no ledger changelog to compare with: the ingress writes (the 503 is another test's)
        sink = KafkaSink(client_options(settings), partitions=settings.partitions)
        try:
            known, deadline = None, time.monotonic() + 30
            while len(known or ()) != 10 and time.monotonic() < deadline:  # until the broker says
                await producer.client.force_metadata_update()
                known = producer.client.cluster.partitions_for_topic(requests_name)
            app: Any = App(
                settings.app_id,
                broker=f"kafka://{kafka.bootstrap}",
                autodiscover=False,
                Topic=Topic,
            )
            app.producer = Started(producer)
            topics = _topics(app, settings)
            for person in people:  # as an executor reports a call's result
                await (await topics.requests.send(key=person, value=b"{}"))
            for person in people:  # as the ingress writes a webhook
                await sink.send(requests_name, person, b"{}")
            return sorted(known or ())
        finally:
            await sink.close()
            await producer.stop()

    known = asyncio.run(scenario())
    assert known == list(range(10))  # the producer knew of the added partitions
    written = {
        (key, partition) for partition, _, key, _ in read_topic(kafka.bootstrap, requests_name)
    }
    assert written == {(person, partition_of(8)(person)) for person in people}
    assert all(partition < 8 for _, partition in written)


def test_partitions_added_to_the_ledgers_changelog_are_named_as_such(kafka) -> None:
    """Partitions added to the ledger's changelog instead of [requests]: the ingress refused
    webhooks saying "[requests] has 8 partitions but the ledger's changelog 10: a webhook could
    land where no ledger reads it", the other way round; a start is refused naming the
    changelog as the topic that grew, and why that cannot work."""
    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tgrown{uuid.uuid4().hex[:8]}")
    requests_name, changelog = settings.topic("requests"), settings.topic("ledger-changelog")
    sink = KafkaSink(
        client_options(settings), ledger_changelog=changelog, partitions=settings.partitions
    )

    async def scenario() -> tuple[str | None, PartitionsAdded, ConfigError]:
        await ensure_topics(settings)
        await sink.send(requests_name, b"acme:ada@example.com", b"{}")  # the counts agree
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({changelog: NewPartitions(total_count=10)})
        finally:
            await admin.close()
        try:
            said, deadline = None, time.monotonic() + 30
            while said is None and time.monotonic() < deadline:  # until the broker says so
                said = await sink.ready(requests_name, 10)
            with pytest.raises(PartitionsAdded) as refused:
                await sink.send(requests_name, b"acme:ada@example.com", b"{}")
        finally:
            await sink.close()
        with pytest.raises(ConfigError) as start:
            await ensure_topics(settings)
        return said, refused.value, start.value

    said, refused, start = asyncio.run(scenario())
    cause = (
        f"the ledger's {changelog} has 10 partitions but {requests_name} 8: a webhook could be "
        "decided by a worker without its person's ledger state (partitions added to the "
        f"ledger's changelog, which faust then assigns apart from {requests_name}; to change "
        "the count, deploy under a new TALKSTREAM_APP_ID)"
    )
    assert said == cause
    assert refused.cause == cause
    assert str(refused) == f"{cause}; nothing was sent"
    assert str(start).startswith(
        f"TALKSTREAM_PARTITIONS is 8, as the topics were created ({settings.app_id}-completions, "
    )
    assert f"but partitions were added since to {changelog} (10 partitions). The ledger's " in (
        str(start)
    )
    assert len(read_topic(kafka.bootstrap, requests_name)) == 1  # the one before, no other

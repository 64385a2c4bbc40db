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

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from streams.app import _topics
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

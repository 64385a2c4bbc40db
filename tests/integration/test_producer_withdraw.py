"""The ledger takes back from the worker's producer the outputs it holds unsent of a batch
Kafka gave up on an output of (``streams.kafka_options.withdraw``), and only those: what other
senders put in the same producer batch is written, on the real broker."""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.dev.kafka import EmbeddedKafka
from streams.kafka_options import IdempotentProducer, Withdrawn, sending_now, withdraw
from tests.integration.conftest import create_topic

pytestmark = pytest.mark.integration

TEN_MINUTES_MS = 600_000


async def test_the_records_of_other_senders_in_a_batch_taken_from_are_written(
    kafka: EmbeddedKafka,
) -> None:
    """One partition's batch, held for the linger, holds an executor's hand-back, the
    ledger's command and another hand-back; the ledger takes its command back. The two
    hand-backs are written, in their order, and acknowledged; the command is not. The
    producer keeps writing the partition after them (its numbering has no gap: the broker
    would refuse a later record out of sequence)."""
    topic = f"withdraw-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka.bootstrap, topic, partitions=1)
    producer = IdempotentProducer(bootstrap_servers=kafka.bootstrap, linger_ms=TEN_MINUTES_MS)
    await producer.start()
    try:
        faust_like = types.SimpleNamespace(_producer=producer)
        first = await producer.send(topic, b"handed back 1", key=b"a", partition=0)
        ledgers = await producer.send(topic, b"the ledger's command", key=b"b", partition=0)
        second = await producer.send(topic, b"handed back 2", key=b"c", partition=0)
        assert not any(d.done() for d in (first, ledgers, second))  # one batch, lingering

        assert withdraw(faust_like, [ledgers]) == 1
        assert isinstance(ledgers.exception(), Withdrawn)
        sent = sending_now(faust_like)
        assert sent is not None
        await asyncio.wait_for(sent, timeout=60)
        assert [first.result().offset, second.result().offset] == [0, 1]
        later = await producer.send(topic, b"later", key=b"d", partition=0)
        sent = sending_now(faust_like)
        assert sent is not None
        await asyncio.wait_for(sent, timeout=60)
        assert later.result().offset == 2
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        for _ in range(30):  # each up to a second: the records are there, acknowledged
            if len(records) >= 3:
                break
            records += (await consumer.getmany(tp, timeout_ms=1000)).get(tp) or []
    finally:
        await consumer.stop()
    assert [(r.offset, r.key, r.value) for r in records] == [
        (0, b"a", b"handed back 1"),
        (1, b"c", b"handed back 2"),
        (2, b"d", b"later"),
    ]

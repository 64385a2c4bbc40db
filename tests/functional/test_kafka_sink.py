"""The ingress's Kafka sink once its producer has had a record refused.

aiokafka's idempotent producer fails a record whose partition has had no leader for its
request timeout (a single broker stopped with a controlled shutdown) without sending it, but
keeps the sequence number it gave the record: from then on the broker answers every record
of that producer for the partition ``OutOfOrderSequenceNumber``, for good. Seen on a real
broker stopped for 40 s under traffic: once it was back, every webhook was answered 503 until
the ingress was restarted, while its /readyz said ready. The sink replaces such a producer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import LeaderNotAvailableError, OutOfOrderSequenceNumber

import streams.ingress as ingress
from streams.errors import BrokerUnavailable
from streams.ingress import KafkaSink


class PoisonedProducer:
    """aiokafka's producer as the broker sees it: its first record expires unsent
    (no leader), and every later one is out of sequence, for as long as it lives."""

    made: list[PoisonedProducer] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sent: list[bytes] = []
        self.poisoned = False
        self.stopped = False
        PoisonedProducer.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(PoisonedProducer.made) == 1 and not self.poisoned and not self.sent:
            self.poisoned = True  # the first record of the first producer: expired unsent
            delivery.set_exception(LeaderNotAvailableError())
        elif self.poisoned:
            delivery.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent.append(value)
            delivery.set_result(None)
        return delivery


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> list[PoisonedProducer]:
    PoisonedProducer.made = []
    monkeypatch.setattr(ingress, "AIOKafkaProducer", PoisonedProducer)
    return PoisonedProducer.made


async def test_a_producer_whose_record_was_refused_is_replaced(
    poisoned: list[PoisonedProducer],
) -> None:
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(BrokerUnavailable, match="LeaderNotAvailableError"):
        await sink.send("t-requests", b"person", b"first")  # expired: nothing was written
    # Kafka is back: the next webhook is written, not refused for good
    await sink.send("t-requests", b"person", b"second")
    await sink.send("t-requests", b"person", b"third")
    assert len(poisoned) == 2
    assert poisoned[1].sent == [b"second", b"third"]
    await sink.close()
    assert all(producer.stopped for producer in poisoned)

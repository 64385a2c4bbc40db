"""The ingress's Kafka sink once its producer has had a record given up or refused.

aiokafka's idempotent producer fails a record whose partition has had no leader for its
request timeout (a single broker stopped with a controlled shutdown, or killed) with
LeaderNotAvailableError, whether or not an earlier try had reached the broker, and keeps the
sequence number it gave the record: from then on the broker answers every record of that
producer for the partition ``OutOfOrderSequenceNumber``, for good. Seen on a real broker stopped
for 40 s under traffic: once it was back, every webhook was answered 503 until the ingress was
restarted, while its /readyz said ready. The sink replaces such a producer, and sends such a
record again rather than answer 503 for what may be written.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, LeaderNotAvailableError, OutOfOrderSequenceNumber

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


async def test_a_record_given_up_for_want_of_a_leader_is_sent_again_on_a_new_producer(
    poisoned: list[PoisonedProducer],
) -> None:
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    # given up by the first producer, perhaps written: not a 503, sent again until Kafka has it
    await sink.send("t-requests", b"person", b"first")
    await sink.send("t-requests", b"person", b"second")  # Kafka is back: written, not refused
    await sink.send("t-requests", b"person", b"third")
    assert len(poisoned) == 2
    assert poisoned[1].sent == [b"first", b"second", b"third"]
    await sink.close()
    assert all(producer.stopped for producer in poisoned)


async def test_a_record_refused_is_a_503_and_its_producer_replaced(
    poisoned: list[PoisonedProducer],
) -> None:
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink.send("t-requests", b"person", b"first")
    poisoned[1].poisoned = True  # this producer's numbering is spent: the broker refuses
    with pytest.raises(BrokerUnavailable, match="OutOfOrderSequenceNumber"):
        await sink.send("t-requests", b"person", b"refused")
    await sink.send("t-requests", b"person", b"after")
    assert [p.sent for p in poisoned] == [[], [b"first"], [b"after"]]
    await sink.close()


class Unreachable(PoisonedProducer):
    """After the first producer, Kafka cannot be reached until ``reachable`` is set."""

    reachable: asyncio.Event
    tried_again: asyncio.Event  # a third producer tried to start: the record is being re-sent

    async def start(self) -> None:
        if len(PoisonedProducer.made) >= 3:
            Unreachable.tried_again.set()
        if len(PoisonedProducer.made) > 1 and not Unreachable.reachable.is_set():
            raise KafkaConnectionError("Connect call failed")


async def test_a_record_in_doubt_waits_for_kafka_and_new_records_are_refused_meanwhile(
    monkeypatch: pytest.MonkeyPatch, poisoned: list[PoisonedProducer]
) -> None:
    Unreachable.reachable, Unreachable.tried_again = asyncio.Event(), asyncio.Event()
    monkeypatch.setattr(ingress, "AIOKafkaProducer", Unreachable)
    monkeypatch.setattr(ingress, "RESEND_PAUSE_S", 0.01)
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"}, stall_seconds=0.0)
    in_doubt = asyncio.ensure_future(sink.send("t-requests", b"person", b"first"))
    await asyncio.wait_for(Unreachable.tried_again.wait(), 5)

    assert not in_doubt.done()
    with pytest.raises(BrokerUnavailable, match="Kafka unavailable"):
        await sink.send("t-requests", b"other", b"new")  # not handed over: nothing written
    Unreachable.reachable.set()
    await asyncio.wait_for(in_doubt, 5)
    assert [p.sent for p in poisoned if p.sent] == [[b"first"]]
    await sink.close()

"""Clients while their broker is down: reconnects spaced out, and back soon after the broker.

aiokafka connects again at every try of every retry loop (100 ms apart at most): while a
broker was down a worker made about 115 connection attempts a second, an ingress holding a
webhook about 20, each an ERROR line (``streams.kafka_reconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
import uuid

import pytest

from streams.dev.kafka import EmbeddedKafka
from streams.kafka_options import IdempotentProducer, group_consumer, sending_now, stop_consumer
from streams.kafka_reconnect import JITTER, MAX_SECONDS
from tests.integration.conftest import create_topic

pytestmark = pytest.mark.integration

# how long the outage's connection attempts are counted (a rate over a window: not a wait for
# something to happen)
WINDOW_SECONDS = 6.0
TEN_MINUTES_MS = 600_000


async def test_clients_space_out_reconnects_while_the_broker_is_down_and_are_back_soon(
    own_broker: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """An ingress-like producer holding a record and a group consumer waiting for one, both
    trying the broker while it is down: a few connection attempts a second between them (each
    an aiokafka ERROR), not dozens; and once the broker is back, the record held is written and
    read within a second or two, as before."""
    topic = f"down-{uuid.uuid4().hex[:8]}"
    await create_topic(own_broker.bootstrap, topic, partitions=1)
    options = {"bootstrap_servers": own_broker.bootstrap}
    # a long request timeout: the record is held through the outage, not given up; and a long
    # linger, so that it is handed over before the outage (a send waits for the topic's
    # metadata, which a refresh during the broker's controlled shutdown can leave out)
    producer = IdempotentProducer(**options, linger_ms=TEN_MINUTES_MS, request_timeout_ms=120_000)
    held = types.SimpleNamespace(_producer=producer)  # as faust holds it
    consumer = group_consumer(options, f"down-{topic}", "reader")
    await producer.start()
    consumer.subscribe([topic])
    await consumer.start()
    try:
        before = await producer.send(topic, b"before")
        await asyncio.wait_for(sending_now(held), 60)
        assert before.result().offset == 0
        first = await asyncio.wait_for(consumer.getone(), 60)
        assert first.value == b"before"
        delivery = await producer.send(topic, b"during")  # lingers

        await asyncio.to_thread(own_broker.stop)
        caplog.set_level(logging.ERROR, logger="aiokafka")
        caplog.clear()
        sending_now(held)  # the record held goes now: it waits for the broker
        reading = asyncio.ensure_future(consumer.getone())
        await asyncio.sleep(WINDOW_SECONDS)
        attempts = sum("Unable connect to node" in r.getMessage() for r in caplog.records)
        # about 50 a second before (the producer's 20, the consumer's 30); now each client
        # tries once a second or so once its back-off reached MAX_SECONDS
        assert attempts <= 2 * (WINDOW_SECONDS / (MAX_SECONDS * (1 - JITTER)) + 6), attempts
        assert not delivery.done()

        await asyncio.to_thread(own_broker.start, timeout=120)
        back = time.monotonic()
        written = await asyncio.wait_for(delivery, 60)
        took = time.monotonic() - back
        assert written.offset == 1
        # the back-off costs a broker's return at most MAX_SECONDS (and its jitter): a bound
        # for a back-off that never ends or is not reset by a connection, not a speed (the
        # cap itself: tests/unit/test_kafka_reconnect.py); CI machines are shared and slow
        assert took < MAX_SECONDS * (1 + JITTER) + 10.0, f"written {took:.1f}s after the return"
        read = await asyncio.wait_for(reading, 60)
        assert read.value == b"during"
    finally:
        # a failure above may leave the broker down, and the record held: a producer's stop
        # waits for what it holds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), 15)
        await stop_consumer(consumer)

"""A record is written within a metadata round trip of being sent, not after the producer's
request timeout, however the producer came to know its topic (on the real broker).

aiokafka asks the broker for the partitions of the topics it *tracks*; a topic is tracked once
a send finds it missing from the producer's metadata. A started producer whose first
InitProducerId was answered "coordinator loading" (a broker's first producer: an ingress
started with its topics) retried after a metadata update that, nothing tracked yet, asked for
every topic; the ingress then tracked the ledger's changelog (``KafkaSink``), and its first
webhooks found [requests] in that answer, so it was never tracked: the next answer (for the
changelog alone) dropped it, the sender found no leader for the records it held and asked the
broker again and again, never for [requests], until they expired after the request timeout
(10 s; the worker's, 20 minutes). The ingress sent them again then (``IN_DOUBT``), answered
them 202 ten seconds late, and those that arrived meanwhile 503 "Kafka is not acknowledging".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from streams.kafka_options import IdempotentProducer
from streams.settings import Settings
from tests.integration.conftest import System, create_topic
from tests.support import seed_params

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 10.0  # the ingress's (KafkaSink's default)
LINGER_S = 1.0  # holds the record in the producer while the broker answers for the changelog
ROUND_TRIPS_S = 1.0  # metadata requests and the produce request, on a loaded machine


def test_a_record_for_a_topic_known_from_an_answer_for_every_topic_is_written_at_once(
    kafka,
) -> None:
    requests, changelog = (f"meta-{uuid.uuid4().hex[:8]}-{name}" for name in ("req", "log"))

    async def scenario() -> tuple[float, bool]:
        await create_topic(kafka.bootstrap, requests, 4)
        await create_topic(kafka.bootstrap, changelog, 4)
        producer = IdempotentProducer(
            bootstrap_servers=kafka.bootstrap,
            linger_ms=int(LINGER_S * 1000),
            request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000),
        )
        await producer.start()
        try:
            client = producer.client
            # what the sender asks when its InitProducerId is answered "coordinator loading"
            # and no topic is tracked yet: every topic's partitions
            await client.force_metadata_update()
            assert client.cluster.partitions_for_topic(requests)
            tracked = client.add_topic(changelog)  # as the ingress's KafkaSink does
            started = time.monotonic()
            delivery = await producer.send(requests, value=b"{}", key=b"site:ada@example.com")
            await tracked  # the broker's answer for the tracked topics has landed
            lingering = not delivery.done()  # meanwhile the record waited in the producer
            await asyncio.wait_for(delivery, REQUEST_TIMEOUT_S + 5)
            return time.monotonic() - started, lingering
        finally:
            await producer.stop()

    took, lingering = asyncio.run(scenario())
    assert lingering  # the case above, not a record sent before the answer landed
    # its linger and a few round trips, not the request timeout (then a resend)
    assert took < LINGER_S + ROUND_TRIPS_S < REQUEST_TIMEOUT_S / 2, took


def test_a_fresh_ingress_writes_its_first_webhooks_at_once(own_broker, tmp_path) -> None:
    """A broker's first producer, the ingress's, started with the topics it has just created
    (the worker's too), and webhooks at once, without waiting for its /readyz: each answered
    202 before any could be held past the stall (whereupon the ingress answers 503 "Kafka is
    not acknowledging"). Before, the first ones waited 10 s in about half the runs (the race
    above, which a fresh broker's first InitProducerId sets up)."""
    system = System(own_broker, tmp_path).start(ready=False)
    stall = Settings().kafka_stall_seconds

    def post(i: int) -> tuple[int, float]:
        started = time.monotonic()
        status, _ = system.post(seed_params(f"first{i}@example.com"))
        return status, time.monotonic() - started

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
    finally:
        system.stop()
    assert [status for status, _ in answers] == [202] * 8
    assert max(took for _, took in answers) < stall < REQUEST_TIMEOUT_S, answers

"""The worker's producer lingers to batch records, and the ledger does not wait it out: a batch
it decided, and its table's changelog writes, are sent at once
(``streams.kafka_options.sending_now``), on the real broker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import types
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from models.events import GenerationAttemptSucceeded
from streams.codecs import decode_requests
from streams.dev.kafka import EmbeddedKafka
from streams.kafka_options import sending_now
from tests.integration.conftest import create_topic, http, read_topic, samples
from tests.support import free_port, seed_params, wait_until

pytestmark = pytest.mark.integration

TEN_MINUTES_MS = 600_000
A_MINUTE_MS = 60_000  # the longest linger the settings allow


async def test_what_lingers_is_sent_and_acknowledged_at_once(kafka: EmbeddedKafka) -> None:
    topic = f"linger-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka.bootstrap, topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=TEN_MINUTES_MS)
    await producer.start()
    try:
        deliveries = [
            await producer.send(topic, b"held back", partition=partition) for partition in (0, 1)
        ]
        assert not any(d.done() for d in deliveries)  # held for its ten minutes
        faust_like = types.SimpleNamespace(_producer=producer)
        sent = sending_now(faust_like)
        assert sent is not None
        # the batch stays open: a record that follows joins it, rather than waiting for it to
        # leave and then lingering its ten minutes in a batch of its own
        follows = await producer.send(topic, b"follows", partition=0)
        await asyncio.wait_for(sent, timeout=60)
        assert [d.result().offset for d in deliveries] == [0, 0]
        assert follows.done() and follows.result().offset == 1
    finally:
        await producer.stop()


def test_a_producer_that_is_not_aiokafkas_is_left_to_its_linger() -> None:
    assert sending_now(object()) is None
    assert sending_now(types.SimpleNamespace(_producer=None)) is None


def test_the_ledger_sends_its_commands_without_waiting_out_the_linger(make_system) -> None:
    # a minute of linger: only the ledger's own sending gets the command to the generator sooner
    system = make_system(producer_linger_ms=str(A_MINUTE_MS))
    # ready first, so that the 45 s below are the pipeline's alone, not the worker's start
    system.wait_ready()
    status, body = system.post(seed_params("linger@example.com"))
    assert status == 202, body
    # this deployment's only request: its call is the stand-in's first
    wait_until(lambda: system.openai("GET", "/_calls") or None, 45, what="the generator's call")
    # the ledger marks a batch once Kafka took its changelog writes, which go without the
    # linger too (``streams.faust_transport.Topic.publish_message``): held for it, the
    # ledger's next batch waited that long
    status, body = system.post(seed_params("linger-next@example.com"))
    assert status == 202, body
    wait_until(
        lambda: len(system.openai("GET", "/_calls")) >= 2 or None,
        45,
        what="the next webhook's call",
    )


@pytest.mark.parametrize("executors", ["worker", "process"])
def test_a_stopping_worker_sends_at_once_what_it_held_back(
    make_system, kafka: EmbeddedKafka, executors: str
) -> None:
    """(``EXECUTORS=process``: the executors' child, stopped with the worker, sends what its
    own producer held back at once too.)"""
    # a minute of linger: the generator's result waits in the producer after its call answers
    port = free_port()  # where the calls are counted: the worker's, or its executors' child's
    system = make_system(
        producer_linger_ms=str(A_MINUTE_MS), executors=executors, executors_http_port=str(port)
    )
    system.wait_ready()
    status, body = system.post(seed_params("stopping@example.com"))
    assert status == 202, body
    request_id = body["request_id"]
    counted = system.worker_url() if executors == "worker" else f"http://127.0.0.1:{port}"
    wait_until(lambda: _answered_calls(counted) or None, 45, what="the generator's answered call")

    worker = system.procs["worker"]
    worker.send_signal(signal.SIGTERM)
    # a stop that waited out the linger would be killed here, its result unsent
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0, system.log("worker")[-3000:]
    results = [
        decode_requests(value)
        for _, _, _, value in read_topic(kafka.bootstrap, f"{system.app_id}-requests")
    ]
    assert any(
        isinstance(r, GenerationAttemptSucceeded) and r.request_id == request_id for r in results
    ), results


def _answered_calls(url: str) -> float:
    """``talkstream_upstream_calls_total`` answered by OpenAI, from the /metrics at ``url``."""
    try:
        status, text = http("GET", f"{url}/metrics")
    except OSError:  # not serving yet (the executors' child starting)
        return 0
    answered = {"upstream": "openai", "outcome": "answered"}
    return sum(
        sample.value
        for sample in samples(text if status == 200 else "", "talkstream_upstream_calls_total")
        if sample.labels == answered
    )

"""Clients while their broker is down: reconnects spaced out, and back soon after the broker;
and a worker stopped while it is down.

aiokafka connects again at every try of every retry loop (100 ms apart at most): while a
broker was down a worker made about 115 connection attempts a second, an ingress holding a
webhook about 20, each an ERROR line (``streams.kafka_reconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
import types
import uuid

import pytest

from streams.dev.kafka import EmbeddedKafka
from streams.faust_transport import KAFKA_STOP_SECONDS
from streams.kafka_options import IdempotentProducer, group_consumer, sending_now, stop_consumer
from streams.kafka_reconnect import JITTER, MAX_SECONDS
from streams.settings import Settings
from tests.integration.conftest import System, create_topic, samples
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration

# how long the outage's connection attempts are counted (a rate over a window: not a wait for
# something to happen)
WINDOW_SECONDS = 6.0
TEN_MINUTES_MS = 600_000


async def test_clients_space_out_reconnects_while_the_broker_is_down_and_are_back_soon(
    module_broker: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """An ingress-like producer holding a record and a group consumer waiting for one, both
    trying the broker while it is down: a few connection attempts a second between them (each
    an aiokafka ERROR), not dozens; and once the broker is back, the record held is written and
    read within a second or two, as before."""
    topic = f"down-{uuid.uuid4().hex[:8]}"
    await create_topic(module_broker.bootstrap, topic, partitions=1)
    options = {"bootstrap_servers": module_broker.bootstrap}
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

        await asyncio.to_thread(module_broker.stop)
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

        await asyncio.to_thread(module_broker.start, timeout=120)
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


async def test_a_consumer_stopped_while_its_broker_is_down_closes_in_full(
    module_broker: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's ``stop()`` re-raises the cancellation of a fetch caught sleeping its retry
    back-off after a failed request (aio-libs/aiokafka#647) and leaves the rest of its close
    undone. faust's consumer thread ended so, unnoticed, and faust waited 60 s for it at every
    stop during an outage; ``stop_consumer`` (which the worker's consumer thread now uses)
    swallows that one cancellation and finishes the close."""
    topic = f"down-{uuid.uuid4().hex[:8]}"
    await create_topic(module_broker.bootstrap, topic, partitions=1)
    consumer = group_consumer({"bootstrap_servers": module_broker.bootstrap}, f"g-{topic}", "r")
    consumer.subscribe([topic])
    await consumer.start()
    fetcher = consumer._fetcher
    stopping: asyncio.Future[int | None] | None = None
    try:
        # joined and fetching: a fetch in flight for its partition (a getmany's own timeout can
        # return before the group is joined on a loaded host, and a consumer with no partition
        # fetches nothing; nor does one holding a record not yet taken), once its position is
        # known (the fetcher's requests in flight are its asks for offsets too, whose failures
        # sleep their back-off where a close catches it)
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer did not join"
            await asyncio.sleep(0.005)
        [partition] = consumer.assignment()
        await asyncio.wait_for(consumer.position(partition), 60)
        while not fetcher._in_flight:
            assert time.monotonic() < deadline, "the consumer did not fetch"
            await asyncio.sleep(0.005)
        caplog.set_level(logging.ERROR, logger="aiokafka.consumer.fetcher")
        caplog.clear()
        # watched while the broker is killed: its fetch fails as its connection is reset, and
        # sleeps its back-off only 100 ms
        stopping = asyncio.ensure_future(asyncio.to_thread(module_broker.kill))

        def failed_fetch_asleep() -> bool:
            # a fetch that failed logs it, then sleeps aiokafka's retry back-off (100 ms)
            return any("Failed fetch messages" in r.getMessage() for r in caplog.records)

        deadline = time.monotonic() + 60
        while not failed_fetch_asleep():
            assert time.monotonic() < deadline, "no fetch failed with the broker down"
            await asyncio.sleep(0.005)
        assert fetcher._pending_tasks, "the failed fetch is not pending"

        await stop_consumer(consumer)  # raised CancelledError, its client left open
        assert all(task.done() for task in fetcher._pending_tasks)
        assert consumer._client._sync_task is None  # the client closed: no metadata refresh
    finally:
        await stop_consumer(consumer)
        if stopping is not None:
            await stopping


# a stop with Kafka down: the drain, the wait for Kafka, and faust's own shutdown (~14 s
# measured); a bound on a hang, not a speed: before, such a stop waited for what the producer
# held (its request timeout, 20 minutes), for commits (for as long as Kafka was down) and 60 s
# for faust's consumer thread
STOP_BOUND_SECONDS = 45.0


@pytest.mark.parametrize(
    "outage, executors",
    [("stopped", "process"), ("hung", "process"), ("stopped", "worker")],
    ids=["stopped", "hung", "stopped-executors-in-worker"],
)
def test_a_worker_stopped_while_kafka_is_down_ends_in_bounded_time_and_loses_nothing(
    outage: str, executors: str, module_broker: EmbeddedKafka, tmp_path
) -> None:
    """Calls run when the broker stops (or hangs: SIGSTOP, its connections open and nothing
    answered) and past the drain, so the records telling them lost wait in the worker's
    producer (its queued commands are not handed back: the commit that must come first is not
    made; their last mark names them, and the next run tells them lost); the worker told to stop
    (SIGTERM: a deploy, systemd, Kubernetes) then ends within the drain, the wait for Kafka and
    a few seconds, saying what it stopped without. Started again with the broker back, every
    webhook accepted ends published: what Kafka never acknowledged was not taken as done (the
    results not reported are told lost, and called again). (Hung, the stop also waited for
    the ledger reading a batch back, and for the producer's requests in flight.) The stop
    logs no asyncio "never retrieved" ERROR for what it gave up on."""
    drain = Settings.model_fields["stop_drain_seconds"].default
    pid = module_broker.status().pid
    assert pid is not None
    system = System(module_broker, tmp_path, executors=executors)
    system.start()
    try:
        system.wait_ready()
        # one webhook through first: the worker's producer knows [requests]'s partitions (a
        # send to a topic it has no metadata of waits for Kafka before the producer holds it)
        status, answer = system.post(seed_params("first@example.com", content="first"))
        assert status == 202, answer
        system.wait_terminal([answer["request_id"]], timeout=60)
        # calls still running when the broker has stopped (its graceful stop takes seconds)
        # and past the drain: cut short, told lost into a producer Kafka no longer answers
        system.openai("POST", "/_control", {"latency_seconds": 30})
        accepted = []
        for i in range(20):
            status, answer = system.post(seed_params(f"stop{i}@example.com", content=f"stop {i}"))
            assert status == 202, answer
            accepted.append(answer["request_id"])
        wait_until(
            lambda: system.openai("GET", "/_stats")["in_flight"] >= 4, 60, what="calls running"
        )

        def all_taken() -> bool:
            # every command taken, its commit made (running or queued in the generator): one
            # still being taken when the broker stopped held the stop in its commit, and the
            # stop gave up on Kafka holding no record (the calls' marks tell them lost later)
            metrics = system.executors_metrics()
            held = sum(
                sample.value
                for name in ("talkstream_upstream_in_flight", "talkstream_upstream_queue_depth")
                for sample in samples(metrics, name)
                if sample.labels["upstream"] == "openai"
            )
            return held == len(accepted)

        wait_until(all_taken, 60, what="every command in the generator")

        if outage == "stopped":
            assert module_broker.stop()
        else:
            os.kill(pid, signal.SIGSTOP)
        worker = system.procs.pop("worker")
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = worker.wait(timeout=STOP_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            raise AssertionError(
                f"the worker was still stopping {STOP_BOUND_SECONDS:.0f}s after SIGTERM with "
                f"Kafka down:\n{system.log('worker')}"
            ) from None
        took = time.monotonic() - signalled
        assert code == 0, system.log("worker")
        log = (tmp_path / "worker.log").read_text(errors="replace")
        # it said what it stopped without: the calls' results Kafka never acknowledged
        said = [line for line in log.splitlines() if "stopping without Kafka" in line]
        by = {who: [line for line in said if f"the {who} ends with" in line]
              for who in ("worker", "executors process")}  # fmt: skip
        if system.executors_mode == "process":
            # the worker's executors child, which holds the calls' results, says its own
            # (README, EXECUTORS), beside the worker's when the worker held anything itself
            # (its ledger's writes or offsets of the last batch it decided, as the broker
            # stopped: with every command taken by the child first, as a rule none)
            assert len(by["executors process"]) == 1 and len(by["worker"]) <= 1, said
            assert len(said) == len(by["worker"]) + 1, said
            results = by["executors process"][0]
        else:
            assert len(said) == 1 and by["worker"] == said, said
            results = said[0]
        assert "records it held unacknowledged (" in results, said
        # counted there, and not said again by each sender of a record given up on
        again = [line for line in log.splitlines() if "could not report" in line]
        assert not [line for line in again if " ERROR " in line], again
        # nor by asyncio, as a failed future or task of the stop that nobody read (a record
        # given up on, a commit unanswered): an ERROR with a traceback, and nothing to act on
        unread = [line for line in log.splitlines() if "never retrieved" in line]
        assert not unread, log
        assert took > drain + KAFKA_STOP_SECONDS - 1, f"gave up on Kafka after {took:.1f}s"

        if outage == "stopped":
            module_broker.start(timeout=120)
        else:
            os.kill(pid, signal.SIGCONT)
        system.openai("POST", "/_control", {"latency_seconds": 0.05})  # called again: quick
        system.start_worker()
        rows = system.wait_terminal(accepted, timeout=180)
        assert {rid: row.state for rid, row in rows.items()} == dict.fromkeys(accepted, "published")
    finally:
        if outage == "hung":
            os.kill(pid, signal.SIGCONT)  # (again: a failure above may have left it stopped)
        system.stop()

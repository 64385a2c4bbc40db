"""The worker writes again once Kafka is back from an outage longer than its producer's
request timeout.

aiokafka's idempotent producer fails a batch whose partition has had no leader for
``request_timeout_ms`` (a single broker stopped: its controlled shutdown publishes leader -1)
without sending it, but the sequence number it gave the batch stays spent: the broker then
answers every later record of that producer id for the partition ``OutOfOrderSequenceNumber``,
and aiokafka never takes a new producer id. The worker's producer (faust's request timeout,
``PRODUCER_REQUEST_TIMEOUT``, 1200 s by default; 10 s here) wrote nothing more to such a
partition until the worker restarted: a result lost in the outage was re-issued by its deadline
into that partition, refused, and the request never ended.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from streams.dev.kafka import EmbeddedKafka
from tests.integration.conftest import System
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration


def test_the_worker_writes_again_after_an_outage_longer_than_its_producer_timeout(
    own_broker: EmbeddedKafka, tmp_path
) -> None:
    """Webhooks flow while the broker stops (a controlled shutdown, as `talkstream kafka
    stop`): the worker's sends in its last moments learn that the partitions have no leader,
    and those it sends then expire unsent after the producer's request timeout. Once the
    broker is back, every webhook accepted before, during (none: 503) and after the outage
    ends published: what was lost is re-issued by its deadline, into the same partitions."""
    system = System(
        own_broker,
        tmp_path,
        generation_deadline_seconds="20",  # lost work is re-issued soon after Kafka is back
        publish_deadline_seconds="20",
        max_wait_seconds="60",  # the outage is no reason to give up on a queued call
    )
    system.env["PRODUCER_REQUEST_TIMEOUT"] = "10"  # faust's setting: the outage outlasts it
    # and the producer looks at the partitions' leaders often (faust's setting, 5 minutes by
    # default), so it learns of the shutdown's "no leader" before the broker is gone, as a
    # producer under load does from the broker's answers
    system.env["PRODUCER_METADATA_MAX_AGE_MS"] = "100"
    system.start()
    answers: list[tuple[str, int | None]] = []
    stop = threading.Event()

    def traffic(client: int) -> None:
        i = 0
        while not stop.is_set():
            body = seed_params(f"outage{client}-{i % 40}@example.com", content=f"outage {i}")
            i += 1
            try:
                status, answer = system.post(body, timeout=20)
            except OSError:
                status, answer = None, None
            rid = answer.get("request_id") if isinstance(answer, dict) else None
            answers.append((rid or "", status))
            stop.wait(0.05)

    threads = [threading.Thread(target=traffic, args=(n,)) for n in range(2)]
    try:
        system.wait_ready()
        system.openai("POST", "/_control", {"latency_seconds": 0.5})  # calls end all the time
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(s == 202 for _, s in answers) >= 30, 60, what="steady 202s")
        assert own_broker.stop()  # SIGTERM: a controlled shutdown
        wait_until(
            lambda: "LeaderNotAvailableError" in (tmp_path / "worker.log").read_text(),
            90,
            what="the worker's records given up on unsent (no leader)",
        )
        own_broker.start(timeout=120)
        wait_until(lambda: [s for _, s in answers[-10:]].count(202) == 10, 120, what="202s")
        after = len(answers)
        wait_until(lambda: sum(s == 202 for _, s in answers[after:]) >= 30, 60, what="more")
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        accepted = sorted({rid for rid, status in answers if status == 202})
        rows = system.wait_terminal(accepted, timeout=180)
        assert {row.state for row in rows.values()} == {"published"}
        log = (tmp_path / "worker.log").read_text()
        print(
            f"\n{len(accepted)} webhooks accepted around the outage, all published; worker log: "
            f"{log.count('LeaderNotAvailableError')} LeaderNotAvailableError, "
            f"{log.count('OutOfOrderSequenceNumber')} OutOfOrderSequenceNumber, "
            f"{log.count('takes a new producer id')} new producer ids"
        )
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=60)
        system.stop()


def test_the_ingress_stops_while_kafka_is_down(own_broker: EmbeddedKafka, tmp_path) -> None:
    """A stop (SIGTERM) while Kafka is down once hung for good: webhooks in progress waited
    for Kafka (a record given up for want of a leader is sent again until Kafka has it), and
    the producer's stop waited for what it held, under a producer id it could not get (one is
    dropped after any failed delivery). Now the
    stop waits ``SHUTDOWN_SECONDS`` for webhooks in progress, closes their connections
    unanswered, and gives Kafka the sink's timeout more: the process ends, and no webhook of
    the outage was answered 2xx (their senders retry; none was promised anything)."""
    system = System(own_broker, tmp_path)
    system.start()
    answers: list[tuple[float, int | None]] = []
    stop = threading.Event()

    def traffic(client: int) -> None:
        i = 0
        while not stop.is_set():
            body = seed_params(f"stop{client}-{i % 20}@example.com", content=f"stop {i}")
            i += 1
            try:
                status, _ = system.post(body, timeout=120)
            except OSError:  # the connection closed unanswered
                status = None
            answers.append((time.monotonic(), status))
            stop.wait(0.05)

    threads = [threading.Thread(target=traffic, args=(n,)) for n in range(2)]
    try:
        system.wait_ready()
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(s == 202 for _, s in answers) >= 10, 60, what="steady 202s")
        assert own_broker.stop()
        stopped = time.monotonic()
        log = tmp_path / "ingress.log"
        # a delivery failed (given up for want of a leader, or timed out): the producer drops
        # its id, and what it holds waits for a new one, which only Kafka can give
        wait_until(
            lambda: "takes a new producer id" in log.read_text(), 90, what="a delivery failed"
        )
        stop.set()
        ingress = system.procs.pop("ingress")
        ingress.send_signal(signal.SIGTERM)
        assert ingress.wait(timeout=90) == 0  # it hung here, for as long as Kafka was down
        for thread in threads:
            thread.join(timeout=150)
        late = [status for at, status in answers if at > stopped + 1]
        assert 202 not in late, late
        assert "stopped before Kafka acknowledged every record" in log.read_text()
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=150)
        system.stop()

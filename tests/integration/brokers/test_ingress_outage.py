"""The ingress stops while Kafka is down, having given records up for want of a leader.

A stop (SIGTERM) while Kafka was down once hung for good: webhooks in progress waited for
Kafka (a record given up for want of a leader is sent again until Kafka has it), and the
producer's stop waited for what it held, under a producer id it could not get (one is dropped
after any failed delivery).

That needs the ingress's producer to know that partitions of [requests] have no leader, and
one broker cannot tell it so: a single broker's controlled shutdown publishes "no leader" for
about 70 ms before it stops answering, and a producer that did not ask then (aiokafka asks
every ``metadata_max_age_ms``, 5 minutes, or after a failed request) holds its records for the
broker, never giving them up. On one broker this took one to three outages (56 to 265 s).
Here three nodes (a KRaft quorum that outlives one of them), and [requests] with one replica:
the node stopped first leaves its partitions without a leader, which the others say to the
ingress's producer when its ``/readyz`` asks; then the others are killed, and Kafka is down.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from streams.dev.kafka_cluster import KafkaCluster
from streams.settings import Settings
from tests.integration.brokers.support import three_nodes
from tests.integration.conftest import System, Traffic, http
from tests.support import seed_params, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with three_nodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def test_the_ingress_stops_while_kafka_is_down(cluster: KafkaCluster, tmp_path) -> None:
    """The stop waits ``INGRESS_SHUTDOWN_SECONDS`` (1 s here) for webhooks in progress, closes
    their connections unanswered, and gives Kafka the sink's timeout (10 s) more: the process
    ends, sooner than with the setting's default, and no webhook of the outage was answered
    2xx (their senders retry; none was promised anything)."""
    # one replica (the setting's default): a node stopped leaves its partitions no leader
    system = System(cluster, tmp_path, ingress_shutdown_seconds="1")
    system.start()
    traffic = Traffic(
        system,
        lambda client, i: seed_params(f"stop{client}-{i % 20}@example.com", content=f"stop {i}"),
        timeout=120,
    )
    log = tmp_path / "ingress.log"

    def failed() -> int:
        return log.read_text().count("takes a new producer id")

    def ingress_status() -> str:
        _, body = http("GET", f"{system.ingress}/readyz", timeout=10)
        return str(body.get("status", ""))

    try:
        system.wait_ready()
        with traffic:
            wait_until(lambda: traffic.count(202) >= 10, 60, what="steady 202s")
            # the ingress alone is this test's: the worker stops while Kafka answers (with
            # Kafka down its stop waits for what its producer holds, past System.stop's 30 s)
            worker = system.procs.pop("worker")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
            first, *others = cluster.nodes
            assert first.stop()  # a controlled shutdown: its partitions' leader is -1 now
            # the nodes left say so to the ingress's producer (its /readyz asks its client)
            wait_until(
                lambda: "without a leader" in ingress_status() or None,
                60,
                what="the ingress's producer knowing partitions without a leader",
            )
            # and it holds webhooks for them: a send has waited the stall seconds (5)
            wait_until(
                lambda: ingress_status() == "Kafka is not acknowledging" or None,
                60,
                what="a webhook held for a partition without a leader",
            )
            before = failed()
            for node in others:  # Kafka is down: no producer id to be had from now on
                node.kill()
            down = time.monotonic()
            # what it holds is given up for want of a leader (its request timeout, 10 s, after
            # it was handed over; a record given up before the kill is sent again, and given up
            # again): the producer drops its id, and waits for a new one only Kafka can give
            wait_until(lambda: failed() > before or None, 60, what="a failed delivery")
            ingress = system.procs.pop("ingress")
            ingress.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert ingress.wait(timeout=90) == 0  # it hung here, for as long as Kafka was down
            took = time.monotonic() - signalled
            # the wait for webhooks in progress and then the sink's 10 s (it ends unacknowledged,
            # below): ~12 s with 1 s; at least 25 s with the default's wait (41.6 s measured
            # when aiohttp waited twice the setting: tests/functional/test_ingress_stop.py)
            default = Settings.model_fields["ingress_shutdown_seconds"].default
            assert took < default + 10, f"the stop took {took:.1f}s: the setting was not used"
        late = [a.status for a in traffic.answers if a.at > down + 1]
        assert 202 not in late, late
        assert "stopped before Kafka acknowledged every record" in log.read_text()
    finally:
        traffic.stop()
        system.stop()

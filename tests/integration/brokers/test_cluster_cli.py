"""``talkstream kafka start --nodes 3 | status | stop`` as a user runs them: three processes
with their own ports, data directories and logs, topics replicated three times with
``min.insync.replicas`` 2, and ``status`` naming each node and its pid."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.brokers.support import talkstream
from tests.integration.conftest import session_kafka_version
from tests.support import free_port_run, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


async def replication(bootstrap: str, topic: str) -> set[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {len(p["replicas"]) for p in described["partitions"]}


def cluster_env(data_dir: Path, base: int) -> dict[str, str]:
    """``talkstream``'s whole environment for a three-node cluster from port ``base`` on."""
    return {
        **os.environ,
        "TALKSTREAM_DATA_DIR": str(data_dir),
        "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{base}",
        "TALKSTREAM_KAFKA_VERSION": session_kafka_version(),
        "TALKSTREAM_APP_ID": "clustercli",
    }


def test_start_status_stop_a_three_node_cluster(tmp_path) -> None:
    base = free_port_run(6)
    env = cluster_env(tmp_path, base)
    try:
        started = talkstream(env, "kafka", "start", "--nodes", "3", timeout=240)
        print(f"\n{started}")
        assert started.code == 0, started
        bootstrap = ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3))
        assert f"TALKSTREAM_KAFKA_BOOTSTRAP={bootstrap}" in started.out
        assert "TALKSTREAM_REPLICATION_FACTOR=3" in started.out
        assert "TALKSTREAM_MIN_INSYNC_REPLICAS=2" in started.out
        # every node knows the topic (kafka start waited for it), with three replicas
        assert wait_until(
            lambda: asyncio.run(replication(bootstrap, "clustercli-requests")), 10
        ) == {3}

        status = talkstream(env, "kafka", "status")
        print(status)
        assert status.code == 0, status
        nodes = re.findall(r"node (\d): Kafka \S+ running at (\S+) \(pid (\d+)\)", status.out)
        assert [(n, at) for n, at, _ in nodes] == [
            (str(i + 1), f"127.0.0.1:{base + 2 * i}") for i in range(3)
        ]
        pids = {int(pid) for *_, pid in nodes}
        assert len(pids) == 3
        for i in range(3):  # own data directory and log each
            assert (tmp_path / "kafka-cluster" / f"node-{i + 1}" / "logs").is_dir()
            assert (tmp_path / "kafka-cluster" / f"node-{i + 1}" / "broker.log").is_file()
    finally:
        stopped = talkstream(env, "kafka", "stop", timeout=120)
    print(stopped)
    assert stopped.code == 0 and "stopped" in stopped.out, stopped
    after = talkstream(env, "kafka", "status")
    assert after.code == 3 and "not running" in after.out, after


def test_a_node_that_cannot_listen_ends_the_start_at_once_naming_it(tmp_path) -> None:
    """Node 2's controller port is taken after the launcher's check (a socket bound, not
    listening, as an outgoing connection holds its port): the start ends as soon as node 2's
    log or exit says so, naming the node and the port, and leaves no node running. It used to
    wait for node 1 to list three brokers until the timeout, then quote node 1's log."""
    base = free_port_run(6)
    env = cluster_env(tmp_path, base)
    taken = base + 3  # node 2's controller
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        started = talkstream(env, "kafka", "start", "--nodes", "3", timeout=300)
    print(f"\n{started}")
    assert started.code != 0, started
    assert "Kafka node 2 " in started.err, started
    assert f"127.0.0.1:{taken}" in started.err, started
    assert "did not answer" not in started.err, started
    after = talkstream(env, "kafka", "status")
    assert after.code == 3 and "not running" in after.out, after

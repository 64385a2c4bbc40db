"""``talkstream kafka start --nodes 3 | status | stop`` as a user runs them: three processes
with their own ports, data directories and logs, topics replicated three times with
``min.insync.replicas`` 2, and ``status`` naming each node and its pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.brokers.support import talkstream
from tests.integration.conftest import session_kafka_version
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise AssertionError(f"no {count} consecutive free ports")


async def replication(bootstrap: str, topic: str) -> set[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {len(p["replicas"]) for p in described["partitions"]}


def test_start_status_stop_a_three_node_cluster(tmp_path) -> None:
    base = free_port_run(6)
    env = {
        **os.environ,
        "TALKSTREAM_DATA_DIR": str(tmp_path),
        "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{base}",
        "TALKSTREAM_KAFKA_VERSION": session_kafka_version(),
        "TALKSTREAM_APP_ID": "clustercli",
    }
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

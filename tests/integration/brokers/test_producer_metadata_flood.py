"""A producer holding a record for a partition with no leader asks the brokers for metadata
``retry_backoff_ms`` apart, not without pause (``streams.kafka_reconnect.space_metadata_updates``).

aiokafka's sender forces a metadata update and looks again as soon as it is answered: an
answer that still names no leader came back at once, and one producer on localhost asked about
2,000 times a second for as long as the partition had none (a leader being elected, a partition
offline). Here three nodes, a topic with one replica: the node stopped (a controlled shutdown)
leaves its partitions without a leader, which the two left say in every answer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.dev.kafka_cluster import KafkaCluster
from streams.kafka_options import IdempotentProducer
from tests.integration.brokers.support import three_nodes
from tests.integration.conftest import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

RETRY_BACKOFF_S = 0.1  # aiokafka's default retry_backoff_ms
REQUESTS = 11  # counted after the send: ten gaps


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with three_nodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def test_a_record_waiting_for_a_leader_is_looked_for_retry_backoff_apart(
    cluster: KafkaCluster,
) -> None:
    topic = f"flood-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[float]:
        await create_topic(cluster.bootstrap, topic, 3)
        producer = IdempotentProducer(bootstrap_servers=cluster.bootstrap)
        await producer.start()
        client: Any = producer.client
        tp = TopicPartition(topic, 0)
        try:
            await client.add_topic(topic)
            leader = client.cluster.leader_for_partition(tp)
            assert leader in (1, 2, 3), leader
            assert await asyncio.to_thread(cluster.node(leader).stop)  # its partitions: no leader
            deadline = time.monotonic() + 60
            while client.cluster.leader_for_partition(tp) != -1:  # as the nodes left say
                assert time.monotonic() < deadline, client.cluster.leader_for_partition(tp)
                await client.force_metadata_update()
            asked: list[float] = []
            enough = asyncio.Event()
            update = client._metadata_update

            async def counted(*args: Any) -> Any:  # each is one MetadataRequest to a broker
                asked.append(asyncio.get_running_loop().time())
                if len(asked) >= REQUESTS:
                    enough.set()
                return await update(*args)

            client._metadata_update = counted
            await producer.send(topic, value=b"{}", partition=0)  # the sender looks for a leader
            await asyncio.wait_for(enough.wait(), 30)
            return asked
        finally:
            producer.give_up(KafkaTimeoutError("the test is over"))  # not waiting for a leader
            with contextlib.suppress(Exception):
                await producer.stop()

    asked = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(asked[:REQUESTS])]
    # aiokafka alone made these eleven requests within a few milliseconds
    assert min(gaps) >= RETRY_BACKOFF_S - 0.001, gaps
    assert asked[REQUESTS - 1] - asked[0] >= (REQUESTS - 1) * RETRY_BACKOFF_S - 0.001, gaps

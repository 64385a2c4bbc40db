"""A client's requests to a broker it cannot reach, several at once, as a consumer's fetcher,
coordinator and metadata refresh are: one connection attempt at the end of each pause of the
back-off (``streams.kafka_reconnect``), not one per request waiting. (The pauses themselves:
``tests/unit/test_kafka_reconnect.py``; a broker stopped and started again:
``tests/integration/test_broker_down.py``.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.protocol.metadata import MetadataResponse_v0

import streams.kafka_options  # noqa: F401  (installs the back-off on every aiokafka client)
from streams import kafka_reconnect
from streams.kafka_reconnect import BASE_SECONDS, JITTER
from tests.support import free_port

RETRY_BACKOFF_SECONDS = 0.1  # aiokafka's retry_backoff_ms: each request's retry loop


async def test_requests_waiting_for_one_pause_make_one_attempt_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()  # nothing listens: each attempt is refused at once
    client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{port}")
    client.cluster.update_metadata(MetadataResponse_v0([(1, "127.0.0.1", port)], []))
    # each attempt, when it begins (counted here, not by aiokafka's ERROR lines, which the
    # process logs once every 10 s: another test's of a moment ago left this one's out)
    tried: list[float] = []
    connect = kafka_reconnect._connect

    async def attempt(*args: Any, **kwargs: Any) -> Any:
        tried.append(time.monotonic())
        return await connect(*args, **kwargs)

    monkeypatch.setattr(kafka_reconnect, "_connect", attempt)
    try:
        assert await client._get_conn(1) is None  # the first failure: the back-off begins
        until = time.monotonic() + 2.5

        async def retrying(group: ConnectionGroup) -> None:
            while time.monotonic() < until:
                assert await client._get_conn(1, group=group) is None
                await asyncio.sleep(RETRY_BACKOFF_SECONDS)

        groups = [ConnectionGroup.DEFAULT, ConnectionGroup.DEFAULT, ConnectionGroup.COORDINATION]
        await asyncio.wait_for(asyncio.gather(*map(retrying, groups)), 30)
    finally:
        await client.close()

    assert len(tried) >= 4, tried  # the first three pauses (50 ms doubling) end within 0.5 s
    gaps = [b - a for a, b in itertools.pairwise(tried)]
    # each attempt waited out the pause the one before it started (the shortest is 50 ms
    # less its jitter); every request waiting tried at each pause's end, two or three at once
    assert min(gaps) >= BASE_SECONDS * (1 - JITTER) - 0.005, [round(g, 3) for g in gaps]

"""Our producers' forced metadata updates, ``retry_backoff_ms`` apart at the soonest
(``streams.kafka_reconnect.space_metadata_updates``): aiokafka's sender, holding a record for a
partition with no leader, forces an update and looks again as soon as it is answered; an answer
that still names no leader came back at once, and it asked about 2,000 times a second."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient

from streams.kafka_options import IdempotentProducer
from tests.support import free_port

RETRY_BACKOFF_SECONDS = 0.1  # aiokafka's default retry_backoff_ms
ROUNDS = 8


async def answering_at_once(
    monkeypatch: pytest.MonkeyPatch, busy: list[float] | None = None
) -> tuple[IdempotentProducer, list[float], list[float]]:
    """A producer whose client's metadata synchronizer runs (as after its start) and whose
    every metadata request is answered at once, still naming no leader; the loop's times at
    which each update was started (aiokafka's ``force_metadata_update`` called: what the spacing
    decides) and at which each request went (the synchronizer's next turn after its start: a
    loop iteration later, more on a busy host, so requests alone are not exactly spaced).
    ``busy``: seconds the loop is held right after each update's start, in turn (the host busy
    elsewhere: that update's request goes that much later)."""
    loop = asyncio.get_running_loop()
    started: list[float] = []
    force = AIOKafkaClient.force_metadata_update

    def forced(self: Any) -> Any:
        started.append(loop.time())
        update = force(self)
        if busy:
            time.sleep(busy.pop(0))
        return update

    monkeypatch.setattr(AIOKafkaClient, "force_metadata_update", forced)
    producer = IdempotentProducer(bootstrap_servers=f"127.0.0.1:{free_port()}")
    client: Any = producer.client
    asked: list[float] = []

    async def metadata_update(cluster: Any, topics: Any) -> bool:
        asked.append(loop.time())
        return True

    monkeypatch.setattr(client, "_metadata_update", metadata_update)
    client._sync_task = asyncio.create_task(client._md_synchronizer())
    return producer, started, asked


def spaced(started: list[float], asked: list[float]) -> None:
    """Updates started ``retry_backoff_ms`` apart at the soonest, each request after its start
    (so a request went that long after the update before it started, at the soonest)."""
    assert len(asked) == len(started), (started, asked)  # each update one request
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps, default=RETRY_BACKOFF_SECONDS) >= RETRY_BACKOFF_SECONDS - 0.001, gaps
    assert all(sent >= start for start, sent in zip(started, asked, strict=True)), (started, asked)


async def test_the_sender_asks_for_metadata_retry_backoff_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer, started, asked = await answering_at_once(monkeypatch)
    loop = asyncio.get_running_loop()
    try:
        began = loop.time()
        for _ in range(ROUNDS):  # aiokafka's sender while a partition has no known leader
            update = producer.client.force_metadata_update()
            done, _ = await asyncio.wait({update}, return_when=asyncio.FIRST_COMPLETED)
            assert [d.result() for d in done] == [True]
        took = loop.time() - began
    finally:
        await producer.client.close()
    assert len(asked) == ROUNDS, asked  # one request per round, not more
    assert started[0] - began < RETRY_BACKOFF_SECONDS / 2  # the first at once
    spaced(started, asked)
    assert took >= (ROUNDS - 1) * RETRY_BACKOFF_SECONDS - 0.001, took


async def test_callers_asking_meanwhile_share_the_next_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer, started, asked = await answering_at_once(monkeypatch)
    client = producer.client
    loop = asyncio.get_running_loop()
    try:
        assert await client.force_metadata_update() is True  # the first: at once
        # the sender, add_topic and a send waiting for its topic's partitions, meanwhile
        waiting = [client.force_metadata_update() for _ in range(5)]
        assert await asyncio.gather(*waiting) == [True] * 5  # all have its answer
        assert len(asked) == 2, asked  # one update for them all
        spaced(started, asked)
        assert loop.time() - started[0] >= RETRY_BACKOFF_SECONDS - 0.001
        # a quiet while later, the next starts at once
        await asyncio.sleep(RETRY_BACKOFF_SECONDS)
        quiet = loop.time()
        assert await client.force_metadata_update() is True
        assert len(asked) == 3 and started[2] - quiet < RETRY_BACKOFF_SECONDS / 2, started
        spaced(started, asked)
    finally:
        await client.close()


async def test_a_request_that_went_late_has_the_next_one_retry_backoff_after_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a busy host an update's request goes a while after the update started (the
    synchronizer's next turn); the next update starts ``retry_backoff_ms`` after that one was
    answered, so no two requests go closer than that. (Spaced from the starts, the next went
    that much sooner after it: two requests 83 ms apart on a loaded host, in the brokers tier's
    test_producer_metadata_flood.)"""
    producer, started, asked = await answering_at_once(monkeypatch, busy=[0.03])
    try:
        for _ in range(3):  # the sender while a partition has no known leader
            assert await producer.client.force_metadata_update() is True
    finally:
        await producer.client.close()
    assert asked[0] - started[0] >= 0.03  # the first request went late
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    assert min(gaps) >= RETRY_BACKOFF_SECONDS - 0.001, gaps
    spaced(started, asked)

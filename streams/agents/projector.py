"""The projector agent: [lifecycle] → SQL, in batches, idempotent per source offset."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from models.events import LifecycleEvent
from streams.app import Runtime
from streams.codecs import decode
from streams.projection.store import Sourced
from streams.topics import read_range

log = logging.getLogger(__name__)

BATCH = 500
WITHIN_SECONDS = 0.2


def register(rt: Runtime) -> None:
    # the next offset this process expects per (topic, partition), from SQL on first sight
    expected: dict[tuple[str, int], int | None] = {}

    async def sourced(
        topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Sourced | None:
        event = await rt.decoded(
            lambda raw: decode(LifecycleEvent, raw),
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
        )
        return None if event is None else Sourced(topic, partition, offset, event)

    async def missed(topic: str, partition: int, first: int) -> list[Sourced]:
        """What faust skipped before ``first`` (it can commit past a rebalance's dropped
        buffers): read back from Kafka, so the projection has no hole."""
        tp = (topic, partition)
        if tp not in expected:
            expected[tp] = await asyncio.to_thread(rt.projection.next_offset, topic, partition)
        start = expected[tp]
        if start is None or start >= first:
            return []
        log.warning(
            "projector gap topic=%s partition=%s offsets=%s..%s: repairing",
            topic,
            partition,
            start,
            first - 1,
        )
        rt.metrics.gaps_repaired.inc(first - start)
        found = []
        for r in await read_range(rt.settings, topic, partition, start, first):
            item = await sourced(r.topic, r.partition, r.offset, r.key, r.value)
            if item is not None:
                found.append(item)
        return found

    @rt.app.agent(rt.topics.lifecycle, name="projector")
    async def projector(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_SECONDS):
            batch: list[Sourced] = []
            firsts: dict[tuple[str, int], int] = {}
            for event in events:
                msg = event.message
                firsts.setdefault((msg.topic, msg.partition), msg.offset)
                item = await sourced(msg.topic, msg.partition, msg.offset, event.key, event.value)
                if item is not None:
                    batch.append(item)
            for (topic, partition), first in firsts.items():
                batch[:0] = await missed(topic, partition, first)
            await _apply(rt, batch)
            for event in events:
                msg = event.message
                expected[(msg.topic, msg.partition)] = msg.offset + 1


async def _apply(rt: Runtime, batch: list[Sourced]) -> None:
    """Block this partition until the database takes the batch: nothing projected is skipped."""
    delay = 0.5
    while True:
        try:
            # SQL is blocking I/O: off the event loop, one transaction per batch
            await asyncio.to_thread(rt.projection.apply, batch)
            return
        except SQLAlchemyError as exc:
            log.error("projection write failed, retrying in %.1fs: %s", delay, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

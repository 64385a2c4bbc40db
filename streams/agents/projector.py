"""The projector agent: [lifecycle] → SQL, in batches, idempotent per source offset."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from models.events import LifecycleEvent
from streams.codecs import decode
from streams.gaps import GapRepair, ReadRange
from streams.observability import WorkerMetrics
from streams.projection.store import ProjectionStore, Sourced
from streams.runtime import DeadLetters

log = logging.getLogger(__name__)

BATCH = 500
WITHIN_SECONDS = 0.2


def register(
    app: Any,
    *,
    topic: Any,
    store: ProjectionStore,
    read_range: ReadRange,
    dead_letters: DeadLetters,
    metrics: WorkerMetrics,
) -> None:
    async def applied_up_to(topic: str, partition: int) -> int | None:
        return await asyncio.to_thread(store.next_offset, topic, partition)

    # the projection's own offset marks are the source offsets of the rows it applied
    gaps = GapRepair("projector", applied_up_to, read_range, metrics.gaps_repaired.inc)
    app.on_partitions_revoked.connect(lambda *_, **__: gaps.forget())

    async def sourced(
        topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Sourced | None:
        event = await dead_letters.decoded(
            lambda raw: decode(LifecycleEvent, raw),
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
        )
        return None if event is None else Sourced(topic, partition, offset, event)

    @app.agent(topic, name="projector")
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
                repaired = [
                    await sourced(r.topic, r.partition, r.offset, r.key, r.value)
                    for r in await gaps.skipped(topic, partition, first)
                ]
                batch[:0] = [item for item in repaired if item is not None]
            await _apply(store, batch)
            for event in events:
                msg = event.message
                gaps.processed(msg.topic, msg.partition, msg.offset)


async def _apply(store: ProjectionStore, batch: list[Sourced]) -> None:
    """Block this partition until the database takes the batch: nothing projected is skipped."""
    delay = 0.5
    while True:
        try:
            # SQL is blocking I/O: off the event loop, one transaction per batch
            await asyncio.to_thread(store.apply, batch)
            return
        except SQLAlchemyError as exc:
            log.error("projection write failed, retrying in %.1fs: %s", delay, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

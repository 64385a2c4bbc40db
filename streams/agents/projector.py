"""The projector agent: [lifecycle] → SQL, in batches, idempotent per source offset."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from models.events import LifecycleEvent
from streams.app import Runtime
from streams.codecs import decode
from streams.errors import DecodeError
from streams.projection.store import Sourced

log = logging.getLogger(__name__)

BATCH = 500
WITHIN_SECONDS = 0.2


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.lifecycle, name="projector")
    async def projector(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_SECONDS):
            batch = []
            for event in events:
                msg = event.message
                try:
                    batch.append(
                        Sourced(
                            msg.topic,
                            msg.partition,
                            msg.offset,
                            decode(LifecycleEvent, event.value),
                        )
                    )
                except DecodeError as exc:
                    await rt.dead_letter(
                        topic=msg.topic,
                        partition=msg.partition,
                        offset=msg.offset,
                        reason=str(exc),
                        key=event.key,
                        value=event.value,
                    )
            await _apply(rt, batch)


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

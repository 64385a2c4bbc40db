"""A consumer stopped with a commit unanswered (its broker hung): the commit ends with the stop,
and its outcome is read, not reported by asyncio once collected. On a real broker:
``tests/integration/test_broker_down.py`` (a worker stopped with Kafka hung)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from streams.kafka_options import stop_consumer


class GroupCoordinator:
    """aiokafka's, as far as a commit goes: its request waits for the broker's answer."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def _do_commit_offsets(self) -> None:
        self.asked.set()
        await self.answer


class Consumer:
    """aiokafka's consumer, as far as a commit and a stop go: the commit's request runs in a
    task of its own, shielded from its caller (``GroupCoordinator.commit_offsets``), and the
    stop closes the connection it waits on."""

    def __init__(self) -> None:
        self._coordinator = GroupCoordinator()

    async def commit(self) -> None:
        await asyncio.shield(self._coordinator._do_commit_offsets())

    async def stop(self) -> None:
        self._coordinator.answer.set_exception(KafkaConnectionError("Connection closed"))
        for _ in range(3):  # aiokafka's close awaits its connections' ends
            await asyncio.sleep(0)


async def stopped_with_a_commit_unanswered() -> None:
    """faust's consumer thread as it stops: the commit it runs is cancelled, then its consumer
    is stopped, and its loop closed right after."""
    consumer = Consumer()
    committing = asyncio.ensure_future(consumer.commit())
    await consumer._coordinator.asked.wait()
    committing.cancel()
    await asyncio.gather(committing, return_exceptions=True)
    await stop_consumer(consumer)


def test_a_commit_unanswered_at_a_stop_ends_with_it_and_is_not_left_unread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker stopped with its broker hung logged asyncio's ERROR "Task exception was never
    retrieved" (KafkaConnectionError, aiokafka's ``_do_commit_offsets``) with a traceback:
    the shield around the commit's request reads its failure on a later turn of the loop,
    which the consumer thread's loop, closed, never took."""
    caplog.set_level(logging.INFO, logger="streams.kafka_options")
    loop = asyncio.new_event_loop()
    reported: list[str] = []  # (what it said, not the context: that would keep it alive)
    loop.set_exception_handler(lambda _, context: reported.append(str(context["message"])))
    try:
        loop.run_until_complete(stopped_with_a_commit_unanswered())
    finally:
        loop.close()
    gc.collect()  # a task collected failed and unread is reported now
    assert reported == []
    assert [r.getMessage() for r in caplog.records] == [
        "a commit unanswered when the consumer stopped is not confirmed (KafkaConnectionError)"
    ]

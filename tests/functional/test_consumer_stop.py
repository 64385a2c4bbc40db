"""A consumer stopped with a commit unanswered (its broker hung): the commit ends with the stop,
and its outcome is read, not reported by asyncio once collected. On a real broker:
``tests/integration/test_broker_down.py`` (a worker stopped with Kafka hung)."""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from streams.agents import executors
from streams.kafka_options import stop_consumer
from tests.unit.test_executor_marks import TP, Requests, generator


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


class ExecutorConsumer(Consumer):
    """The consumer an executor runs (``group_consumer``): one batch of one record, then
    nothing; its commit waits for a broker that never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = [{TP: [SimpleNamespace(topic=TP.topic, partition=TP.partition, offset=0,
                                              key=b"k", value=b"v")]}]  # fmt: skip

    def subscribe(self, topics: list[str], listener: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        if self.batches:
            return self.batches.pop()
        await asyncio.Event().wait()  # (cancelled with the run)
        return {}

    async def commit(self, offsets: object = None) -> None:  # type: ignore[override]
        await super().commit()


class Lettered:
    """Dead letters, as the executor decodes through them: every record is one, acknowledged."""

    async def decoded(self, decode: object, **record: object) -> None:
        return None


async def executor_stopped_with_its_batch_commit_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's stop with its broker hung: the executor's run waits on its batch's commit (or
    its stop on its last one) when it is cancelled, and then stops its consumer."""
    consumer = ExecutorConsumer()
    monkeypatch.setattr(executors, "group_consumer", lambda *args, **kwargs: consumer)
    idle = SimpleNamespace(run=asyncio.Event().wait)  # its scheduler: no call to dispatch
    executor = generator(Requests(), scheduler=idle, dead_letters=Lettered())
    running = asyncio.ensure_future(executor.run())
    await consumer._coordinator.asked.wait()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


def test_an_executor_stopped_with_a_commit_unanswered_reads_its_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped with its broker hung logged asyncio's ERROR "Task exception was never
    retrieved" (KafkaConnectionError, ``_do_commit_offsets``) for its generator's group
    (test_broker_down[hung], about one run in several): the executors stopped their consumer
    with aiokafka's ``stop()``, which leaves a cancelled commit's request unread, not with
    ``stop_consumer``. (asyncio's ``shield`` stops watching its inner task once the outer is
    cancelled: nobody reads the failure the close gives it.)"""
    caplog.set_level(logging.INFO, logger="streams.kafka_options")
    loop = asyncio.new_event_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(str(context["message"])))
    try:
        loop.run_until_complete(executor_stopped_with_its_batch_commit_unanswered(monkeypatch))
    finally:
        loop.close()
    gc.collect()
    assert reported == []
    assert [r.getMessage() for r in caplog.records] == [
        "a commit unanswered when the consumer stopped is not confirmed (KafkaConnectionError)"
    ]

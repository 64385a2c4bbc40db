"""A generator's forward to the executor pacing its organisation, and a crash right after it,
on the real broker: two executors in one group, each owning one partition of [generate].

An executor takes a command from its key's partition (committed, its mark naming it as not
reported), forwards it to the organisation's partition, which the other executor owns, and
Kafka acknowledges it. The forwarding executor counted it then as no longer its to report,
but its mark named it until its loop's next commit, up to half a second later: a worker that
died meanwhile left its next run (or the partition's next owner) telling the ledger the
attempt was lost, and the ledger, its attempt current, re-issued it while the other executor
called it: one OpenAI call made twice, billed twice (``streams.agents.forwarding``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from models.events import GenerateText
from streams.agents.executors import Executor, ExecutorConfig
from streams.agents.forwarding import organization_partition
from streams.agents.work import Generate
from streams.codecs import encode
from streams.dev.kafka import EmbeddedKafka
from streams.runtime import SystemClock, Topics
from tests.integration.brokers.test_executor_commits import Queue as CalledWhenTold
from tests.integration.conftest import create_topic
from tests.unit.domain_builders import Ledger, received
from tests.unit.test_executor_marks import Decoding, Requests

pytestmark = pytest.mark.integration

KEY_ID = "key-fp"  # the OpenAI key's fingerprint: the ledger's record key of its commands


class Queue(CalledWhenTold):
    """The executor's scheduler: the jobs it was given, none of them called (a call that
    lasts); the organisation of their key as the test sets it."""

    def __init__(self) -> None:
        super().__init__()
        self.org: str | None = None

    def take_out(self, which: Callable[[Any], bool]) -> list[Any]:
        return []

    def organization(self, family: str) -> str | None:
        return self.org


class Generate_:
    """[generate] as an executor forwards to it: a real producer, acknowledged by Kafka."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self.sent = 0

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[Any]:
        self.sent += 1
        return await self._producer.send(self._topic, key=key, value=value)  # type: ignore[no-any-return]


class Died(Exception):
    """The worker dies: nothing more of its run is committed."""


def executor(
    bootstrap: str, topic: str, instance: str, queue: Queue, requests: Requests, generate: Any
) -> Executor:
    return Executor(
        ExecutorConfig(
            "generator", topic, f"{topic}-generator", instance, {"bootstrap_servers": bootstrap}
        ),
        queue,  # type: ignore[arg-type]
        Generate(chat=None, secrets=None),  # type: ignore[arg-type]
        topics=Topics(
            requests=requests, generate=generate, completions=None, lifecycle=None, deadletter=None
        ),
        dead_letters=Decoding(),  # type: ignore[arg-type]
        clock=SystemClock(),
    )


def owned(e: Executor) -> set[TopicPartition]:
    return set(e.consumer.assignment()) if e.consumer is not None else set()


async def until(done: Callable[[], Any], tasks: list[asyncio.Task[None]], what: str) -> None:
    """Polls ``done`` (a minute and a half at most), raising a task's own failure at once."""
    try:
        async with asyncio.timeout(90):
            while not done():
                for task in tasks:
                    if task.done() and not isinstance(task.exception(), Died):
                        task.result()  # its failure, not a timeout
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within 90 s: {what}")


def test_a_worker_dying_right_after_a_forward_has_it_told_lost_by_no_one(
    kafka: EmbeddedKafka,
) -> None:
    """Worker A forwards request a to the organisation's partition, which worker B owns, and
    dies as soon as Kafka acknowledged it. A's next run (the same instance, back at once) reads
    A's last mark: it names nothing lost, so the ledger, told nothing, does not re-issue a
    while B calls it. Then b, taken by A's next run, is forwarded to B too: what A's next run
    read of its partition is read."""
    bootstrap = kafka.bootstrap
    topic = f"t-{uuid.uuid4().hex[:8]}-generate"
    person = Ledger()
    [issued] = person.send(received("a")).commands  # its ledger: generating, attempt 1
    assert isinstance(issued, GenerateText)
    a = encode(issued.model_copy(update={"openai_key_id": KEY_ID}))
    b = encode(issued.model_copy(update={"request_id": "b", "openai_key_id": KEY_ID}))

    async def scenario() -> tuple[Queue, Requests]:
        await create_topic(bootstrap, topic, 2)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        generate = Generate_(producer, topic)
        queue_a, queue_b, again = Queue(), Queue(), Queue()
        first = executor(bootstrap, topic, "t-a-generator", queue_a, Requests(), generate)
        other = executor(bootstrap, topic, "t-b-generator", queue_b, Requests(), generate)
        told = Requests()  # what A's next run tells the ledger
        second = executor(bootstrap, topic, "t-a-generator", again, told, generate)
        sent = first.forwarding.send

        async def dies_once_forwarded() -> None:
            await sent()
            if generate.sent and not first.forwarding.held:  # Kafka acknowledged it: it dies
                raise Died

        first.forwarding.send = dies_once_forwarded  # type: ignore[method-assign]
        tasks = [asyncio.create_task(first.run()), asyncio.create_task(other.run())]
        try:
            await until(lambda: len(owned(first)) == len(owned(other)) == 1, tasks, "split")
            [key_tp], [org_tp] = owned(first), owned(other)
            org = next(
                f"org-{i}"
                for i in range(64)
                if organization_partition(f"org-{i}", range(2)) == org_tp.partition
            )
            for queue in (queue_a, queue_b, again):
                queue.org = org
            await (await producer.send(topic, key=KEY_ID.encode(), value=a,
                                       partition=key_tp.partition))  # fmt: skip
            await until(lambda: queue_b.taken() == ["a"], tasks, "a forwarded to B, taken")
            await until(tasks[0].done, tasks, "A died")
            assert isinstance(tasks[0].exception(), Died)
            assert queue_a.taken() == []  # (forwarded, not called)

            tasks.append(asyncio.create_task(second.run()))  # A back at once: its next run
            await until(lambda: key_tp in owned(second), tasks, "A's next run assigned")
            await (await producer.send(topic, key=KEY_ID.encode(), value=b,
                                       partition=key_tp.partition))  # fmt: skip
            await until(lambda: queue_b.taken() == ["a", "b"], tasks, "b forwarded to B")
        finally:
            for e in (other, second):
                await e.stop(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await producer.stop()
        assert again.taken() == []
        return queue_b, told

    queue_b, told = asyncio.run(scenario())
    assert queue_b.taken() == ["a", "b"]  # B calls a (and b)
    for lost in told.sent:  # a's ledger, its attempt 1 called at B
        assert person.send(lost).commands == [], f"re-issued while called at B: {lost}"
    assert told.sent == []

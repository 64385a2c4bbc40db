"""An executor's commit that fails while its group stays stable, on a real broker: the batch it
was for is taken again, not skipped, and a poison record of it is lettered once; a commit
refused for its mark's size is committed with a shorter mark.

The broker here keeps commit metadata to a small size (``offset.metadata.max.bytes``, 4096 by
default; a cluster may set less): it refuses a commit whose mark is larger,
``OFFSET_METADATA_TOO_LARGE``, an error of the commit alone (no rebalance, no rejoin: the
member keeps its partitions and its position). A mark grows with the ranges of calls not
reported yet and shrinks as they report. An executor that met the refusal went on from past
the batch (its consumer's position): the batch's commands were never called in that run, only
re-issued by the ledger at their deadline; then it read the batch again at each refusal, which
stalled the partition for good while a call it listed did not report. Now the refusal shortens
its marks (``streams.agents.commits``); a refusal no shorter mark fixes is an ERROR and
``/readyz`` says so."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from models.events import DeadLetter
from streams.agents import marks
from streams.agents.executors import Executor, ExecutorConfig
from streams.agents.marks import MARK_BYTES, Mark
from streams.agents.work import Generate
from streams.codecs import decode
from streams.dev.kafka import EmbeddedKafka
from streams.errors import UpstreamError
from streams.observability import ready
from streams.runtime import DeadLetters, SystemClock, Topics
from streams.upstream.scheduler import Outcome
from tests.integration.conftest import create_topic, group_commits, session_kafka_version
from tests.support import free_port
from tests.unit.test_executor_marks import Requests, keyed

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

INSTANCE = "t-worker-generator"
POISON = b"\xff\xfe not a command"
# a mark of one run listing two ranges of single-digit offsets fits; three do not
METADATA_MAX = len(Mark(INSTANCE, "0" * 12, 0, ((0, 1), (2, 3))).encode())


@pytest.fixture
def small_metadata_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp("small-metadata-broker"),
        port=free_port(),
        controller_port=free_port(),
        version=session_kafka_version(),
        overrides={"offset.metadata.max.bytes": str(METADATA_MAX)},
    )
    broker.start(timeout=120)
    yield broker
    broker.stop()


class Queue:
    """The executor's scheduler: the jobs it was given, in order, called when the test says
    (they report then)."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.on_organization = None

    def now(self) -> float:
        return 0.0

    def submit(self, target: str, job: Any, organization: str | None = None) -> None:
        self.jobs.append(job)

    def take_back(self, origins: set[TopicPartition]) -> list[Any]:
        return []

    def organization(self, family: str) -> str | None:
        return None

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def drain(self, within_s: float) -> list[Any]:
        return []

    def taken(self) -> list[str]:
        return [job.key for job in self.jobs]

    async def answer(self, key: str) -> None:
        """The call of ``key`` ends (a failure: what it reports does not matter here)."""
        [job] = [job for job in self.jobs if job.key == key]
        await job.report(
            Outcome(value=None, error=UpstreamError("refused", reason="T"), waited_s=0, tries=1)
        )


class Letters:
    """The dead-letter topic: the letters Kafka acknowledged."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.letters.append(decode(DeadLetter, value))
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery


async def until(done: Callable[[], Any], task: asyncio.Task[None], what: str) -> None:
    async with asyncio.timeout(60):
        while not done():
            if task.done():
                task.result()  # its failure, not a timeout
            await asyncio.sleep(0.05)
    assert done(), what


async def produce(bootstrap: str, topic: str, *values: bytes) -> None:
    """``values`` to partition 0 of ``topic`` in one record batch: a fetch takes all or none."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        for value in values:
            assert batch.append(key=b"k", value=value, timestamp=None) is not None
        batch.close()
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def b_and_d_reported(
    bootstrap: str, topic: str, tp: TopicPartition, executor: Executor, queue: Queue
) -> asyncio.Task[None]:
    """``executor`` running on a topic of a, b, c and d, once it committed b and d answered:
    its mark lists a and c as two ranges unreported."""
    await create_topic(bootstrap, topic, 1)
    await produce(bootstrap, topic, *(keyed(key) for key in "abcd"))
    task = asyncio.create_task(executor.run())
    try:
        await until(lambda: queue.taken() == list("abcd"), task, "a-d taken")
        await queue.answer("b")
        await queue.answer("d")
        await until(
            lambda: executor.commits.marked[tp].unreported == ((0, 1), (2, 3)),
            task,
            "b and d reported, committed",
        )
    except BaseException:  # stopped as the tests' own failures stop it
        await executor.stop(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    return task


def executor_on(bootstrap: str, topic: str, group: str, queue: Queue, letters: Letters) -> Executor:
    counter = Counter("letters", "dead letters", ["topic"], registry=CollectorRegistry())
    return Executor(
        ExecutorConfig("generator", topic, group, INSTANCE, {"bootstrap_servers": bootstrap}),
        queue,  # type: ignore[arg-type]
        Generate(chat=None, secrets=None),  # type: ignore[arg-type]
        topics=Topics(
            requests=Requests(), generate=None, completions=None, lifecycle=None, deadletter=None
        ),
        dead_letters=DeadLetters(letters, counter, SystemClock()),
        clock=SystemClock(),
    )


def test_a_batch_whose_commit_failed_is_taken_again_and_its_poison_lettered_once(
    small_metadata_broker: EmbeddedKafka,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """a, b, c, d (offsets 0-3) are taken; b and d report, so the mark lists a and c: two
    ranges. A poison record (4) and e (5) come: their commit's mark lists three ranges, and the
    broker refuses it; no shorter mark is allowed here (as on a broker that keeps less than a
    mark at its least), so the refusal is an ERROR and ``/readyz`` answers 503 with it. Then a
    reports, and the mark fits again; f (6) comes. Every command is called once, e too
    (before, it was skipped: a, b, c, d, f), the poison record is lettered once (taken again,
    it was lettered at each take), and the executor is ready again."""
    monkeypatch.setattr(marks, "MARK_LEAST_BYTES", MARK_BYTES)  # no shorter mark
    bootstrap = small_metadata_broker.bootstrap
    topic = f"t-{uuid.uuid4().hex[:8]}-generate"
    group = f"{topic}-generator"
    tp = TopicPartition(topic, 0)
    queue, letters = Queue(), Letters()
    executor = executor_on(bootstrap, topic, group, queue, letters)

    def refused() -> list[str]:
        return [m for m in caplog.messages if "could not commit" in m and "TooLarge" in m]

    async def scenario() -> int | None:
        task = await b_and_d_reported(bootstrap, topic, tp, executor, queue)
        try:
            assert not refused()
            await produce(bootstrap, topic, POISON, keyed("e"))
            await until(refused, task, "the commit of e and the poison record refused")
            assert executor.refused is not None and "offset.metadata.max.bytes" in executor.refused
            assert ready(None, [executor]) == (False, executor.refused)
            await queue.answer("a")  # the mark fits again: the commit is not refused
            await produce(bootstrap, topic, keyed("f"))
            await until(lambda: "f" in queue.taken(), task, "f taken")  # (committed first)
        finally:
            await executor.stop(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return await committed(bootstrap, group, tp)

    with caplog.at_level(logging.INFO, logger="streams.agents.executors"):
        last = asyncio.run(scenario())
    assert queue.taken() == list("abcdef"), "e was skipped"
    assert [(letter.topic, letter.offset) for letter in letters.letters] == [(topic, 4)]
    assert last == 7
    assert executor.refused is None, "committed: ready again"
    assert any(r.levelname == "ERROR" for r in caplog.records if "could not commit" in r.message)


def test_a_commit_refused_for_its_marks_size_is_committed_with_a_shorter_mark(
    small_metadata_broker: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, a, b, c, d are taken, b and d report, and the commit of a poison record (4)
    and e (5) lists three ranges, which the broker refuses; but a never reports (a call that
    lasts, a worker's calls of a partition handed over to it). Before, the executor read the
    batch again each second for good: e and f were never taken, nor anything after them. Now
    the refusal halves the most its marks may be, and the batch is committed at once with a
    shorter mark, which names the oldest offset not reported and leaves the rest to the
    ledger's deadlines; f (6) is committed at the first try."""
    bootstrap = small_metadata_broker.bootstrap
    topic = f"t-{uuid.uuid4().hex[:8]}-generate"
    group = f"{topic}-generator"
    tp = TopicPartition(topic, 0)
    queue, letters = Queue(), Letters()
    executor = executor_on(bootstrap, topic, group, queue, letters)

    async def scenario() -> None:
        task = await b_and_d_reported(bootstrap, topic, tp, executor, queue)
        try:
            await produce(bootstrap, topic, POISON, keyed("e"))
            await until(lambda: "e" in queue.taken(), task, "e taken (its commit refused)")
            await produce(bootstrap, topic, keyed("f"))
            await until(lambda: "f" in queue.taken(), task, "f taken")  # (committed first)
        finally:
            await executor.stop(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="streams.agents.executors"):
        asyncio.run(scenario())
    assert queue.taken() == list("abcdef")
    assert [(letter.topic, letter.offset) for letter in letters.letters] == [(topic, 4)]
    assert [m for m in caplog.messages if "refused a commit for its mark's size" in m]
    assert not [m for m in caplog.messages if "could not commit" in m], "not read again"
    assert executor.refused is None
    assert MARK_BYTES > executor.commits.most >= marks.MARK_LEAST_BYTES
    [(offset, metadata)] = group_commits(bootstrap, group).values()
    assert offset == 7
    assert len(metadata) <= METADATA_MAX
    # a (0) never reported: the mark names it as the oldest; what it leaves out (a, c, e, f
    # unreported) the ledger re-issues at the deadline
    assert Mark.parse(metadata) == Mark(INSTANCE, executor.run_id, 0, ())

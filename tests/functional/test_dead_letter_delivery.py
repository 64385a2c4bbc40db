"""A record that does not decode is passed (committed, recorded as read) only once Kafka has
acknowledged its dead letter. The executors and the projector handed the letter to the
producer and went on: counted in ``talkstream_dead_letters_total`` and logged "dead-lettered",
and committed past, while Kafka gave up on it (no leader for longer than the producer's request
timeout). The record was then neither processed nor in the dead-letter topic, for no operator
to see or redrive."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError

from models.events import DeadLetter
from streams.agents import executors
from streams.agents.projector import Projector, ProjectorConfig
from streams.codecs import decode, encode
from streams.observability import WorkerMetrics
from streams.projection.engine import make_engine
from streams.projection.store import ProjectionStore
from streams.runtime import DeadLetters
from tests.unit.domain_builders import Ledger, received
from tests.unit.test_executor_marks import (
    TP,
    Committing,
    Queue,
    Refusing,
    Requests,
    generator,
    keyed,
)

POISON = b"\xff\xfe not json"


class Outage:
    """The dead-letter topic through a broker outage: Kafka gives up on the first ``failing``
    letters (no leader for longer than the producer's request timeout), takes the others."""

    def __init__(self, failing: int) -> None:
        self.failing = failing
        self.letters: list[DeadLetter] = []

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[None]:
        delivery = asyncio.get_running_loop().create_future()
        if self.failing:
            self.failing -= 1
            delivery.set_exception(KafkaTimeoutError("no leader for the partition"))
        else:
            self.letters.append(decode(DeadLetter, value))
            delivery.set_result(None)
        return delivery


def counted(metrics: WorkerMetrics, topic: str) -> float | None:
    return metrics.registry.get_sample_value("talkstream_dead_letters_total", {"topic": topic})


async def test_a_letter_kafka_gave_up_on_is_neither_counted_nor_said_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = WorkerMetrics()
    letters = DeadLetters(
        Outage(failing=1), metrics.dead_letters, SimpleNamespace(now_ms=lambda: 0)
    )
    where: dict[str, Any] = {"topic": "t-generate", "partition": 0, "offset": 6, "key": None}
    with caplog.at_level(logging.DEBUG, logger="streams.runtime"):
        with pytest.raises(KafkaTimeoutError):
            await letters.decoded(lambda raw: decode(DeadLetter, raw), **where, value=POISON)
        assert counted(metrics, "t-generate") is None
        assert "not dead-lettered topic=t-generate partition=0 offset=6" in caplog.text
        assert "KafkaTimeoutError" in caplog.text
        assert not [m for m in caplog.messages if m.startswith("dead-lettered")]

        assert (
            await letters.decoded(lambda raw: decode(DeadLetter, raw), **where, value=POISON)
            is None
        )
    assert counted(metrics, "t-generate") == 1
    assert len([m for m in caplog.messages if m.startswith("dead-lettered topic=t-generate")]) == 1


class Seeking(Committing):
    """An executor's or the projector's consumer: what it committed, where it was sought."""

    def __init__(self) -> None:
        super().__init__()
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def records(*values: tuple[int, bytes]) -> dict[TopicPartition, list[Any]]:
    return {
        TP: [
            SimpleNamespace(topic=TP.topic, partition=TP.partition, offset=o, key=b"k", value=v)
            for o, v in values
        ]
    }


async def test_an_executor_commits_a_poison_record_only_once_its_letter_is_written() -> None:
    outage = Outage(failing=1)
    metrics = WorkerMetrics()
    letters = DeadLetters(outage, metrics.dead_letters, SimpleNamespace(now_ms=lambda: 0))
    queue = Queue()
    executor = generator(Requests(), scheduler=queue, dead_letters=letters)
    consumer = executor.consumer = Seeking()  # type: ignore[assignment]
    a, b = keyed("a"), keyed("b")

    await executor._take_batch(consumer, records((5, a), (6, POISON), (7, b)))  # type: ignore[arg-type]
    assert [offsets[TP][0] for offsets in consumer.commits] == [6], "not past the poison"
    assert consumer.seeks == [(TP, 6)], "read again from the poison record"
    assert [job.key for job in queue.jobs] == ["a"]
    assert outage.letters == [] and counted(metrics, TP.topic) is None

    await executor._take_batch(consumer, records((6, POISON), (7, b)))  # type: ignore[arg-type]
    assert [offsets[TP][0] for offsets in consumer.commits] == [6, 8]
    assert [(letter.topic, letter.partition, letter.offset) for letter in outage.letters] == [
        (TP.topic, TP.partition, 6)
    ]
    assert counted(metrics, TP.topic) == 1
    assert [job.key for job in queue.jobs] == ["a", "b"]


async def test_the_projector_records_a_poison_record_read_only_once_its_letter_is_written() -> None:
    outage = Outage(failing=1)
    metrics = WorkerMetrics()
    letters = DeadLetters(outage, metrics.dead_letters, SimpleNamespace(now_ms=lambda: 0))
    store = ProjectionStore(make_engine("sqlite://"), migrate_schema=True)
    config = ProjectorConfig(topic=TP.topic, group="g", instance="i", consumer_options={})
    projector = Projector(config, store, letters)
    consumer = Seeking()
    events = Ledger().send(received("a")).events
    first, second = encode(events[0]), encode(events[1])

    await projector._project(consumer, records((0, first), (1, POISON), (2, second)))  # type: ignore[arg-type]
    assert store.next_offset(TP.topic, TP.partition) == 1, "not past the poison"
    assert consumer.seeks == [(TP, 1)] and consumer.commits == [{TP: 1}]
    assert outage.letters == [] and counted(metrics, TP.topic) is None

    await projector._project(consumer, records((1, POISON), (2, second)))  # type: ignore[arg-type]
    assert store.next_offset(TP.topic, TP.partition) == 3
    assert [(letter.topic, letter.offset) for letter in outage.letters] == [(TP.topic, 1)]
    assert counted(metrics, TP.topic) == 1


async def test_a_poison_record_read_again_after_a_failed_commit_is_lettered_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its letter is acknowledged, then the batch's commit fails: a rebalance (aiokafka has the
    member join again; given the partition back, this run reads it from its last commit) or an
    error of the commit alone (the batch is read again). Taken again, the poison record was
    lettered again, and the dead-letter topic held two letters of it, each counted and said
    "dead-lettered"."""
    monkeypatch.setattr(executors, "COMMIT_AGAIN_SECONDS", 0, raising=False)
    outage = Outage(failing=0)
    metrics = WorkerMetrics()
    letters = DeadLetters(outage, metrics.dead_letters, SimpleNamespace(now_ms=lambda: 0))
    queue = Queue()
    executor = generator(Requests(), scheduler=queue, dead_letters=letters)
    consumer = executor.consumer = Refusing()  # type: ignore[assignment]
    consumer.error = CommitFailedError("the group has rebalanced")
    a, b = keyed("a"), keyed("b")

    await executor._take_batch(consumer, records((5, a), (6, POISON), (7, b)))  # type: ignore[arg-type]
    assert consumer.commits == [] and queue.jobs == []
    assert [letter.offset for letter in outage.letters] == [6]

    await executor._take_batch(consumer, records((5, a), (6, POISON), (7, b)))  # type: ignore[arg-type]
    assert [offsets[TP][0] for offsets in consumer.commits] == [8]
    assert [job.key for job in queue.jobs] == ["a", "b"]
    assert [letter.offset for letter in outage.letters] == [6], "lettered once"
    assert counted(metrics, TP.topic) == 1

"""The executors' process (``TALKSTREAM_EXECUTORS=process``, ``talkstream executors``) stops
as a worker does: its executors get the drain and then ``KAFKA_STOP_SECONDS`` for Kafka, and
past that it gives up on Kafka, with the worker's WARNING counting what it held
(``streams.executors_process._stop``): in-process, the executors and the producer as fakes."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from streams import executors_process
from streams.kafka_options import GivenUp, IdempotentProducer


class Holding(IdempotentProducer):
    """A producer holding records Kafka does not acknowledge (an outage): given up on, they
    fail (counted by topic)."""

    def __init__(self) -> None:  # (no client: nothing is sent)
        self.given_up: BaseException | None = None

    def give_up(self, reason: BaseException) -> Counter[str]:
        self.given_up = reason
        return Counter({"talkstream-generate": 2, "talkstream-requests": 1})


class Waiting:
    """An executor whose stop waits for Kafka (its hand-backs' answers, a commit) for good."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(name="generator")
        self.stopping = asyncio.Event()
        self.cut = False

    async def stop(self, drain_s: float) -> None:
        self.stopping.set()
        try:
            await asyncio.Event().wait()  # Kafka never answers
        except asyncio.CancelledError:
            self.cut = True
            raise


async def test_the_executors_process_gives_up_on_kafka_as_a_worker_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With Kafka down, the process's stop waited for its executors' stops (the commands they
    hand back, acknowledged; their commits, which aiokafka retries for as long as it finds no
    coordinator) until the worker killed it, saying nothing of what it held. It now gives up
    on Kafka past the drain and ``KAFKA_STOP_SECONDS`` (here none), ends the stops, and says
    in the worker's WARNING what it held unacknowledged."""
    monkeypatch.setattr(executors_process, "KAFKA_STOP_SECONDS", 0.0)
    producer, executor = Holding(), Waiting()
    caplog.set_level(logging.WARNING, logger="streams.executors_process")
    await executors_process._stop([executor], [], 0.0, producer)  # type: ignore[list-item]
    assert executor.stopping.is_set() and executor.cut, "its stop ended"
    assert isinstance(producer.given_up, GivenUp)
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith("stopping without Kafka: 0s into the stop, it has not "
                              "acknowledged everything; the executors process ends with 3 "
                              "records it held unacknowledged (talkstream-generate: 2, "
                              "talkstream-requests: 1)"), said  # fmt: skip
    assert said[1:] == ["generator stopping: cut short after 0s without Kafka"], said

"""The executors' process (``TALKSTREAM_EXECUTORS=process``, ``talkstream executors``) stops
as a worker does: its executors get the drain and then ``KAFKA_STOP_SECONDS`` for Kafka, and
past that it gives up on Kafka, with the worker's WARNING counting what it held
(``streams.executors_process._stop``): in-process, the executors and the producer as fakes."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import pytest

from streams import executors_process
from streams.kafka_options import GivenUp, IdempotentProducer
from tests.functional.conftest import make_settings, secret_box


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


class Hung(Holding):
    """A producer whose stop waits for Kafka for good (a broker that takes connections and
    answers nothing: its requests in flight), given up on or not."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cut = True
            raise


class Closing:
    """An upstream client, closed at the stop."""

    async def close(self) -> None:
        pass


class Idle(Waiting):
    """An executor that runs until its run is cancelled."""

    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_the_executors_process_stops_within_one_deadline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The process's stop gave its executors' stops the drain and ``KAFKA_STOP_SECONDS``,
    and then its producer's stop ``KAFKA_STOP_SECONDS`` of its own: with Kafka hung, twice
    Kafka's time, past the margin the worker waits for it (the drain, Kafka's time and 5 s)
    before it kills it. One deadline now holds for both: past it, the producer's stop gets
    ``CLOSE_SECONDS`` (here none) and is cut short, as a worker's producer's is."""
    kafka_s = 3.0  # (a margin of Kafka's time: the stop takes it once, twice before)
    monkeypatch.setattr(executors_process, "KAFKA_STOP_SECONDS", kafka_s)
    monkeypatch.setattr(executors_process, "CLOSE_SECONDS", 0.0)
    producer, executor = Hung(), Idle()
    monkeypatch.setattr(executors_process, "IdempotentProducer", lambda **_: producer)
    monkeypatch.setattr(executors_process, "upstream_clients", lambda _: (Closing(), Closing()))
    monkeypatch.setattr(executors_process, "build_executors", lambda *_: [executor])
    monkeypatch.setattr(executors_process, "serve_or_log", AsyncMock(return_value=None))
    monkeypatch.setattr(executors_process, "ExecutorMetrics", MagicMock)
    stopping = asyncio.Event()
    stopping.set()  # (told to stop as it starts)
    settings = make_settings(tmp_path, stop_drain_seconds=0.0)
    caplog.set_level(logging.WARNING, logger="streams.executors_process")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await executors_process.serve(settings, secret_box(), stopping)
    took = loop.time() - began
    assert executor.cut and isinstance(producer.given_up, GivenUp), "given up on Kafka"
    assert took < 2 * kafka_s, f"its stop took {took:.1f}s: Kafka's time twice"
    await asyncio.sleep(0)  # (the producer's stop, cancelled, ends)
    assert producer.cut, "the producer's stop cut short"
    said = [r.getMessage() for r in caplog.records]
    assert said[1:] == [
        "generator stopping: cut short after 3s without Kafka",
        "executors stopping: the producer's stop cut short (Kafka does not answer)",
    ], said

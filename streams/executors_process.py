"""The generator and the publisher in a process of their own (``talkstream executors``, which
is also the worker's child when ``TALKSTREAM_EXECUTORS=process``).

The executors are plain aiokafka consumers in groups of their own, committing by themselves
(``streams.agents.executors``): nothing in them needs faust. Run here, their upstream calls
(the OpenAI SDK's work for each call, most of a busy worker's event loop) leave the ledger's
loop to the ledger, and the two use two cores. Everything else is as in the worker: the same
consumer groups and member ids (a worker switched between the two modes takes its partitions
back), the same marks, hand-overs and stop; the results go to [requests] through a producer of
this process's own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams import topics as topics_module
from streams.agents.executors import Executor
from streams.app import build_executors, upstream_clients
from streams.faust_transport import CLOSE_SECONDS, KAFKA_STOP_SECONDS, give_up_on_kafka
from streams.kafka_options import IdempotentProducer, client_options, lingering_no_more
from streams.observability import ExecutorMetrics, serve_or_log
from streams.runtime import DeadLetters, SystemClock, Topics
from streams.secrets import SecretBox
from streams.settings import PRODUCER_MAX_REQUEST_SIZE, Settings
from streams.topics import BY_NAME

log = logging.getLogger(__name__)


class ProducerTopic:
    """A topic the executors write through this process's producer: what they use of a faust
    topic (``send``, which returns the record's delivery, and ``get_topic_name``). A keyed
    record goes to ``partition_of(key)`` when set ([requests]: the ledger's partition of the
    person, by the count the topics were created with)."""

    def __init__(self, producer: Any, name: str, partition_of: Any = None) -> None:
        self._producer, self._name = producer, name
        self.partition_of = partition_of

    def get_topic_name(self) -> str:
        return self._name

    async def send(
        self, *, key: bytes | None = None, value: bytes, partition: int | None = None
    ) -> Any:
        if partition is None and key is not None and self.partition_of is not None:
            partition = self.partition_of(key)
        return await self._producer.send(self._name, value, key=key, partition=partition)


def producer_topics(settings: Settings, producer: Any) -> Topics:
    def topic(name: str, partition_of: Any = None) -> ProducerTopic:
        return ProducerTopic(producer, BY_NAME[name].full_name(settings), partition_of)

    return Topics(
        requests=topic("requests", topics_module.partition_of(settings.partitions)),
        generate=topic("generate"),
        completions=topic("completions"),
        lifecycle=topic("lifecycle"),
        deadletter=topic("deadletter"),
    )


async def serve(settings: Settings, secrets: SecretBox, stopping: asyncio.Event) -> None:
    """Run the executors until ``stopping`` is set; then stop them as a worker does (the calls
    running get ``STOP_DRAIN_SECONDS`` to end, the queued commands go back to their topic), and
    give Kafka ``KAFKA_STOP_SECONDS`` more to take what this process holds: one deadline for
    the executors' stops (:func:`_stop`) and the producer's (:func:`_stop_producer`), which the
    worker waits for and a margin before it kills this process. An executor that fails ends
    the process the same way, its error raised."""
    producer = IdempotentProducer(
        **client_options(settings),
        linger_ms=settings.producer_linger_ms,
        max_request_size=PRODUCER_MAX_REQUEST_SIZE,
    )
    chat, talkable = upstream_clients(settings)  # closed when it stops
    metrics = ExecutorMetrics()
    http = None
    running: list[Executor] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await producer.start()
        topics = producer_topics(settings, producer)
        clock = SystemClock()
        letters = DeadLetters(topics.deadletter, metrics.dead_letters, clock)
        running = build_executors(settings, topics, letters, clock, secrets, chat, talkable)
        for executor in running:
            metrics.watch(executor)
        http = await serve_or_log(None, metrics, settings, "executors")
        tasks = [asyncio.ensure_future(executor.run()) for executor in running]
        told = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([*tasks, told], return_when=asyncio.FIRST_COMPLETED)
        told.cancel()
        failed = next((t.exception() for t in tasks if t.done() and t.exception()), None)
        if failed is not None:
            raise failed
    finally:
        # what the producer holds back for its linger goes now, as a worker's does: a stop
        # that waited it out (up to a minute) gave up on Kafka first, its results unsent
        lingering_no_more(producer)
        began = asyncio.get_running_loop().time()
        until = began + settings.stop_drain_seconds + KAFKA_STOP_SECONDS  # (the whole stop's)
        gave_up = await _stop(running, tasks, settings.stop_drain_seconds, producer, until)
        if http is not None:
            await http.cleanup()
        await chat.close()
        await talkable.close()
        await _stop_producer(producer, began, until, gave_up=gave_up)


async def _stop_producer(
    producer: Any, began: float, until: float, *, gave_up: bool = False
) -> None:
    """The producer stopped (what it holds sent, Kafka's answers waited for) by ``until``, the
    deadline of the stop that ``began`` then (the loop's clock), which the executors' stops
    had too (:func:`_stop`). Past it, the process gives up on Kafka (every record still held
    fails, said in the worker's WARNING), unless their stops did already (``gave_up``), and
    the producer's stop gets ``CLOSE_SECONDS`` more (its requests in flight, to a broker that
    answers nothing), then is cut short, as a worker's producer's is. It had
    ``KAFKA_STOP_SECONDS`` of its own after the executors' stops, which could take all of
    theirs: the process's stop outlasted the margin the worker waits for it (the drain,
    Kafka's time and 5 s) and was killed."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.ensure_future(producer.stop())
    await asyncio.wait([stopping], timeout=max(until - loop.time(), 0.0))
    if not stopping.done():
        if not gave_up:  # (by the executors' stops)
            give_up_on_kafka(producer, loop.time() - began, "executors process", log)
        await asyncio.wait([stopping], timeout=CLOSE_SECONDS)
    if not stopping.done():
        stopping.cancel()
        await asyncio.wait([stopping], timeout=CLOSE_SECONDS)
        log.warning("executors stopping: the producer's stop cut short (Kafka does not answer)")
    elif not stopping.cancelled() and stopping.exception() is not None:
        log.warning("executors stopping: the producer did not stop cleanly: %r",
                    stopping.exception())  # fmt: skip


async def _stop(
    running: list[Executor],
    tasks: list[asyncio.Task[None]],
    drain_s: float,
    producer: Any,
    until: float | None = None,
) -> bool:
    """Both executors stopped at once (each drains its own calls), then their loops ended.

    As a worker's stop (``App.on_stop``), they get ``drain_s`` and then
    ``KAFKA_STOP_SECONDS`` for Kafka: past that the process gives up on Kafka (every record
    ``producer`` still holds fails, said in one WARNING counting them by topic:
    ``give_up_on_kafka``), and a stop still waiting (for Kafka's answers to the commands it
    hands back, or for a commit, which aiokafka retries for as long as it finds no
    coordinator) ends there. Without that, in a Kafka outage the stop waited until the worker
    killed this process, saying nothing of what it held: what it had not reported is told lost
    by the next run, a command it handed back not acknowledged is left to its deadline, as
    in the worker. (``until``: the process's stop's deadline, by the loop's clock; by default
    that drain and ``KAFKA_STOP_SECONDS`` from now.) Returns whether it gave up on Kafka."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    bound = drain_s + KAFKA_STOP_SECONDS if until is None else max(until - began, 0.0)
    stopping = [asyncio.ensure_future(executor.stop(drain_s)) for executor in running]
    gave_up = False
    if stopping:
        _, left = await asyncio.wait(stopping, timeout=bound)
        if left:  # what they wait for does not come: they end here
            gave_up = True
            give_up_on_kafka(producer, loop.time() - began, "executors process", log)
            for stop in left:
                stop.cancel()
    stops = await asyncio.gather(*stopping, return_exceptions=True)
    for executor, stopped in zip(running, stops, strict=True):
        if isinstance(stopped, asyncio.CancelledError):
            log.warning("%s stopping: cut short after %.0fs without Kafka",
                        executor.config.name, bound)  # fmt: skip
        elif isinstance(stopped, BaseException):
            log.warning("%s did not stop cleanly: %r", executor.config.name, stopped)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return gave_up

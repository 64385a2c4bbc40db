"""Baseline (a): a raw aiokafka relay, the ceiling of any Kafka pipeline on this broker.

``hops`` plain consumer → producer stages in one process (as talkstream's worker is one
process), topic ``<prefix>-0`` → ``<prefix>-1`` → ... → ``<prefix>-<hops>``, each stage its own
consumer group, producers with ``acks=all`` like ours. Nothing is decoded, decided or stored:
what is left is the broker and the client library. The driver produces like the ingress
(``acks=all``), reads the last topic and times each message.

Run the relay with ``python -m bench.relay --bootstrap B --prefix P --hops N``; it connects
with the TLS/SASL settings of its environment (``TALKSTREAM_KAFKA_*``), as every process does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import load
from bench.load import Tick
from bench.system import Processes
from streams import heap
from streams.kafka_options import client_options
from streams.settings import Settings

PAYLOAD_BYTES = 1200  # about a RequestReceived with its sealed keys


async def _stage(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, target: str) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        for messages in batches.values():
            for message in messages:
                await producer.send(target, message.value, key=message.key)


async def relay(options: Mapping[str, Any], prefix: str, hops: int) -> None:
    producer = AIOKafkaProducer(**options, acks="all")
    await producer.start()
    consumers = [
        AIOKafkaConsumer(
            f"{prefix}-{hop}",
            **options,
            group_id=f"{prefix}-stage{hop}",
            auto_offset_reset="earliest",
        )
        for hop in range(hops)
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await asyncio.gather(*(c.start() for c in consumers))
    stages = [
        asyncio.create_task(_stage(c, producer, f"{prefix}-{hop + 1}"))
        for hop, c in enumerate(consumers)
    ]
    await stop.wait()
    for task in stages:
        task.cancel()
    await asyncio.gather(*stages, return_exceptions=True)
    await asyncio.gather(*(c.stop() for c in consumers))
    await producer.stop()


async def create_topics(
    options: Mapping[str, Any], prefix: str, hops: int, partitions: int
) -> None:
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        topics = [NewTopic(f"{prefix}-{hop}", partitions, 1) for hop in range(hops + 1)]
        await admin.create_topics(topics)
    finally:
        await admin.close()


class Driver:
    """Runs the relay process, pushes numbered messages through it and times them.

    The topics must exist (:func:`create_topics`, early: new partitions need a moment to get
    a leader).
    """

    def __init__(
        self,
        processes: Processes,
        env: dict[str, str],
        *,
        options: Mapping[str, Any],
        prefix: str,
        hops: int,
        partitions: int,
    ) -> None:
        self.processes, self.env = processes, env
        self.bootstrap = str(options["bootstrap_servers"])
        self.prefix, self.hops, self.partitions = prefix, hops, partitions
        self.producer = AIOKafkaProducer(**options, acks="all", linger_ms=1)
        self.sink = AIOKafkaConsumer(**options, enable_auto_commit=False)
        self.warm_up_s = 0.0

    @property
    def pid(self) -> int:
        return self.processes.pid("relay")

    async def start(self) -> None:
        """Start the relay; return once a probe went through every stage."""
        args = ["-m", "bench.relay", "--bootstrap", self.bootstrap]
        args += ["--prefix", self.prefix, "--hops", str(self.hops)]
        self.processes.spawn("relay", args, self.env)
        await asyncio.gather(self.producer.start(), self.sink.start())
        last = f"{self.prefix}-{self.hops}"
        self.sink.assign([TopicPartition(last, p) for p in range(self.partitions)])
        started = time.monotonic()
        while time.monotonic() - started < 120:
            self.processes.check()
            probe = json.dumps({"i": -1}).encode()
            await self.producer.send_and_wait(f"{self.prefix}-0", probe, key=b"p")
            if any((await self.sink.getmany(timeout_ms=1000)).values()):
                self.warm_up_s = round(time.monotonic() - started, 1)
                return
        raise RuntimeError("the relay moved nothing in 120 s; see relay.log")

    async def measure(
        self, messages: int, paced_messages: int, rate: float, tick: Tick
    ) -> dict[str, Any]:
        """``messages`` as fast as the producer takes them (throughput), then
        ``paced_messages`` at ``rate`` per second (latency at the pipeline's measured rate)."""
        trip = _Trip(self.processes, self.producer, self.sink, f"{self.prefix}-0", tick)
        blast = await trip.run(range(messages), None)
        paced = await trip.run(range(messages, messages + paced_messages), rate)
        span = max(blast.values()) - min(trip.sent_at[i] for i in blast)
        return {
            "messages": messages,
            "hops": self.hops,
            "payload_bytes": PAYLOAD_BYTES,
            "warm_up_s": self.warm_up_s,
            "seconds": round(span, 3),
            "messages_per_second": load.rate(messages, span),
            "paced_messages": paced_messages,
            "offered_per_second": round(rate, 1),
            "end_to_end": load.ms_summary([t - trip.sent_at[i] for i, t in paced.items()]),
        }

    async def stop(self) -> None:
        await self.producer.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sink.stop()
        self.processes.stop("relay")


class _Trip:
    """Messages numbered ``i`` out to the first topic and back from the last."""

    def __init__(
        self,
        processes: Processes,
        producer: AIOKafkaProducer,
        sink: AIOKafkaConsumer,
        topic: str,
        tick: Tick,
    ) -> None:
        self.processes, self.producer, self.sink, self.topic = processes, producer, sink, topic
        self.tick = tick
        self.sent_at: dict[int, float] = {}
        self.padding = "x" * PAYLOAD_BYTES

    async def run(self, indices: range, rate: float | None) -> dict[int, float]:
        received: dict[int, float] = {}
        sender = asyncio.create_task(self._send(indices, rate))
        try:
            while len(received) < len(indices):
                self.processes.check()
                batches = await self.sink.getmany(timeout_ms=200, max_records=5000)
                now = time.time()
                for batch in batches.values():
                    for message in batch:
                        index = json.loads(message.value)["i"]
                        if index in indices and index not in received:
                            received[index] = now
                            self.tick(1)
            await sender
        finally:
            sender.cancel()
        return received

    async def _send(self, indices: range, rate: float | None) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = []
        for n, i in enumerate(indices):
            if rate is not None:
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            value = json.dumps({"i": i, "pad": self.padding}).encode()
            self.sent_at[i] = time.time()
            pending.append(await self.producer.send(self.topic, value, key=f"p{i}".encode()))
        await asyncio.gather(*pending)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--hops", type=int, default=5)
    args = parser.parse_args()
    options = client_options(Settings(kafka_bootstrap=args.bootstrap))
    heap.settle()  # collected as talkstream's processes are, as the inline handler is
    asyncio.run(relay(options, args.prefix, args.hops))


if __name__ == "__main__":
    main()

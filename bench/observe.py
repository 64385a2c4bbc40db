"""What the benchmark observes besides HTTP answers: the lifecycle topic and the stand-ins.

:class:`LifecycleWatch` reads ``<app>-lifecycle`` (the documented analytics contract) from the
start, without a consumer group, and keeps each request's terminal state. :class:`Talkable`
reads the receipt clock and the accepted events of the Talkable stand-in. :class:`InFlight`
samples the OpenAI stand-in's ``/_stats`` (calls being answered right now).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.lifecycle import TERMINAL

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset(state.value for state in TERMINAL)
EVENT_NUMBER_PREFIX = "generate_text_complete-"
WATCH_FETCH_MIN_BYTES = 1 << 20
WATCH_FETCH_WAIT_MS = 100


class LifecycleWatch:
    def __init__(self, options: Mapping[str, Any], topic: str, partitions: int) -> None:
        # options: the Kafka client options (``client_options(settings)``)
        self._options, self._topic, self._partitions = options, topic, partitions
        self.terminal: dict[str, str] = {}
        self.terminal_events: collections.Counter[str] = collections.Counter()
        self.transitions = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # it fetches at most every WATCH_FETCH_WAIT_MS: with the default (answer as soon as one
        # record is there) it sent the broker ~2 fetches per webhook, broker CPU the benchmark
        # then counted as talkstream's; the phases wait on it, so 0.1 s adds nothing they time
        consumer = AIOKafkaConsumer(
            **self._options,
            enable_auto_commit=False,
            fetch_min_bytes=WATCH_FETCH_MIN_BYTES,
            fetch_max_wait_ms=WATCH_FETCH_WAIT_MS,
        )
        await consumer.start()
        assigned = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    self._see(message.value)

    def _see(self, raw: bytes | None) -> None:
        try:
            event = json.loads(raw or b"null")
            request_id, state = event["request_id"], event["state"]
        except (ValueError, TypeError, KeyError):
            return
        self.transitions += 1
        if state in TERMINAL_STATES:
            self.terminal.setdefault(request_id, state)
            self.terminal_events[request_id] += 1

    async def wait_terminal(
        self, request_ids: Iterable[str], timeout: float, tick: Callable[[int], None]
    ) -> set[str]:
        """Wait until every request is terminal or ``timeout`` passes; the ones that are not."""
        waiting = set(request_ids)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # the watcher died: say why
            done = {rid for rid in waiting if rid in self.terminal}
            waiting -= done
            tick(len(done))
            if waiting:
                await asyncio.sleep(0.05)
        return waiting

    def states(self, request_ids: Iterable[str]) -> collections.Counter[str]:
        return collections.Counter(self.terminal.get(rid, "not_terminal") for rid in request_ids)

    def repeated_terminals(self, request_ids: Iterable[str]) -> int:
        """Terminal transitions beyond one per request (a re-delivered lifecycle event)."""
        return sum(max(0, self.terminal_events[rid] - 1) for rid in request_ids)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await _stop(self._consumer)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    # aiokafka 0.14's group-less consumer re-raises its own cancelled task on stop
    with contextlib.suppress(asyncio.CancelledError):
        await consumer.stop()


async def wait_caught_up(
    options: Mapping[str, Any], groups: dict[str, list[str]], partitions: int, timeout: float
) -> float | None:
    """Wait until each consumer group has committed every record of its topics (the worker is
    idle: its projector has written everything too); the seconds it took, or None at the
    timeout (logged with the partitions still behind). ``groups``: group → the topics it
    reads."""
    admin = AIOKafkaAdminClient(**options)
    ends = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await asyncio.gather(admin.start(), ends.start())
    started = time.monotonic()
    behind: dict[str, dict[str, int]] = {}
    try:
        while time.monotonic() - started < timeout:
            behind = {}
            for group, topics in groups.items():
                parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
                committed = await admin.list_consumer_group_offsets(group, partitions=parts)
                end = await ends.end_offsets(parts)
                lagging = {}
                for tp in parts:  # a partition the group never committed may read -1
                    done = max(committed[tp].offset, 0) if tp in committed else 0
                    if end[tp] > done:
                        lagging[f"{tp.topic}[{tp.partition}]"] = end[tp] - done
                if lagging:
                    behind[group] = lagging
            if not behind:
                return round(time.monotonic() - started, 1)
            await asyncio.sleep(0.5)
        log.warning("consumer groups still behind after %.0f s: %s", timeout, behind)
        return None
    finally:
        await admin.close()
        await _stop(ends)


@dataclass
class Receipts:
    """First 2xx arrival per (site, event number), and how many 2xx arrivals in all."""

    first: dict[tuple[str, str], float] = field(default_factory=dict)
    accepted_calls: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )

    def published_at(self, site: str, request_id: str) -> float | None:
        return self.first.get((site, EVENT_NUMBER_PREFIX + request_id))


class Talkable:
    def __init__(self, root_url: str) -> None:
        self.root = root_url

    async def receipts(self, site: str) -> Receipts:
        rows = await _get(f"{self.root}/_bench/receipts")
        found = Receipts()
        for row_site, number, received_at, status in rows:
            if row_site != site or not 200 <= status < 300:
                continue
            key = (row_site, str(number))
            found.accepted_calls[key] += 1
            found.first[key] = min(received_at, found.first.get(key, received_at))
        return found

    async def events(self, site: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await _get(f"{self.root}/_events")
        return [e for e in events if e.get("site_slug") == site]


def duplicate_events(events: list[dict[str, Any]]) -> int:
    """Events beyond the first with the same event number (Talkable stores each once)."""
    counts = collections.Counter(str(e.get("event_number")) for e in events)
    return sum(n - 1 for n in counts.values() if n > 1)


class InFlight:
    """Samples the OpenAI stand-in's in-flight calls every ``interval`` seconds."""

    def __init__(self, root_url: str, interval: float = 0.05) -> None:
        self.url, self.interval = f"{root_url}/_stats", interval
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url) as response:
                        stats = await response.json()
                        self.peak = max(self.peak, int(stats["in_flight"]))
                        self.samples += 1
                await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        return await response.json()

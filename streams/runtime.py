"""What the agents use: a clock, the topics, and the dead-letter writer.

The composition root (``streams/app.py``) builds these and hands each agent the pieces it uses;
agents import this module, never the root, so there is no import cycle.
"""

from __future__ import annotations

import base64
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter

from models.events import DeadLetter
from streams.codecs import encode
from streams.errors import DecodeError

log = logging.getLogger(__name__)
T = TypeVar("T")
Source = tuple[str, int, int]  # a record's topic, partition and offset


def child_process(*args: str) -> list[str]:
    """The command that runs ``talkstream <args>`` in a child process (the dev supervisor's
    children, the worker's projector): this interpreter, without the directory it was started
    in on ``sys.path`` (``-P``): a ``models.py`` or ``streams/`` there would be imported
    instead of talkstream's own, and the child would fail to start."""
    return [sys.executable, "-P", "-m", "streams", *args]


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """The worker's wall clock, in epoch milliseconds (deadlines; never decisions)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


def now_ms() -> int:
    return SystemClock().now_ms()


@dataclass(frozen=True)
class Topics:
    """The faust topics the agents read and write (see the catalogue in ``streams.topics``)."""

    requests: Any
    generate: Any
    completions: Any
    lifecycle: Any
    deadletter: Any


class DeadLetters:
    """Writes the dead-letter topic: a message that cannot be used, with where it came from
    and why, so that nothing stops a partition and an operator can look and redrive."""

    def __init__(self, topic: Any, counter: Counter, clock: Clock) -> None:
        self._topic = topic
        self._counter = counter
        self._clock = clock

    async def decoded(
        self,
        decoder: Callable[[bytes | None], T],
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> T | None:
        """The decoded value, or None once a value that does not decode is dead-lettered."""
        try:
            return decoder(value)
        except DecodeError as exc:
            await self.write(
                topic=topic,
                partition=partition,
                offset=offset,
                reason=str(exc),
                key=key,
                value=value,
            )
            return None

    async def write(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        key: bytes | None = None,
        value: bytes | None = None,
        request_id: str | None = None,
        decided: Source | None = None,
        counted: bool = True,
    ) -> Any:
        """Hand the letter to the producer; returns its delivery (awaitable). ``decided``:
        for work the ledger gave up on (which no record held: partition and offset -1), the
        [requests] record (topic, partition, offset) whose decision gave it up. ``counted``:
        False for a letter sent again in place of one Kafka refused (counted once)."""
        letter = DeadLetter(
            topic=topic,
            partition=partition,
            offset=offset,
            reason=reason,
            key=key.decode("utf-8", "replace") if key is not None else None,
            value_b64=base64.b64encode(value).decode("ascii") if value is not None else None,
            request_id=request_id,
            at_ms=self._clock.now_ms(),
            decided_topic=decided[0] if decided else None,
            decided_partition=decided[1] if decided else None,
            decided_offset=decided[2] if decided else None,
        )
        if counted:
            self._counter.labels(topic=topic).inc()
        log.warning(
            "dead-lettered topic=%s partition=%s offset=%s%s request_id=%s reason=%s",
            topic,
            partition,
            offset,
            f" decided_at={decided[0]}/{decided[1]}/{decided[2]}" if decided else "",
            request_id,
            reason,
        )
        return await self._topic.send(key=key, value=encode(letter))

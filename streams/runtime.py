"""What the agents use: a clock, the topics, and the dead-letter writer.

The composition root (``streams/app.py``) builds these and hands each agent the pieces it uses;
agents import this module, never the root, so there is no import cycle.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from prometheus_client import Counter

from models.events import DeadLetter
from streams.codecs import encode
from streams.errors import DecodeError
from streams.kafka_options import GivenUp

log = logging.getLogger(__name__)
T = TypeVar("T")
Source = tuple[str, int, int]  # a record's topic, partition and offset
# what Kafka refuses a record for, however often it is sent: its size (aiokafka raises it from
# ``send`` for a record over the producer's ``max_request_size``; the broker answers it for one
# over the topic's ``max.message.bytes``)
REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError)


# how long an executor or the projector waits before it reads again a record whose letter Kafka
# did not take (an error Kafka answers at once, an authorization refused, would otherwise have
# the letter sent again without pause; one given up on has waited the request timeout already)
LETTER_AGAIN_SECONDS = 1.0


def refusal(what: str, size: int, topic: str, exc: BaseException) -> str:
    return (
        f"Kafka refused {what} ({size} bytes) for {topic}: {type(exc).__name__} (larger than "
        "the topic's max.message.bytes or the producer's max_request_size)"
    )


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
    and why, so that nothing stops a partition and an operator can look and redrive.

    A letter is counted (``talkstream_dead_letters_total``) and logged "dead-lettered" once
    Kafka acknowledged it, not when it is handed to the producer: one Kafka gave up on (no
    leader for longer than the producer's request timeout) was counted and logged, and never
    written. One Kafka did not take is logged "not dead-lettered" with the error; its sender
    sends it again (the ledger decides its batch again; an executor or the projector reads
    the record again: :meth:`decoded`)."""

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
        """The decoded value, or None once a value that does not decode is dead-lettered: its
        letter acknowledged by Kafka (one Kafka refuses for its size goes without the record's
        value; refused too, an ERROR says so). If Kafka did not take the letter otherwise, its
        error is raised: the record is not done with, and its reader must not pass it (commit
        past it) but read it again."""
        try:
            return decoder(value)
        except DecodeError as exc:
            reason = str(exc)
        letter: dict[str, Any] = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "reason": reason,
            "key": key,
            "value": value,
        }
        try:
            await (await self.write(**letter))
        except REFUSED as refused:  # larger than the dead-letter topic takes: without the value
            why = refusal("the letter", len(value or b""), "the dead-letter topic", refused)
            try:
                await (
                    await self.write(
                        **{**letter, "value": None, "reason": f"{reason} [value left out: {why}]"}
                    )
                )
            except REFUSED as again:  # nothing more can go: said, and the record passed
                log.error(
                    "Kafka refused a dead letter even without its value (%s): topic=%s "
                    "partition=%s offset=%s reason=%s",
                    type(again).__name__,
                    topic,
                    partition,
                    offset,
                    reason,
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
    ) -> asyncio.Future[Any]:
        """Hand the letter to the producer; returns its delivery (awaitable), counted and
        logged "dead-lettered" once Kafka acknowledged it (see the class doc). ``decided``:
        for work the ledger gave up on (which no record held: partition and offset -1), the
        [requests] record (topic, partition, offset) whose decision gave it up."""
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
        try:
            sent = await self._topic.send(key=key, value=encode(letter))
        except Exception as exc:  # the producer did not take it (too large, stopped, ...)
            _not_written(letter, exc)
            raise
        delivery: asyncio.Future[Any] = asyncio.ensure_future(sent)
        # counted and said by the time its sender goes on: at once if settled (awaiting it does
        # not wait), else before any awaiter's callback, added after this one
        if delivery.done():
            self._said(delivery, letter)
        else:
            delivery.add_done_callback(lambda done: self._said(done, letter))
        return delivery

    def _said(self, delivery: asyncio.Future[Any], letter: DeadLetter) -> None:
        """A letter's delivery settled: counted and logged if Kafka took it; otherwise logged
        as not written."""
        if delivery.cancelled() or delivery.exception() is not None:
            _not_written(letter, None if delivery.cancelled() else delivery.exception())
            return
        self._counter.labels(topic=letter.topic).inc()
        log.warning(
            "dead-lettered topic=%s partition=%s offset=%s%s request_id=%s reason=%s",
            *_where(letter),
            letter.reason,
        )


def _where(letter: DeadLetter) -> tuple[Any, ...]:
    decided = f" decided_at={letter.decided}" if letter.decided else ""
    return letter.topic, letter.partition, letter.offset, decided, letter.request_id


def _not_written(letter: DeadLetter, failed: BaseException | None) -> None:
    """A letter Kafka did not take: a WARNING that says so (its sender sends it again: the
    class doc); one a stopping process gave up on, which the stop's WARNING counted, a DEBUG
    line."""
    failure = "cancelled" if failed is None else f"{type(failed).__name__}: {failed}"
    if failed is not None and str(failed).startswith(type(failed).__name__):  # (aiokafka's)
        failure = str(failed)
    log.log(
        logging.DEBUG if isinstance(failed, GivenUp) else logging.WARNING,
        "not dead-lettered topic=%s partition=%s offset=%s%s request_id=%s: Kafka did not "
        "take the letter (%s); it is sent again, and its record is not passed until one is "
        "written",
        *_where(letter),
        failure[:300],
    )

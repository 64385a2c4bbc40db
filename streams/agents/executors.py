"""Executor agents: slow work off the person's partition, many at once.

generator: [generate] → OpenAI → GenerationAttempt{Succeeded,Failed} → [requests]
publisher: [completions] → Talkable → PublicationAttempt{Succeeded,Failed} → [requests]

They run a command and report what happened; every retry, re-issue, park and dead letter is
the ledger's decision.

Each command runs in its own task, bounded by a semaphore, so a slow call never blocks a
partition. faust may commit an offset past a command still in flight (and a crash loses it);
the ledger's deadline for every in-flight step re-issues such work, so that is safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from models.events import (
    GenerateText,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    PublishCompletion,
)
from streams.clients.openai_chat import ChatClient
from streams.clients.talkable import TalkableClient
from streams.codecs import decode, encode
from streams.errors import TalkstreamError, UpstreamError
from streams.observability import WorkerMetrics
from streams.runtime import Clock, DeadLetters, Topics
from streams.secrets import SecretBox

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
SERVICES = {"generator": "openai", "publisher": "talkable"}


def register(
    app: Any,
    *,
    topics: Topics,
    secrets: SecretBox,
    chat: ChatClient,
    talkable: TalkableClient,
    generator_max_in_flight: int,
    publisher_max_in_flight: int,
    dead_letters: DeadLetters,
    metrics: WorkerMetrics,
    clock: Clock,
) -> None:
    generator = Generator(chat, secrets, clock)
    publisher = Publisher(talkable, secrets, clock)
    common = {"app": app, "topics": topics, "dead_letters": dead_letters, "metrics": metrics}
    _executor(
        name="generator",
        topic=topics.generate,
        model=GenerateText,
        limit=generator_max_in_flight,
        work=generator,
        **common,
    )
    _executor(
        name="publisher",
        topic=topics.completions,
        model=PublishCompletion,
        limit=publisher_max_in_flight,
        work=publisher,
        **common,
    )


def _executor(
    *,
    app: Any,
    topics: Topics,
    dead_letters: DeadLetters,
    metrics: WorkerMetrics,
    name: str,
    topic: Any,
    model: type[C],
    limit: int,
    work: Callable[[C], Awaitable[BaseModel]],
) -> None:
    in_flight = metrics.in_flight.labels(executor=name)
    retries = metrics.upstream_retries.labels(service=SERVICES[name])

    async def run(command: C, person: str) -> None:
        in_flight.inc()
        try:
            result = await work(command)
            retries.inc(max(getattr(result, "tries", 1) - 1, 0))
            await topics.requests.send(key=person.encode(), value=encode(result))
        except Exception:  # the deadline re-issues what is lost here
            log.exception("%s failed request_id=%s", name, getattr(command, "request_id", "?"))
        finally:
            in_flight.dec()

    async def agent(stream: Any) -> None:
        slots = asyncio.Semaphore(limit)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for event in stream.events():
                msg = event.message
                command = await dead_letters.decoded(
                    lambda raw: decode(model, raw),
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=event.key,
                    value=event.value,
                )
                if command is None:
                    continue
                await slots.acquire()
                task = asyncio.create_task(run(command, command.person))  # type: ignore[attr-defined]
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            for task in tasks:
                task.cancel()

    agent.__name__ = name
    app.agent(topic, name=name)(agent)


class Generator:
    """Runs a ``GenerateText`` and reports what happened; decides nothing."""

    def __init__(self, chat: ChatClient, secrets: SecretBox, clock: Clock) -> None:
        self._chat = chat
        self._secrets = secrets
        self._clock = clock

    async def __call__(
        self, cmd: GenerateText
    ) -> GenerationAttemptSucceeded | GenerationAttemptFailed:
        started = time.monotonic()
        try:
            completion = await self._chat.complete(cmd.chat, self._secrets.open(cmd.openai_api_key))
        except TalkstreamError as exc:
            return GenerationAttemptFailed(
                request_id=cmd.request_id,
                person=cmd.person,
                attempt=cmd.attempt,
                at_ms=self._clock.now_ms(),
                error_class=type(exc).__name__,
                error_message=str(exc)[:500],
                retriable=exc.retriable,
                latency_ms=_since(started),
                tries=exc.tries if isinstance(exc, UpstreamError) else 1,
            )
        return GenerationAttemptSucceeded(
            request_id=cmd.request_id,
            person=cmd.person,
            attempt=cmd.attempt,
            at_ms=self._clock.now_ms(),
            text=completion.text,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_ms=_since(started),
            tries=completion.tries,
        )


class Publisher:
    """Runs a ``PublishCompletion`` and reports what happened; whether a failure is retried,
    parked or dead-lettered is the ledger's decision."""

    def __init__(self, talkable: TalkableClient, secrets: SecretBox, clock: Clock) -> None:
        self._talkable = talkable
        self._secrets = secrets
        self._clock = clock

    async def __call__(
        self, cmd: PublishCompletion
    ) -> PublicationAttemptSucceeded | PublicationAttemptFailed:
        try:
            publication = await self._talkable.publish(
                cmd, self._secrets.open(cmd.talkable_api_key)
            )
        except TalkstreamError as exc:
            return PublicationAttemptFailed(
                request_id=cmd.request_id,
                person=cmd.person,
                attempt=cmd.attempt,
                at_ms=self._clock.now_ms(),
                error_class=type(exc).__name__,
                error_message=str(exc)[:500],
                retriable=exc.retriable,
                status=exc.status if isinstance(exc, UpstreamError) else None,
                tries=exc.tries if isinstance(exc, UpstreamError) else 1,
            )
        return PublicationAttemptSucceeded(
            request_id=cmd.request_id,
            person=cmd.person,
            site=cmd.site,
            redrive=cmd.redrive,
            attempt=cmd.attempt,
            at_ms=self._clock.now_ms(),
            duplicate=publication.duplicate,
            tries=publication.tries,
        )


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

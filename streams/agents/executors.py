"""Executor agents: slow work off the person's partition, many at once.

generator: [generate] → OpenAI → GenerationSucceeded | GenerationFailed → [requests]
publisher: [completions] → Talkable → PublicationSucceeded | PublicationFailed → [requests]

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
    GenerationFailed,
    GenerationSucceeded,
    PublicationFailed,
    PublicationSucceeded,
    PublishCompletion,
)
from streams.app import Runtime, now_ms
from streams.codecs import decode, encode
from streams.errors import PublishError, TalkstreamError, UpstreamError

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
SERVICES = {"generator": "openai", "publisher": "talkable"}


def register(rt: Runtime) -> None:
    _executor(
        rt,
        "generator",
        rt.topics.generate,
        GenerateText,
        rt.settings.generator_max_in_flight,
        lambda cmd: _generate(rt, cmd),
    )
    _executor(
        rt,
        "publisher",
        rt.topics.completions,
        PublishCompletion,
        rt.settings.publisher_max_in_flight,
        lambda cmd: _publish(rt, cmd),
    )


def _executor(
    rt: Runtime,
    name: str,
    topic: Any,
    model: type[C],
    limit: int,
    work: Callable[[C], Awaitable[BaseModel]],
) -> None:
    in_flight = rt.metrics.in_flight.labels(executor=name)
    retries = rt.metrics.upstream_retries.labels(service=SERVICES[name])

    async def run(command: C, person: str) -> None:
        in_flight.inc()
        try:
            result = await work(command)
            retries.inc(max(getattr(result, "tries", 1) - 1, 0))
            await rt.topics.requests.send(key=person.encode(), value=encode(result))
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
                command = await rt.decoded(
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
    rt.app.agent(topic, name=name)(agent)


async def _generate(rt: Runtime, cmd: GenerateText) -> GenerationSucceeded | GenerationFailed:
    started = time.monotonic()
    try:
        completion = await rt.chat.complete(cmd.chat, rt.secrets.open(cmd.openai_api_key))
    except TalkstreamError as exc:
        return GenerationFailed(
            request_id=cmd.request_id,
            person=cmd.person,
            attempt=cmd.attempt,
            at_ms=now_ms(),
            error_class=type(exc).__name__,
            error_message=str(exc)[:500],
            retriable=exc.retriable,
            latency_ms=_since(started),
            tries=exc.tries if isinstance(exc, UpstreamError) else 1,
        )
    return GenerationSucceeded(
        request_id=cmd.request_id,
        person=cmd.person,
        attempt=cmd.attempt,
        at_ms=now_ms(),
        text=completion.text,
        model=completion.model,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        latency_ms=_since(started),
        tries=completion.tries,
    )


async def _publish(rt: Runtime, cmd: PublishCompletion) -> PublicationSucceeded | PublicationFailed:
    try:
        publication = await rt.talkable.publish(cmd, rt.secrets.open(cmd.talkable_api_key))
    except TalkstreamError as exc:
        status = exc.status if isinstance(exc, UpstreamError) else None
        if isinstance(exc, PublishError) and not exc.retriable:
            await rt.dead_letter(
                topic=rt.topics.completions.get_topic_name(),
                partition=-1,
                offset=-1,
                reason=str(exc)[:500],
                key=cmd.request_id.encode(),
                value=encode(cmd),
                request_id=cmd.request_id,
            )
        return PublicationFailed(
            request_id=cmd.request_id,
            person=cmd.person,
            attempt=cmd.attempt,
            at_ms=now_ms(),
            error_class=type(exc).__name__,
            error_message=str(exc)[:500],
            retriable=exc.retriable,
            status=status,
            tries=exc.tries if isinstance(exc, UpstreamError) else 1,
        )
    return PublicationSucceeded(
        request_id=cmd.request_id,
        person=cmd.person,
        site=cmd.site,
        redrive=cmd.redrive,
        attempt=cmd.attempt,
        at_ms=now_ms(),
        duplicate=publication.duplicate,
        tries=publication.tries,
    )


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

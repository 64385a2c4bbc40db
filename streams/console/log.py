"""What the console reads from Kafka: the dead letters, and a request's own records.

Both read as ``talkstream replay`` does: a consumer without a group (nothing committed, no
other reader disturbed), manually assigned, up to the end offsets captured when it started.

- :func:`read_letters` lists the newest letters of the dead-letter topic, independently of
  ``talkstream redrive``'s consumer group (which offers each letter once): the page shows every
  letter, and the projection says what became of its request since.
- :func:`read_content` finds one request's webhook (``RequestReceived``: its messages, model,
  usage limit and event number), its generated text (``GenerationAttemptSucceeded``) and the
  results of its last generation that failed and its last publication (their calls) on the
  person's partition of [requests], seeking by time to where they were written. The projection
  keeps neither (it is the lifecycle's), and the log is the source of truth.

A page view is no event of the log: the INFO lines aiokafka logs of each reader's life
("Updating subscribed topics to: ..." at every ``assign``), and of the consumer group of a
redrive the console runs, are left out while the console reads (:class:`ReaderChatter`); its
WARNINGs and ERRORs (a broker out of reach) are kept.

Nothing sealed leaves this module: a letter keeps its reason and source, never its value or
key; content keeps the messages and the text, never ``secrets``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from models.events import (
    DeadLetter,
    GapProbe,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    RequestReceived,
)
from models.params import completion_event_number
from streams.codecs import decode, decode_requests
from streams.errors import DecodeError
from streams.kafka_options import broker_error, reading_consumer, start_reading, stop_consumer
from streams.ops.redrive import does_not_decode, parked_work
from streams.ops.replay import ReplayError, partitions_of
from streams.settings import Settings
from streams.topics import partition_of

LETTERS_PER_PARTITION = 500  # the page lists at most this many letters per partition
SCAN_RECORDS = 20_000  # records of the person's partition read to find a request's own
SEEK_BACK_MS = 5_000  # records are written just after the times the projection recorded
# a reader that stops at end offsets it captured has nothing to wait for at the log's end; the
# broker's wait there (aiokafka's default 500 ms) held up each seek that followed a fetch
FETCH_WAIT_MS = 10


# aiokafka's loggers of a consumer's subscription: INFO at each assign, subscribe, unsubscribe;
# and of its group (a redrive's: "Discovered coordinator ... for group ...-redrive")
READER_LOGGERS = (
    "aiokafka.consumer.subscription_state",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.group_coordinator",
)
_READING = contextvars.ContextVar("console_reading", default=False)


class ReaderChatter(logging.Filter):
    """Leaves out what ``READER_LOGGERS`` log below WARNING while the console reads (in the
    context of :func:`_consumer`, which the reader's own tasks inherit): each page view logged
    two such lines. Any other consumer of the process, and every WARNING, is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _READING.get()


def _quiet_readers() -> None:
    for name in READER_LOGGERS:
        named = logging.getLogger(name)
        if not any(isinstance(f, ReaderChatter) for f in named.filters):
            named.addFilter(ReaderChatter())


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """The console reading the log: its readers' INFO chatter left out (:class:`ReaderChatter`)."""
    _quiet_readers()
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


@dataclass(frozen=True)
class Letter:
    """A dead letter as the console shows it: never its value or key (sealed secrets)."""

    topic: str  # where the dead-lettered message came from
    partition: int
    offset: int
    reason: str
    request_id: str | None
    at_ms: int
    letter_partition: int  # where the letter is on the dead-letter topic
    letter_offset: int
    # work the ledger gave up on (partition and offset -1): the [requests] record it was
    # deciding, "topic/partition/offset" (None: a message, or a letter written before schema 4)
    decided: str | None = None
    # a message this version's code does not decode either: no redrive sends it back (its
    # reader would dead-letter it again), its producer is to fix
    undecodable: bool = False

    @property
    def kind(self) -> str:
        for suffix, kind in (("-completions", "publication"), ("-generate", "generation")):
            if self.topic.endswith(suffix):
                return kind
        return "message"  # a value that did not decode, from any topic


class Message(NamedTuple):
    """One of the webhook's messages."""

    role: str
    text: str
    name: str | None = None  # OpenAI's optional name of its participant


class Sought(NamedTuple):
    """A request's own records as the console looks for them on the person's partition of
    [requests]: its webhook from when it arrived, its text from when it was generated, the
    result of its last failed generation (``failed_ms``) and of its last publication
    (``published_ms``, published or not), each from just before that time (None: not looked
    for)."""

    request_id: str
    person: str
    arrived_ms: int
    generated_ms: int | None = None
    failed_ms: int | None = None
    published_ms: int | None = None


class Calls(NamedTuple):
    """The calls one attempt made to an upstream, as its result says (``tries``): the worker
    retries a 5xx, a timeout or a 429 itself within the attempt, and the lifecycle (so the
    projection's attempts, the timeline's) does not count them. 0: it was not called (a
    refusal that still covered it, a key that could not be opened)."""

    attempt: int
    calls: int
    failed: bool  # the attempt ended failed (its last call too, unless not called)


@dataclass(frozen=True)
class Content:
    """A request's own records, as far as they were found."""

    received: bool = False
    messages: list[Message] = field(default_factory=list)
    model: str | None = None
    max_tokens: int | None = None  # the completion's token cap, whatever its name
    # the name the campaign gave the cap by, when it gave ``max_completion_tokens`` (sent as
    # given); None: the request does not record the name it went by (``max_tokens``, or
    # ``max_completion_tokens`` to a model that takes that only, as its adapter decides)
    cap_given_as: str | None = None
    event_number: str | None = None
    usage_limit: dict[str, int] | None = None
    text: str | None = None
    text_attempt: int | None = None  # the ledger's attempt that generated it (a re-issue: 2, ...)
    # the calls that attempt made to OpenAI, this text's the last (its result's ``tries``): a
    # worker retries a 5xx, a timeout or a 429 within the attempt, which the lifecycle (and
    # so the projection's attempts) does not count
    text_calls: int | None = None
    # the calls of the request's last generation attempt when it failed (no text), and of
    # its last publication attempt, published or not: a request that failed at Talkable after
    # eight 500s the worker retried read "attempt 1", as if Talkable had been called once
    openai_calls: Calls | None = None
    talkable_calls: Calls | None = None
    # the fingerprints of the webhook's keys (never a key), as the overview's OpenAI keys
    # table and the worker's metrics name their targets; "" for a webhook from before
    # the ingress wrote them
    openai_key_id: str = ""
    talkable_key_id: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Letters:
    """The letters read (the newest of each partition, newest first), and how many older ones
    were not read (past ``LETTERS_PER_PARTITION`` in their partition)."""

    found: list[Letter]
    unread: int = 0


async def read_letters(settings: Settings, most: int = LETTERS_PER_PARTITION) -> Letters:
    """The newest letters (up to ``most`` per partition), newest first."""
    topic = settings.topic("deadletter")
    async with _consumer(settings, topic) as (consumer, partitions):
        if not partitions:
            return Letters([])
        ends = await consumer.end_offsets(partitions)
        firsts = await consumer.beginning_offsets(partitions)
        starts = {tp: max(firsts[tp], ends[tp] - most) for tp in partitions}
        unread = sum(starts[tp] - firsts[tp] for tp in partitions)
        todo = {tp: ends[tp] for tp in partitions if ends[tp] > starts[tp]}
        if not todo:
            return Letters([], unread)
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, starts[tp])
        letters: list[Letter] = []
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < todo.get(tp, -1):
                        letter = _letter(record, settings)
                        if letter is not None:
                            letters.append(letter)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    return Letters(sorted(letters, key=lambda x: (x.at_ms, x.letter_offset), reverse=True), unread)


def _letter(record: Any, settings: Settings) -> Letter | None:
    try:
        letter = decode(DeadLetter, record.value)
    except DecodeError:
        return None
    value = None if letter.value_b64 is None else base64.b64decode(letter.value_b64)
    undecodable = (
        value is not None
        and not parked_work(letter, settings)
        and does_not_decode(settings, letter.topic, value) is not None
    )
    return Letter(
        topic=letter.topic,
        partition=letter.partition,
        offset=letter.offset,
        reason=letter.reason,
        request_id=letter.request_id,
        at_ms=letter.at_ms or record.timestamp,
        letter_partition=record.partition,
        letter_offset=record.offset,
        decided=letter.decided,
        undecodable=undecodable,
    )


async def read_content(settings: Settings, sought: Sought) -> Content:
    """The request's webhook, written when it arrived, its text, written when it was
    generated, and the results of its last failed generation and its last publication, each
    looked for from just before that time on the person's partition (:class:`Sought`)."""
    request_id, person, arrived_ms, generated_ms, failed_ms, published_ms = sought
    topic = settings.topic("requests")
    async with _consumer(settings, topic) as (consumer, partitions):
        if not partitions:
            return Content(notes=[f"no topic {topic}"])
        # where every producer of [requests] writes the person's records: over the partitions
        # the topics were created with, not those Kafka has since partitions were added
        tp = TopicPartition(topic, partition_of(settings.partitions)(person.encode()))
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]

        async def found(at_ms: int | None, kinds: Any) -> Any:
            """The request's record of ``kinds`` from just before ``at_ms`` (None: not
            looked for)."""
            if at_ms is None:
                return None
            return await _find(consumer, tp, end, at_ms, lambda m: isinstance(m, kinds), request_id)

        received = await found(arrived_ms, RequestReceived)
        text = await found(generated_ms, GenerationAttemptSucceeded)
        failed = await found(failed_ms, GenerationAttemptFailed)
        published = await found(
            published_ms, PublicationAttemptSucceeded | PublicationAttemptFailed
        )
    return content_of(request_id, received, text, failed=failed, published=published)


def content_of(
    request_id: str, received: Any, generated: Any, *, failed: Any = None, published: Any = None
) -> Content:
    """What the console shows of a request's webhook (``received``, if it is one), of its
    generated text (``generated``, if it is one), and of the calls of its last failed
    generation (``failed``) and of its last publication (``published``), if they are such
    results."""
    text = generated if isinstance(generated, GenerationAttemptSucceeded) else None
    openai_calls = _calls(failed, GenerationAttemptFailed)
    talkable_calls = _calls(published, PublicationAttemptSucceeded | PublicationAttemptFailed)
    if not isinstance(received, RequestReceived):
        return Content(
            text=text.text if text else None,
            text_attempt=text.attempt if text else None,
            text_calls=text.tries if text else None,
            notes=["the webhook was not found on [requests] near its arrival (retention?)"],
            openai_calls=openai_calls,
            talkable_calls=talkable_calls,
        )
    spec = received.spec
    limit = spec.usage_limit
    return Content(
        received=True,
        messages=[_message(m) for m in spec.chat.messages],
        model=spec.chat.model,
        max_tokens=spec.chat.max_tokens,
        cap_given_as=(
            "max_completion_tokens" if "max_completion_tokens" in spec.chat.extra else None
        ),
        event_number=completion_event_number(spec.event_number, request_id),
        usage_limit=limit.model_dump() if limit is not None else None,
        text=text.text if text else None,
        text_attempt=text.attempt if text else None,
        text_calls=text.tries if text else None,
        openai_key_id=received.openai_key_id,
        talkable_key_id=received.talkable_key_id,
        openai_calls=openai_calls,
        talkable_calls=talkable_calls,
    )


def _calls(result: Any, kinds: Any) -> Calls | None:
    """The calls of an attempt's result, if it is one of ``kinds``."""
    if not isinstance(result, kinds):
        return None
    failed = isinstance(result, GenerationAttemptFailed | PublicationAttemptFailed)
    not_called = failed and result.not_called  # said so from schema 10 on; else tries 0
    return Calls(result.attempt, 0 if not_called else result.tries, failed)


def _message(message: dict[str, str]) -> Message:
    name = message.get("name")
    return Message(
        str(message.get("role", "")), str(message.get("content", "")), str(name) if name else None
    )


async def _find(
    consumer: Any, tp: TopicPartition, end: int, from_ms: int, wanted: Any, request_id: str
) -> Any:
    """The last record after ``from_ms`` (minus a margin) that is ``wanted`` for the request,
    reading at most ``SCAN_RECORDS`` records and never past ``end``."""
    found = await consumer.offsets_for_times({tp: max(0, from_ms - SEEK_BACK_MS)})
    start = found[tp].offset if found.get(tp) is not None else end
    if start >= end:
        return None
    consumer.seek(tp, start)
    stop = min(end, start + SCAN_RECORDS)
    match = None
    while await consumer.position(tp) < stop:
        fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=2000)
        for record in fetched.get(tp, []):
            if record.offset >= stop:
                break
            try:
                message = decode_requests(record.value)
            except DecodeError:
                continue
            if isinstance(message, GapProbe):
                continue
            if _names(message, request_id) and wanted(message):
                match = message
                if isinstance(message, RequestReceived):
                    return match  # the first delivery is the webhook
    return match


def _names(message: Any, request_id: str) -> bool:
    """Whether ``message`` is the request's: a webhook's record names its fingerprint, and the
    ledger names a repeat of it (or the same params once the dedupe window passed)
    ``<fingerprint>~<delivery>``."""
    if message.request_id == request_id:
        return True
    return isinstance(message, RequestReceived) and (
        request_id == f"{message.request_id}~{message.delivery_id}"
    )


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The topic's partitions (none when it does not exist: never creates it)."""
    try:
        ids = await partitions_of(settings, topic)
    except ReplayError:
        return []
    except KafkaError as exc:
        raise await broker_error(settings, exc) from exc
    return [TopicPartition(topic, p) for p in ids]


@contextlib.asynccontextmanager
async def _consumer(
    settings: Settings, topic: str
) -> AsyncIterator[tuple[Any, list[TopicPartition]]]:
    """A consumer that will read ``topic``, and the topic's partitions (none: no topic)."""
    with reading():
        async with _reader(settings, topic) as found:
            yield found


@contextlib.asynccontextmanager
async def _reader(
    settings: Settings, topic: str
) -> AsyncIterator[tuple[Any, list[TopicPartition]]]:
    partitions = await _partitions(settings, topic)
    consumer = reading_consumer(
        settings, request_timeout_ms=10_000, fetch_max_wait_ms=FETCH_WAIT_MS
    )
    try:
        await start_reading(consumer, partitions)
    except KafkaError as exc:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await consumer.stop()
        raise await broker_error(settings, exc) from exc
    try:
        yield consumer, partitions
    except KafkaError as exc:
        raise await broker_error(settings, exc) from exc
    finally:
        await stop_consumer(consumer)

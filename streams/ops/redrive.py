"""``talkstream redrive``: re-issue dead-lettered work once its cause is fixed.

Reads the dead-letter topic with its own consumer group (``<app id>-redrive``), so each letter
is redriven once; ``--from-beginning`` reconsiders all of them. For each letter that matches:

- parked work (a ``PublishCompletion`` that ended ``publish_failed``, a ``GenerateText`` that
  ended ``generation_failed``: refused, no quota, waited too long, attempts ran out) becomes a
  ``RedriveRequested`` on the person's partition of [requests]: the ledger, which decides
  every re-issue, runs it again as its next attempt (``publish_failed → publishing``;
  ``generation_failed → admitted`` once a slot is taken again, or ``limited``), with the same
  pacing, deadlines and dead letters as any attempt;
- a poison message (a value that did not decode) goes back to the topic it came from, for a
  worker whose code can now read it.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from models.events import DeadLetter, GenerateText, PublishCompletion, RedriveRequested
from streams.codecs import decode, encode
from streams.errors import DecodeError
from streams.kafka_options import broker_error, client_options, stop_consumer
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RedriveReport:
    examined: int = 0
    redriven: list[str] = field(default_factory=list)  # "request_id → topic" / "topic@offset"
    skipped: int = 0
    unreadable: int = 0


@dataclass(frozen=True)
class Selection:
    request_id: str | None = None
    topic: str | None = None
    reason_contains: str | None = None
    site: str | None = None  # the site of the request (parked work only)
    since_ms: int | None = None  # when the letter was written
    until_ms: int | None = None
    # only these requests' letters (the console redrives what its preview showed)
    request_ids: frozenset[str] | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.request_id is None or letter.request_id == self.request_id)
            and (self.request_ids is None or letter.request_id in self.request_ids)
            and (self.topic is None or letter.topic == self.topic)
            and (
                self.reason_contains is None
                or self.reason_contains.lower() in letter.reason.lower()
            )
            and (self.since_ms is None or letter.at_ms >= self.since_ms)
            and (self.until_ms is None or letter.at_ms <= self.until_ms)
        )


async def redrive(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    from_beginning: bool = False,
    now_ms: Callable[[], int],
) -> RedriveReport:
    topic = settings.topic("deadletter")
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    except KafkaError as exc:
        raise await broker_error(settings, exc) from exc
    finally:
        await admin.close()
    parts = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=f"{settings.app_id}-redrive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    report = RedriveReport()
    try:
        try:
            await consumer.start()
            await producer.start()
        except KafkaError as exc:
            raise await broker_error(settings, exc) from exc
        consumer.assign(parts)
        if from_beginning:
            await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.offset >= ends[tp]:
                        continue
                    await _one(record.value, selection, producer, report, settings, dry_run, now_ms)
            if not dry_run:
                await consumer.commit({tp: ends[tp]})
        await producer.flush()
    finally:
        await producer.stop()
        await stop_consumer(consumer)
    return report


async def _one(
    raw: bytes | None,
    selection: Selection,
    producer: AIOKafkaProducer,
    report: RedriveReport,
    settings: Settings,
    dry_run: bool,
    now_ms: Callable[[], int],
) -> None:
    report.examined += 1
    try:
        letter = decode(DeadLetter, raw)
    except DecodeError:
        report.unreadable += 1
        return
    if not selection.matches(letter) or letter.value_b64 is None:
        report.skipped += 1
        return
    value = base64.b64decode(letter.value_b64)
    key = letter.key.encode() if letter.key is not None else None
    topic = letter.topic
    if letter.topic in (settings.topic("completions"), settings.topic("generate")):
        try:
            command: PublishCompletion | GenerateText = (
                decode(PublishCompletion, value)
                if letter.topic == settings.topic("completions")
                else decode(GenerateText, value)
            )
        except DecodeError:
            report.unreadable += 1
            return
        if selection.site is not None and command.site != selection.site:
            report.skipped += 1
            return
        redrive = RedriveRequested(
            request_id=command.request_id,
            person=command.person,
            at_ms=now_ms(),
            reason=letter.reason[:300],
        )
        topic, key, value = settings.topic("requests"), command.person.encode(), encode(redrive)
        what = f"{command.request_id} → the ledger"
    elif selection.site is not None:  # a poison message belongs to no site we can tell
        report.skipped += 1
        return
    else:
        what = f"{letter.topic}@{letter.partition}:{letter.offset}"
    if not dry_run:
        await producer.send_and_wait(topic, value=value, key=key)
    log.info("redrive %s%s reason=%s", what, " (dry run)" if dry_run else "", letter.reason)
    report.redriven.append(what)

"""``talkstream redrive``: re-issue dead-lettered work once its cause is fixed.

Reads the dead-letter topic with its own consumer group (``<app id>-redrive``), so each letter
is redriven once; ``--from-beginning`` reconsiders all of them. The group's offset in a
partition moves only past letters this run redrove (or cannot read): it stops at the first one
the filters did not select, which a later redrive must still be offered, and it never moves
back; the letters past it that a run moved past are listed in the commit's metadata, and no
later run (but ``--from-beginning``) reads them again. A request redriven by several of its
letters in one run (parked, redriven, parked again) is redriven once, by its latest; a letter
the filters select is left alone when a later letter of its request (read in the same run: a
request's letters share a partition) says it was redriven and parked again since, which the
ledger would not run. For each letter that matches:

- parked work (a ``PublishCompletion`` that ended ``publish_failed``, a ``GenerateText`` that
  ended ``generation_failed``: refused, no quota, waited too long, attempts ran out) becomes a
  ``RedriveRequested`` on the person's partition of [requests]: the ledger, which decides
  every re-issue, runs it again as its next attempt (``publish_failed → publishing``;
  ``generation_failed → admitted`` once a slot is taken again, or ``limited``), with the same
  pacing, deadlines and dead letters as any attempt;
- a message of a topic (one that did not decode, or that the ledger failed on) goes back to
  the topic it came from, for a worker whose code can now read it, or use it: only when this
  version's code decodes it as its topic's value. One that still does not decode is left out
  and named (the report's ``undecodable``): sent back, it is dead-lettered again as a new
  letter, and the run would have said "redriven" of it. Its producer is to fix; its letter
  stays in the dead-letter topic, and ``--from-beginning`` offers it again (after a deploy
  that reads it).
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from models.events import (
    DeadLetter,
    GenerateText,
    PublishCompletion,
    RedriveRequested,
)
from models.params import site_identity
from models.state import Policy, never_parked
from streams.codecs import decode, decode_requests, encode
from streams.errors import DecodeError
from streams.kafka_options import (
    broker_error,
    client_options,
    committed_with_metadata,
    stop_consumer,
)
from streams.ops.audit import FAILED
from streams.ops.replay import partitions_of
from streams.settings import Settings
from streams.topics import CATALOGUE, partition_of

log = logging.getLogger(__name__)

PARKED = frozenset(FAILED)  # the states a redrive leads out of
# a commit lists at most this many ranges of letters past its offset that the runs moved past
# (about 20 bytes each: far below the broker's offset.metadata.max.bytes, 4 KB by default);
# those beyond are offered again, as every one of them was before the commits listed any
PAST_RANGES = 128

DAY_MS = 24 * 3600 * 1000

Ranges = list[tuple[int, int]]  # half-open offset ranges, ascending, apart


@dataclass(frozen=True)
class Redriven:
    """A letter a redrive sent (or, in a dry run, would send), as the letter tells of it: its
    reason, the site of its request, where it came from. Never its value: a command's sealed
    keys are in it."""

    what: str  # "request_id → the ledger" / "topic@partition:offset"
    reason: str
    topic: str  # the letter's source: its topic, partition and offset
    partition: int
    offset: int
    site: str | None = None  # parked work's (a message that did not decode has none we know)
    request_id: str | None = None  # parked work's: the request the ledger runs again
    # work the ledger gave up on (partition and offset -1: its command was never read from a
    # record): the [requests] record it was deciding, "topic/partition/offset"
    decided: str | None = None
    written_ms: int | None = None  # when the letter was written (which request of its id)

    def __str__(self) -> str:
        """One line: what goes where, the site, the letter's source and its reason (on one
        line whatever it holds)."""
        site = f"  site={self.site}" if self.site is not None else ""
        source = f"  from={self.topic}"
        if self.partition >= 0:
            source += f"/{self.partition}/{self.offset}"
        if self.decided is not None:
            source += f"  decided_at={self.decided}"
        return f"{self.what}{site}{source}  reason={' '.join(self.reason.split())}"


@dataclass
class RedriveReport:
    examined: int = 0
    redriven: list[Redriven] = field(default_factory=list)
    skipped: int = 0
    unreadable: int = 0
    # letters that kept no record (a record Kafka refused for its size, a message with no
    # value): nothing to send back under any filters, so not "not selected"; passed over
    empty: int = 0
    superseded: int = 0  # letters of a request a later letter of this run redrives
    # more letters of a record another letter of this run sends back (a message dead-lettered
    # twice: a ledger that re-read it after a restart, before it moved its mark past it)
    repeated: int = 0
    not_parked: list[str] = field(default_factory=list)  # selected; the projection says done
    # selected, of an earlier attempt than the request's latest letter (not selected): the
    # ledger runs only the attempt parked now
    earlier_attempt: list[str] = field(default_factory=list)
    # selected, parked longer ago than the ledger keeps parked requests: it has forgotten them
    too_old: list[str] = field(default_factory=list)
    # selected, of a webhook whose params did not fit the person's ledger entry: given up on at
    # once, never parked, so the ledger would run nothing (it said "redriven" of them before)
    never_parked: list[str] = field(default_factory=list)
    # selected, a message this version's code does not decode either: sent back, its reader
    # would dead-letter it again as a new letter (it was sent, and said "redriven", before)
    undecodable: list[str] = field(default_factory=list)


_STAGES = ("generating", "publishing")  # in the order a request goes through them


@dataclass(frozen=True, order=True)
class Parking:
    """The attempt a letter of parked work is of, in the order a request's parkings happen (a
    redriven generation is generated, then published; a publication is never generated
    again)."""

    rank: int  # the stage's place in _STAGES
    attempt: int

    def __str__(self) -> str:
        return f"{_STAGES[self.rank]} attempt {self.attempt}"


async def _write(producer: AIOKafkaProducer, settings: Settings, send: _Send) -> None:
    """``send`` written, acknowledged; one for [requests] to its person's partition among the
    count the topics were created with (the ledger's), never among those the topic has now
    (:func:`~streams.topics.partition_of`); one for another topic where Kafka puts it."""
    partition = None
    if send.topic == settings.topic("requests") and send.key is not None:
        partition = partition_of(settings.partitions)(send.key)
    await producer.send_and_wait(send.topic, value=send.value, key=send.key, partition=partition)


@dataclass(frozen=True)
class _Send:
    topic: str
    key: bytes | None
    value: bytes
    at_ms: int
    request_id: str | None  # the letter's (a poison message has none)
    shown: Redriven  # what the report says of it
    parking: Parking | None = None  # parked work's: the attempt its letter is of

    @property
    def what(self) -> str:
        return self.shown.what


@dataclass(frozen=True)
class Selection:
    request_id: str | None = None
    topic: str | None = None
    reason_contains: str | None = None
    site: str | None = None  # the site of the request, in any case (parked work only)
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
    states: Callable[[list[str]], dict[str, str]] | None = None,
) -> RedriveReport:
    """``states``: the projection's state of each request it has, to leave out those that are
    not parked any more (redriven since, or a letter of an earlier attempt): the ledger would
    ignore their redrive, and a report that said "redriven" would not be true. A request the
    projection has not seen yet is sent, and the ledger decides."""
    topic = settings.topic("deadletter")
    try:
        # a topic that does not exist is said as replay says it (describing it alone answered
        # "no partitions": "0 dead letters examined", as if the app had none)
        numbers = await partitions_of(settings, topic)
    except KafkaError as exc:
        raise await broker_error(settings, exc) from exc
    parts = [TopicPartition(topic, number) for number in numbers]
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
        committed = await _committed(consumer, parts)
        if from_beginning:
            await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        sends: dict[str, _Send] = {}  # by request (or poison message): its latest letter
        parkings: dict[str, Parking] = {}  # by request: the latest attempt a letter is of
        held: dict[TopicPartition, int] = {}  # the first letter not selected, by partition
        moved: dict[TopicPartition, list[int]] = {}  # the letters past which this run moves
        for tp in parts:
            before = [] if from_beginning else committed.get(tp, (0, []))[1]
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.offset >= ends[tp] or _within(before, record.offset):
                        continue  # an earlier run redrove it (or could not read it)
                    report.examined += 1
                    send = _one(
                        record.value, selection, report, settings, now_ms, parkings, record.key
                    )
                    if isinstance(send, _Send):
                        _keep_latest(sends, send, report)
                    if send is _Left.NOT_SELECTED:
                        held.setdefault(tp, record.offset)
                    else:
                        moved.setdefault(tp, []).append(record.offset)
        latest = _latest_attempts(sends, parkings, report)
        for send in _remembered(_still_parked(latest, states, report), now_ms(), report):
            if not dry_run:
                await _write(producer, settings, send)
            dry = " (dry run)" if dry_run else ""
            log.info("redrive %s%s reason=%s", send.what, dry, send.shown.reason)
            report.redriven.append(send.shown)
        await producer.flush()
        if not dry_run:
            await _commit(consumer, parts, committed, held, ends, moved)
    finally:
        await producer.stop()
        await stop_consumer(consumer)
    return report


def _latest_attempts(
    sends: dict[str, _Send], parkings: dict[str, Parking], report: RedriveReport
) -> dict[str, _Send]:
    """Leave alone a letter of an earlier attempt than its request's latest letter: the
    request was redriven since and parked again, by a letter these filters did not select."""
    kept = {}
    for what, send in sends.items():
        latest = parkings.get(send.request_id or "")
        if send.parking is not None and latest is not None and latest > send.parking:
            report.earlier_attempt.append(
                f"{send.request_id} (a letter of {send.parking}; parked since by {latest},"
                " whose letter the filters did not select)"
            )
        else:
            kept[what] = send
    return kept


def _still_parked(
    sends: dict[str, _Send],
    states: Callable[[list[str]], dict[str, str]] | None,
    report: RedriveReport,
) -> list[_Send]:
    ids = [send.request_id for send in sends.values() if send.request_id is not None]
    known = states(ids) if states is not None and ids else {}
    kept = []
    for send in sends.values():
        state = known.get(send.request_id or "")
        if state is not None and state not in PARKED:
            report.not_parked.append(f"{send.request_id} ({state})")
        else:
            kept.append(send)
    return kept


def _remembered(sends: list[_Send], now: int, report: RedriveReport) -> list[_Send]:
    """Leave out parked work whose letter is older than the ledger keeps parked requests (the
    fingerprints' retention): the ledger has forgotten it (at the person's next webhook, or
    with the person) and would change nothing, while the projection still shows it parked.
    The report says so, and what to do instead."""
    retention_ms = Policy().fingerprint_retention_ms
    kept = []
    for send in sends:
        age_ms = now - send.at_ms
        if send.parking is None or age_ms < retention_ms:
            kept.append(send)
            continue
        report.too_old.append(
            f"{send.request_id} (parked {age_ms // DAY_MS} days ago; the ledger has forgotten it"
            f" after {retention_ms // DAY_MS} days and would change nothing: send the webhook"
            " again from Talkable, a new request)"
        )
    return kept


def _keep_latest(sends: dict[str, _Send], send: _Send, report: RedriveReport) -> None:
    """A request's letters may lie in several partitions (a generation's and a publication's):
    the one written last says why it is parked now. A message's letters (one dead-lettered
    more than once) send it back once."""
    earlier = sends.get(send.what)
    if earlier is not None:
        if send.shown.request_id is None:  # a message sent back to its topic: one record's
            report.repeated += 1
        else:
            report.superseded += 1
        if earlier.at_ms > send.at_ms:
            return
        del sends[send.what]  # and sent in the latest one's turn
    sends[send.what] = send


async def _commit(
    consumer: AIOKafkaConsumer,
    parts: list[TopicPartition],
    committed: dict[TopicPartition, tuple[int, Ranges]],
    held: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    moved: dict[TopicPartition, list[int]],
) -> None:
    """Past what this run redrove, up to the first letter it did not select, and never back (a
    ``--from-beginning`` run does not offer again what an earlier run redrove); the letters
    past that offset which this run or an earlier one moved past are listed with it (its
    metadata), so that no later run offers them again: a message that did not decode, which no
    projection says is done, was sent back to its topic by each run whose filters passed over
    a letter before it (and the copies dead-lettered again with it, doubling at each run)."""
    offsets = {}
    for tp in parts:
        before, listed = committed.get(tp, (0, []))
        position = max(held.get(tp, ends[tp]), before)
        past = _merged(listed + [(offset, offset + 1) for offset in moved.get(tp, [])])
        while past and past[0][0] <= position:  # those the offset itself now passes
            position = max(position, past.pop(0)[1])
        if tp not in committed or (position, past[:PAST_RANGES]) != (before, listed):
            offsets[tp] = (position, json.dumps({"redriven": past[:PAST_RANGES]}))
    if offsets:
        await consumer.commit(offsets)


async def _committed(
    consumer: AIOKafkaConsumer, parts: list[TopicPartition]
) -> dict[TopicPartition, tuple[int, Ranges]]:
    """Each partition's committed offset, with the letters past it that its commit lists."""
    found = await committed_with_metadata(consumer, set(parts))
    return {tp: (at, _past(metadata)) for tp, (at, metadata) in found.items() if at >= 0}


def _past(metadata: str) -> Ranges:
    """The ranges of letters past the committed offset that a commit lists; none from a
    commit without them (an earlier version's)."""
    try:
        listed = json.loads(metadata)["redriven"]
        return _merged([(int(start), int(stop)) for start, stop in listed])
    except (ValueError, TypeError, KeyError):
        return []


def _merged(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def _within(ranges: Ranges, offset: int) -> bool:
    at = bisect.bisect_right(ranges, (offset, math.inf)) - 1  # the last range starting by it
    return at >= 0 and offset < ranges[at][1]


def parked_work(letter: DeadLetter, settings: Settings) -> bool:
    """A letter of work the ledger gave up on: its command's topic, at partition -1 (no record
    held it). A letter of [generate] or [completions] read from a record (partition 0 or more)
    is a message that did not decode there: it goes back to its topic, as any other topic's."""
    commands = (settings.topic("completions"), settings.topic("generate"))
    return letter.topic in commands and letter.partition < 0


def does_not_decode(settings: Settings, topic: str, value: bytes) -> str | None:
    """Why ``value`` does not decode as what its topic's reader takes (the ledger's
    [requests] value, the executors' commands, the projector's event), as its reader would
    dead-letter it; None if it decodes, or for a topic none of our readers has."""
    read = {  # the value types of the topics our readers take (the catalogue's)
        settings.topic(spec.name): spec.values
        for spec in CATALOGUE
        if spec.name in ("generate", "completions", "lifecycle")
    }
    try:
        if topic == settings.topic("requests"):
            decode_requests(value)
        elif topic in read:
            decode(read[topic], value)
    except DecodeError as exc:
        return str(exc)
    return None


class _Left(Enum):
    """A letter not redriven: by these filters (a later run is still offered it), or by any
    (nothing of it can be sent back: no later run waits for it)."""

    NOT_SELECTED = "not selected"
    NEVER = "never"


def _one(
    raw: bytes | None,
    selection: Selection,
    report: RedriveReport,
    settings: Settings,
    now_ms: Callable[[], int],
    parkings: dict[str, Parking],
    raw_key: bytes | None = None,
) -> _Send | _Left:
    """What to send for one letter, or why nothing is sent; ``parkings`` learns the attempt
    of every letter of parked work, selected or not. ``raw_key``: the letter's record key,
    the message's key as received (the letter's ``key`` is its text, any byte that is not
    UTF-8 replaced: sent back so, the message would land in another partition)."""
    try:
        letter = decode(DeadLetter, raw)
    except DecodeError:
        report.unreadable += 1
        return _Left.NEVER
    if letter.value_b64 is None:  # nothing to send back, under any filters
        report.empty += 1
        return _Left.NEVER
    value = base64.b64decode(letter.value_b64)
    key = raw_key if raw_key is not None else None if letter.key is None else letter.key.encode()
    topic = letter.topic
    site: str | None = None
    request_id: str | None = None
    parking: Parking | None = None
    command: PublishCompletion | GenerateText | None = None
    if parked_work(letter, settings):
        try:
            command = (
                decode(PublishCompletion, value)
                if letter.topic == settings.topic("completions")
                else decode(GenerateText, value)
            )
        except DecodeError:
            report.unreadable += 1
            return _Left.NEVER
        parking = Parking(int(isinstance(command, PublishCompletion)), command.attempt)
        parkings[command.request_id] = max(parking, parkings.get(command.request_id, parking))
    if not selection.matches(letter):
        report.skipped += 1
        return _Left.NOT_SELECTED
    if command is not None and parking is not None:
        # the site in any case: ``Shop`` and ``shop`` are one site (``site_identity``)
        if selection.site is not None and site_identity(command.site) != site_identity(
            selection.site
        ):
            report.skipped += 1
            return _Left.NOT_SELECTED
        if never_parked(letter.reason):
            report.never_parked.append(
                f"{command.request_id} (its params did not fit the person's ledger entry: it was"
                " never parked, and the ledger would run nothing; once the person's requests in"
                " flight have ended, send the webhook again from Talkable)"
            )
            return _Left.NEVER
        redrive = RedriveRequested(
            request_id=command.request_id,
            person=command.person,
            at_ms=now_ms(),
            reason=letter.reason[:300],
            stage=_STAGES[parking.rank],
            attempt=command.attempt,
        )
        topic, key, value = settings.topic("requests"), command.person.encode(), encode(redrive)
        what = f"{command.request_id} → the ledger"
        site, request_id = command.site, command.request_id
    elif selection.site is not None:  # a poison message belongs to no site we can tell
        report.skipped += 1
        return _Left.NOT_SELECTED
    else:
        what = f"{letter.topic}@{letter.partition}:{letter.offset}"
        still = does_not_decode(settings, letter.topic, value)
        if still is not None:
            report.undecodable.append(
                f"{what} ({still}: sent back, it would be dead-lettered again; fix the producer"
                " that wrote it, the letter stays in the dead-letter topic)"
            )
            return _Left.NEVER
    shown = Redriven(
        what=what,
        reason=letter.reason,
        topic=letter.topic,
        partition=letter.partition,
        offset=letter.offset,
        site=site,
        request_id=request_id,
        decided=letter.decided,
        written_ms=letter.at_ms or None,  # 0: a letter of a version that did not say
    )
    return _Send(topic, key, value, letter.at_ms, letter.request_id, shown, parking)

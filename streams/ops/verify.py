"""``replay --verify``: re-derive [lifecycle] from [requests] and report every difference.

The pure rules (``models.ledger.handle``) run again over [requests] in offset order per
partition, and the lifecycle events they derive are compared with the ones recorded on
[lifecycle], matched by (request_id, type, state, attempt). Every field must be equal except
``schema_version`` (which code wrote it), and a field that the recorded event's type came to
say in a version after the one that wrote it (``models.events.SAID_FROM``: the number a
publication writes under, ``attempted_event_number``, said from schema 9); times, causes,
windows, tokens and errors all come from the messages, never from a clock. Order across
partitions is not compared (it carries no meaning), and an identical re-emission
(at-least-once, after a crash) is counted, not a difference. Read-only, as a rebuild is
(``streams.ops.replay.LogReader``).

On more than one core each share of the [requests] partitions is re-derived in a forked
process of its own (``streams.ops.helpers``; a person's messages, and so its decisions, are
all in one partition) while this process reads [lifecycle], and each matches what it derived
with the recorded events' digests (the derived events come here only when that cannot account
for every recorded one).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from hashlib import sha256
from typing import Any, Literal

from models.events import SAID_FROM, SCHEMA_VERSION, GapProbe, LifecycleEvent
from models.ledger import PersonState, Policy, handle
from streams import heap
from streams.codecs import decode, decode_requests, encode
from streams.errors import DecodeError
from streams.ops.helpers import FORK, Channel, Helper, answers, default_processes, shares
from streams.ops.replay import Identity, LogReader, Progress, Record, Skipped, lifecycle_event
from streams.settings import Settings


@dataclass(frozen=True)
class Difference:
    """``missing``: derived, not recorded; ``unexpected``: recorded, not derived;
    ``changed``: both, with different fields (``fields``: name -> (derived, recorded))."""

    kind: Literal["missing", "unexpected", "changed"]
    request_id: str
    type: str
    state: str
    attempt: int
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def key(self) -> Identity:
        return (self.request_id, self.type, self.state, self.attempt)

    def describe(self) -> str:
        head = f"{self.kind:<10} {self.request_id} {self.type} state={self.state} "
        head += f"attempt={self.attempt}"
        if not self.fields:
            return head
        changes = "; ".join(
            f"{k}: derived={d!r} recorded={r!r}" for k, (d, r) in self.fields.items()
        )
        return f"{head}: {changes}"


@dataclass
class VerifySummary:
    requests_topic: str
    lifecycle_topic: str
    messages: int = 0
    derived: int = 0
    recorded: int = 0
    matched: int = 0
    repeated: int = 0  # identical re-emissions on [lifecycle] (at-least-once), not differences
    differences: list[Difference] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


async def verify(
    settings: Settings,
    requests_topic: str,
    lifecycle_topic: str,
    policy: Policy,
    *,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
    processes: int | None = None,
) -> VerifySummary:
    """Re-derive [lifecycle] from [requests] and report every difference.

    Run it on a quiet pipeline: a request still in flight when the offsets are captured can
    show as ``missing`` (the ledger has not written its next transition yet). Both topics'
    end offsets are captured before either is read, [requests] first.

    ``processes``: how many re-derive (default: one per core); each takes a share of the
    [requests] partitions (a person's messages are all in one) while this process reads
    [lifecycle]. 1 does it all here.
    """
    started = time.monotonic()
    check = Rederivation(policy, VerifySummary(requests_topic, lifecycle_topic))
    with heap.bulk():
        async with (
            LogReader(settings, requests_topic) as requests,
            LogReader(settings, lifecycle_topic) as lifecycle,
        ):
            if on_total:
                on_total(requests.total + lifecycle.total)
            split = shares(requests.bounds, processes or default_processes()) if FORK else []
            whole = False
            if len(split) > 1:
                whole = await _rederive_beside(
                    settings, check, split, requests, lifecycle, progress
                )
            else:
                await _rederive_here(check, requests, lifecycle, progress)
        summary = check.summary if whole else check.compare()
    summary.seconds = time.monotonic() - started
    return summary


async def _rederive_here(
    check: Rederivation, requests: LogReader, lifecycle: LogReader, progress: Progress | None
) -> None:
    await _read_requests(check, requests, progress)
    await _read_recorded(check, lifecycle, progress, [])


async def _read_requests(
    check: Rederivation, requests: LogReader, progress: Progress | None
) -> None:
    async for batch in requests.batches():
        for record in batch:
            check.request(record)
        if progress:
            progress(len(batch))


async def _rederive_beside(
    settings: Settings,
    check: Rederivation,
    split: list[dict[int, tuple[int, int]]],
    requests: LogReader,
    lifecycle: LogReader,
    progress: Progress | None,
) -> bool:
    """A forked process per share of the [requests] partitions re-derives its people's
    decisions (reading its share itself, up to the offsets captured here) while this one reads
    [lifecycle]. Each then matches what it derived with the digests of the recorded events.
    True when that accounts for every recorded event (the summary is whole); otherwise (an
    event not recorded byte for byte as derived, or a request in two shares) the derived
    events are brought here for :meth:`Rederivation.compare` to match field by field."""
    helpers = [
        Helper(f"verify {sorted(share)}", _derive, settings, requests.topic, share, check.policy)
        for share in split
    ]
    try:
        await _read_recorded(check, lifecycle, progress, helpers)
        digests = check.digests()
        read = {}
        for helper, answer in answers(helpers, progress):  # each as soon as it has derived
            read[helper] = answer
            helper.send(digests)
        for helper in helpers:
            check.tally(*read[helper])
        matchings = dict(answers(helpers, progress))
        whole = check.settle([matchings[helper] for helper in helpers])
        for helper in helpers:
            helper.send(not whole)  # whether to send every derived event
        for helper in helpers:
            derived = helper.result(progress)
            if derived is not None:
                check.absorb(derived)
        return whole
    finally:
        for helper in helpers:
            helper.stop()


async def _read_recorded(
    check: Rederivation, lifecycle: LogReader, progress: Progress | None, helpers: list[Helper]
) -> None:
    async for batch in lifecycle.batches():
        for record in batch:
            check.recorded(record)
        if progress:
            progress(len(batch))
        for helper in helpers:
            helper.drain(progress)


def _derive(
    channel: Channel,
    settings: Settings,
    topic: str,
    share: dict[int, tuple[int, int]],
    policy: Policy,
) -> dict[Identity, list[bytes]] | None:
    """A helper's side: re-derive the decisions of one share of the [requests] partitions;
    answer with what it read, then with its match of the recorded events' digests; hand over
    every derived event if asked."""
    check = Rederivation(policy, VerifySummary(topic, ""))

    async def read() -> None:
        async with LogReader(settings, topic, bounds=share) as requests:
            await _read_requests(check, requests, channel.progress)

    with heap.bulk():
        asyncio.run(read())
        channel.answer((check.summary.messages, check.summary.skipped))
        channel.answer(check.match(channel.receive()))
    return check.derived if channel.receive() else None


@dataclass
class Matching:
    """One share's derived events matched with the recorded events' digests (each identity's
    first derived event with every recorded one)."""

    taken: bytes  # a byte a recorded event, in record order: 1 if it matched, else 0
    derived: int = 0
    matched: int = 0
    repeated: int = 0
    missing: list[Identity] = field(default_factory=list)  # once per derived event not recorded


# what most identities were recorded as: once, byte for byte the one derived for it (one
# tuple shared by them all)
_ONCE_SAME: tuple[int] = (0,)
# an identity's recorded events, in record order: the index of the derived event it is byte
# for byte, or its fields (decoded: it is none of them byte for byte)
Recorded = Sequence[dict[str, Any] | int]


class Rederivation:
    """Re-runs the rules over [requests] records (in offset order per partition) and matches
    what they derive with the [lifecycle] records, by each event's identity.

    Derived events are kept as the bytes the ledger would have written (the same codec); a
    recorded record with exactly those bytes matches without being decoded. Any other is
    decoded and compared field by field (every field but ``schema_version``). A helper that
    derived a share matches its events with the recorded ones' SHA-256 digests instead
    (:meth:`match`); when the shares' matches take every recorded record once, that is the
    summary (:meth:`settle`), else its derived events come here for :meth:`compare`."""

    def __init__(self, policy: Policy, summary: VerifySummary) -> None:
        self.policy = policy
        self.summary = summary
        self._states: dict[str, PersonState] = {}
        self.derived: dict[Identity, list[bytes]] = {}
        self._recorded: list[Record] = []

    def request(self, record: Record) -> None:
        self.summary.messages += 1
        try:
            message = decode_requests(record.value)
            if isinstance(message, GapProbe):
                return  # a worker's nudge to its own ledger: it decides nothing
            # the ledger's clock only sets deadlines; the record's time stands in for it
            outcome = handle(
                self._states.get(message.person), message, self.policy, record.timestamp_ms
            )
        except Exception as exc:  # the ledger dead-letters these and keeps its state
            self.summary.skipped.append(
                Skipped(record.topic, record.partition, record.offset, _reason(exc))
            )
            return
        self._states[message.person] = outcome.state
        for event in outcome.events:
            self.derived.setdefault(event.identity(), []).append(encode(event))

    def tally(self, messages: int, skipped: list[Skipped]) -> None:
        """What a helper read from its share of the partitions."""
        self.summary.messages += messages
        self.summary.skipped += sorted(skipped, key=lambda s: (s.partition, s.offset))

    def absorb(self, derived: dict[Identity, list[bytes]]) -> None:
        """What a helper derived from its share of the partitions. A request's events all
        derive from its person's messages, in one partition: the shares' identities do not
        overlap (were one to, its events would follow the ones derived before)."""
        for identity in derived.keys() & self.derived.keys():
            derived[identity] = self.derived[identity] + derived[identity]
        self.derived.update(derived)

    def recorded(self, record: Record) -> None:
        self._recorded.append(record)  # matched once everything is derived

    def digests(self) -> list[bytes]:
        """The recorded events' digests, in record order, for the helpers to match."""
        return [_digest(record.value) for record in self._recorded]

    def match(self, digests: list[bytes]) -> Matching:
        """A helper's side: which recorded events are byte for byte one this share derived
        (an identity is derived more than once when the ledger named a request by an id again:
        each recorded event is matched with the one it is), and what that makes of each
        identity."""
        first = {
            _digest(event): (identity, index)
            for identity, events in self.derived.items()
            for index, event in enumerate(events)
        }
        hits = [first.get(digest) for digest in digests]
        matching = Matching(bytes(hit is not None for hit in hits))
        seen = Counter(hit for hit in hits if hit is not None)
        matching.derived = sum(map(len, self.derived.values()))
        if seen.total() == len(seen) == matching.derived:
            matching.matched = matching.derived  # most: each derived once, recorded once
            return matching
        for identity, ours in self.derived.items():
            for index in range(len(ours)):
                recorded = seen[(identity, index)]
                if recorded:
                    matching.matched += 1
                    matching.repeated += recorded - 1
                else:
                    matching.missing.append(identity)
        return matching

    def settle(self, matchings: list[Matching]) -> bool:
        """The summary from the helpers' matchings, if together they took every recorded
        event exactly once (True); else nothing changes and :meth:`compare` decides."""
        taken = 0  # a byte a recorded event (as one integer): 1 once a share took it
        for matching in matchings:
            theirs = int.from_bytes(matching.taken)
            if taken & theirs:
                return False
            taken |= theirs
        if taken != int.from_bytes(b"\x01" * len(self._recorded)):
            return False
        summary = self.summary
        summary.recorded = len(self._recorded)
        for matching in matchings:
            summary.derived += matching.derived
            summary.matched += matching.matched
            summary.repeated += matching.repeated
            summary.differences += [Difference("missing", *key) for key in matching.missing]
        summary.differences.sort(key=Difference.key)
        self._recorded = []
        return True

    def compare(self) -> VerifySummary:
        summary = self.summary
        first = {
            event: (identity, index)
            for identity, events in self.derived.items()
            for index, event in enumerate(events)
        }
        recorded: dict[Identity, Recorded] = {}
        for record in self._recorded:
            hit = first.get(record.value) if record.value is not None else None
            if hit is not None:
                identity, index = hit
                theirs = recorded.get(identity)
                if theirs is None and index == 0:
                    recorded[identity] = _ONCE_SAME
                else:
                    recorded[identity] = [*(theirs or ()), index]
                continue
            logged = lifecycle_event(record, summary.skipped)
            if logged is not None:
                key = logged.identity()
                recorded[key] = [*recorded.get(key, ()), _comparable(logged)]
        self._recorded = []
        summary.derived = sum(map(len, self.derived.values()))
        summary.recorded = sum(map(len, recorded.values()))
        _compare(self.derived, recorded, summary)
        return summary


def _reason(exc: Exception) -> str:
    """Why a message was skipped, as its dead letter says it (``does not decode: ...``, or
    ``ledger error: ...`` for one the rules failed on)."""
    if isinstance(exc, DecodeError):
        return str(exc)[:300]
    return f"ledger error: {exc!r}"[:300]


def _digest(value: bytes | None) -> bytes:
    # a record without a value matches nothing derived (compare() skips it with its reason)
    return b"" if value is None else sha256(value).digest()


def _comparable(event: LifecycleEvent) -> dict[str, Any]:
    # the event's fields as validated (no dump: a third of --verify's time went to it);
    # schema_version says which code wrote the event, not what was decided
    fields = dict(event.__dict__)
    version = fields.pop("schema_version")
    if version < SCHEMA_VERSION:
        # a field its type says from a later version on (SAID_FROM) is not said by an event
        # an earlier version wrote: left out, it is not compared (the event derived again
        # says it)
        for (type_, name), since in SAID_FROM.items():
            if version < since and type_ == event.type:
                del fields[name]
    return fields


def _same(derived: dict[str, Any], recorded: dict[str, Any]) -> bool:
    if len(derived) == len(recorded):  # every field said: one comparison, in C
        return derived == recorded
    return not _changed(derived, recorded)


def _changed(derived: dict[str, Any], recorded: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields both say and differ on (a recorded event written before a field was said
    on its type does not say it: ``_comparable``), name -> (derived, recorded)."""
    return {
        k: (_plain(derived[k]), _plain(recorded[k]))
        for k in sorted(derived.keys() & recorded.keys())
        if derived[k] != recorded[k]
    }


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _compare(
    derived: dict[Identity, list[bytes]],
    recorded: dict[Identity, Recorded],
    summary: VerifySummary,
) -> None:
    """Each identity's recorded events against its derived ones: a recorded event matches the
    derived event it is (byte for byte, or field for field), once; again, it is a re-emission;
    one that is none of them is a change of the first derived event not matched yet (of the
    first, when all are). Derived events left are missing."""
    for identity, ours in derived.items():
        theirs = recorded.get(identity, ())
        if theirs is _ONCE_SAME and len(ours) == 1:  # most: one event, recorded as derived
            summary.matched += 1
            continue
        fields = _Decoded(ours)
        taken: set[int] = set()
        for got in theirs:
            index = got if isinstance(got, int) else fields.index_of(got)
            if index is None and not isinstance(got, int):
                left = [i for i in range(len(ours)) if i not in taken]
                against = left[0] if left else 0
                taken.add(against)
                changed = _changed(fields(against), got)
                summary.differences.append(Difference("changed", *identity, fields=changed))
            elif index is None or index in taken:
                summary.repeated += 1
            else:
                taken.add(index)
                summary.matched += 1
        missing = len(ours) - len(taken)
        summary.differences.extend(Difference("missing", *identity) for _ in range(missing))
    for identity in recorded.keys() - derived.keys():
        summary.differences.extend(Difference("unexpected", *identity) for _ in recorded[identity])
    # by identity (a stable sort: an identity's own differences keep their order)
    summary.differences.sort(key=Difference.key)


class _Decoded:
    """An identity's derived events' fields, each decoded when first needed."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = events
        self._fields: list[dict[str, Any] | None] = [None] * len(events)

    def __call__(self, index: int) -> dict[str, Any]:
        found = self._fields[index]
        if found is None:
            found = self._fields[index] = _comparable(decode(LifecycleEvent, self._events[index]))
        return found

    def index_of(self, got: dict[str, Any]) -> int | None:
        """The derived event a recorded one equals field for field (None: none)."""
        return next((i for i in range(len(self._events)) if _same(self(i), got)), None)

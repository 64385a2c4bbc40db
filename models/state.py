"""The ledger's per-person state, the facts that change it, and ``evolve``.

``PersonState`` is what the ledger table stores per person (JSON, in the ``ledger`` table's
changelog). A decision (``models.ledger.decide``) states what changes as a list of
:data:`Fact` values; :func:`evolve` applies one, and nothing else ever changes a state:

    Fingerprinted   a delivery was recorded: the request's fingerprint (dedupe)
    Forgotten       fingerprints and parked requests past their retention
    WindowMoved     the usage window after a reservation, a reset or a released slot
    FlightTracked   a request entered or moved on in flight (stage, attempt, deadline)
    FlightEnded     a request left flight (terminal)
    RequestParked   a request given up on, kept so that an operator may redrive it
    RequestUnparked a parked request was redriven

Facts never travel: they are the ledger's own bookkeeping, derived again by any replay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.events import GenerateText, PublishCompletion, RequestReceived
from models.lifecycle import State
from models.usage import Window

Command = GenerateText | PublishCompletion


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True)

    dedupe_window_ms: int = 24 * 3600 * 1000
    fingerprint_retention_ms: int = 30 * 24 * 3600 * 1000
    max_fingerprints: int = 10_000
    generation_deadline_ms: int = 120_000
    publish_deadline_ms: int = 60_000
    max_attempts: int = Field(3, ge=1)
    # how long a command may wait in its target's queue (paced, throttled, circuit open)
    max_wait_ms: int = 15 * 60 * 1000
    # the most a person's entry may encode to (one record of the ledger's changelog): a
    # request that would make it larger ends ``EntryTooLarge`` (:func:`too_large_for_entry`)
    max_entry_bytes: int = Field(768 * 1024, ge=1)

    def deadline_span_ms(self, stage: str) -> int:
        """How long an attempt at ``stage`` may take from its issue: waiting in its target's
        queue counts, so waiting is never mistaken for lost work."""
        call = self.generation_deadline_ms if stage == "generating" else self.publish_deadline_ms
        return self.max_wait_ms + call


class InFlight(BaseModel):
    """A request between admission and its terminal state."""

    model_config = ConfigDict(frozen=True)

    request_id: str = Field(description="the lifecycle entity (a repeat gets its own)")
    request: RequestReceived
    state: Literal[State.GENERATING, State.PUBLISHING]
    attempt: int
    deadline_ms: int
    window_start: int | None = None
    text: str | None = None
    # every later attempt of the publication (re-issued, redriven) writes the same, so Talkable
    # gets the same event again rather than one under the same event number with other data
    # (400 "Duplicate entity")
    written_window: Window | None = Field(
        None, description="the usage window its publication writes back (with a usage limit)"
    )
    redriven: bool = Field(False, description="re-opened by an operator's redrive")


# How many other deliveries of one request are remembered, so their redelivery stays silent.
MAX_ANSWERED_DELIVERIES = 64


class Seen(BaseModel):
    """A request's fingerprint: when it was first accepted, and by which delivery.

    ``answered`` lists the request's other deliveries already decided (duplicates rejected,
    earlier admissions), so a redelivery of any of them after a crash emits nothing again.
    """

    model_config = ConfigDict(frozen=True)

    at_ms: int
    delivery_id: str
    answered: tuple[str, ...] = ()

    def answers(self, delivery_id: str) -> bool:
        return delivery_id == self.delivery_id or delivery_id in self.answered

    def remember(self, delivery_id: str) -> tuple[str, ...]:
        return (*self.answered, delivery_id)[-MAX_ANSWERED_DELIVERIES:]


class ForgottenIds(BaseModel):
    """The fingerprints a person's entry forgot while it lived (past their retention, or the
    oldest past the entry's share of bytes), kept as a Bloom filter of two generations: the
    newer takes :data:`FORGOTTEN_PER_GENERATION` before it becomes the older one, so the
    newest 1,536 to 3,072 are known. A webhook of one of them is a request of its own, not the
    earlier one again: it is named as a repeat is (``<fingerprint>~<delivery>``), never by the
    fingerprint an earlier request was named by, nor given that request's default event number
    (Talkable would take the write-back for the earlier event). A fingerprint never forgotten
    is taken for one about once in seventy when both are full (never while none was
    forgotten), and is named so too: its request is the same."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    newer: bytes = b""  # FORGOTTEN_BITS bits (JSON: base64)
    count: int = 0  # fingerprints added to ``newer``
    older: bytes = b""

    def may_hold(self, fingerprint: str) -> bool:
        spots = _spots(fingerprint)
        return any(
            bits and all(bits[spot >> 3] >> (spot & 7) & 1 for spot in spots)
            for bits in (self.newer, self.older)
        )

    def adding(self, fingerprints: Iterable[str]) -> ForgottenIds:
        newer, count, older = (
            bytearray(self.newer or bytes(FORGOTTEN_BITS // 8)),
            self.count,
            self.older,
        )
        for fingerprint in sorted(fingerprints):  # in one order, whatever the set's
            if count >= FORGOTTEN_PER_GENERATION:
                newer, count, older = bytearray(FORGOTTEN_BITS // 8), 0, bytes(newer)
            for spot in _spots(fingerprint):
                newer[spot >> 3] |= 1 << (spot & 7)
            count += 1
        return ForgottenIds(newer=bytes(newer), count=count, older=older)


# each generation: 16,384 bits, 6 of them a fingerprint's, at most 1,536 fingerprints (0.75%
# false positives when full, 1.5% with both); both take ~5.5 KB of the entry's JSON, out of the
# fingerprints' share (``fingerprint_room``)
FORGOTTEN_BITS = 16384
FORGOTTEN_SPOTS = 6
FORGOTTEN_PER_GENERATION = 1536
FORGOTTEN_IDS_BYTES = 2 * (FORGOTTEN_BITS // 8) * 4 // 3 + 128


def _spots(fingerprint: str) -> list[int]:
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=2 * FORGOTTEN_SPOTS).digest()
    return [
        int.from_bytes(digest[i : i + 2], "big") % FORGOTTEN_BITS for i in range(0, len(digest), 2)
    ]


class PersonState(BaseModel):
    model_config = ConfigDict(frozen=True)

    window: Window | None = None
    inflight: dict[str, InFlight] = Field(default_factory=dict)
    seen: dict[str, Seen] = Field(default_factory=dict)
    # requests given up on (publish_failed, generation_failed) by request_id → when: an
    # operator may redrive them
    parked: dict[str, int] = Field(default_factory=dict)
    # the flight each of them ended with, which a redrive re-issues (none for a request
    # parked by a version that kept only the time)
    parked_flights: dict[str, InFlight] = Field(default_factory=dict)
    # the fingerprints forgotten while the entry lived (None: none yet); a webhook of the
    # person after the entry itself is forgotten (``forgotten``) finds none of them
    forgotten_ids: ForgottenIds | None = None


def forgettable_at(state: PersonState, policy: Policy) -> int | None:
    """When (ms, the messages' own times) nothing the state holds is needed any more, so the
    ledger judges the person's next message as if it had never heard of them: no request in
    flight (never while one is: None), and every fingerprint, parked request and the usage
    window's start past ``fingerprint_retention_ms``. What a webhook then would prune is all
    there is, but for the window, which the Talkable snapshot seeds again (it is what the
    write-backs kept). The ledger deletes such a person's entry from its table some time after
    (``streams.agents.forgetting``): a table keeps only people heard of within retention."""
    if state.inflight:
        return None
    times = [seen.at_ms for seen in state.seen.values()]
    times += state.parked.values()
    if state.window is not None:
        times.append(state.window.start * 1000)
    return max(times, default=0) + policy.fingerprint_retention_ms


def forgotten(state: PersonState, at_ms: int, policy: Policy) -> bool:
    """Whether a message of ``at_ms`` finds the person forgotten (:func:`forgettable_at`)."""
    at = forgettable_at(state, policy)
    return at is not None and at_ms >= at


ENTRY_TOO_LARGE = "EntryTooLarge"
# what :func:`too_large_for_entry` names when a webhook's own params do not fit (not its text)
ITS_PARAMS = "its params"


def never_parked(reason: str) -> bool:
    """Whether a dead letter's reason is that of a webhook given up on at once because its
    params did not fit the person's ledger entry (``models.admission``): it was never parked
    (they are what does not fit), so the ledger finds nothing to run for a redrive of it. A
    text that did not fit (``with its text``) is parked, and a redrive generates it again."""
    return reason.startswith(f"{ENTRY_TOO_LARGE}: ") and f" with {ITS_PARAMS}, " in reason


def entry_bytes(state: PersonState) -> int:
    """The size of the state as the ledger stores it: its JSON, the changelog record's value
    (the ledger's codec: ``streams.codecs.encode``). About a tenth of a decision's time for
    an entry of one request in flight (13 us against 70-130 us): computed only where an entry
    grows by a request's params or a text, on the entry it would become."""
    return len(PersonState.__pydantic_serializer__.to_json(state))


# what a decision may add to an entry unchecked (a parked mark, the window, the fingerprint of a
# request refused for the entry's size): kept free below the budget
ENTRY_SLACK = 4096


def fingerprint_room(policy: Policy) -> int:
    """The bytes of a person's entry their newest fingerprints may take (the oldest go sooner
    past it: ``models.admission``); the rest, less :data:`ENTRY_SLACK`, is for the params and
    texts of their requests in flight or parked (:func:`too_large_for_entry`)."""
    return policy.max_entry_bytes // 4


def too_large_for_entry(state: PersonState, policy: Policy, what: str) -> str | None:
    """Why ``state``, the entry a decision would leave, may not be stored (None: it may): its
    requests in flight or parked would take more than their share of ``max_entry_bytes``. A
    person's entry is one record of the ledger's changelog: over the producer's
    ``max_request_size`` its send stopped the worker (again at every restart, deciding the
    same records again), over the topic's ``max.message.bytes`` it was silently not saved."""
    size = entry_bytes(state.model_copy(update={"seen": {}, "forgotten_ids": None}))
    room = policy.max_entry_bytes - fingerprint_room(policy) - ENTRY_SLACK
    if size <= room:
        return None
    return (
        f"the person's ledger entry would hold {size:,} bytes of requests in flight or parked "
        f"with {what}, more than the {room:,} of MAX_ENTRY_BYTES ({policy.max_entry_bytes:,}) "
        "left for them: their other requests in flight or parked hold their params and texts"
    )


# --- facts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fingerprinted:
    request_id: str
    seen: Seen


@dataclass(frozen=True, slots=True)
class Forgotten:
    fingerprints: frozenset[str] = frozenset()
    parked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class WindowMoved:
    window: Window | None


@dataclass(frozen=True, slots=True)
class FlightTracked:
    flight: InFlight


@dataclass(frozen=True, slots=True)
class FlightEnded:
    request_id: str


@dataclass(frozen=True, slots=True)
class RequestParked:
    at_ms: int
    flight: InFlight


@dataclass(frozen=True, slots=True)
class RequestUnparked:
    request_id: str


Fact = (
    Fingerprinted
    | Forgotten
    | WindowMoved
    | FlightTracked
    | FlightEnded
    | RequestParked
    | RequestUnparked
)


def evolve(state: PersonState, fact: Fact) -> PersonState:
    """The state after one fact; pure, and the only way a state changes."""
    return evolve_all(state, (fact,))


def evolve_all(state: PersonState, facts: Iterable[Fact]) -> PersonState:
    """The state after a decision's facts, in order (what folding :func:`evolve` over them
    gives, with each container copied once rather than once per fact)."""
    changed: dict[str, Any] = {}

    def own(name: str) -> dict[str, Any]:
        """The field's container, copied the first time this decision changes it."""
        if name not in changed:
            changed[name] = dict(getattr(state, name))
        container: dict[str, Any] = changed[name]
        return container

    for fact in facts:
        match fact:
            case Fingerprinted(request_id, seen):
                own("seen")[request_id] = seen
            case Forgotten(fingerprints, parked):
                for name, gone in (("seen", fingerprints), ("parked", parked)):
                    for key in gone:
                        own(name).pop(key, None)
                if fingerprints:
                    ids = changed.get("forgotten_ids", state.forgotten_ids) or ForgottenIds()
                    changed["forgotten_ids"] = ids.adding(fingerprints)
                for key in parked:
                    own("parked_flights").pop(key, None)
            case WindowMoved(window):
                changed["window"] = window
            case FlightTracked(flight):
                own("inflight")[flight.request_id] = flight
            case FlightEnded(request_id):
                own("inflight").pop(request_id, None)
            case RequestParked(at_ms, flight):
                own("parked")[flight.request_id] = at_ms
                own("parked_flights")[flight.request_id] = flight
            case RequestUnparked(request_id):
                own("parked").pop(request_id, None)
                own("parked_flights").pop(request_id, None)
    return state.model_copy(update=changed) if changed else state


# --- what a decision hands to the outside -----------------------------------------------------


class GivenUp(BaseModel):
    """Work given up on, for the dead-letter topic with its reason (an operator may redrive)."""

    model_config = ConfigDict(frozen=True)

    command: Command
    reason: str

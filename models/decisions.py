"""What a decision of the ledger is, and the records it builds.

A :class:`Decision` holds the facts that change the person's state (applied by
``models.state.evolve``), the lifecycle events to record, the commands for the executors and
the work given up on, for the dead-letter topic; an :class:`Outcome` is a decision applied.
The builders make those records from a request's flight: :func:`transition` one lifecycle
event (checked against the table of ``models.lifecycle``), :func:`generate_command` and
:func:`publish_command` the executors' commands. The rules that decide are
``models.admission`` (a webhook) and ``models.ledger`` (everything else).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.events import GenerateText, LifecycleEvent, PublishCompletion, RequestReceived
from models.lifecycle import STATE_AFTER, EventType, State, check_transition
from models.params import completion_event_number
from models.state import Command, Fact, GivenUp, InFlight, PersonState, Policy
from models.usage import Window


@dataclass(frozen=True, slots=True)
class Decision:
    """What one message decides (see the module doc); empty: it changes nothing."""

    facts: list[Fact] = field(default_factory=list)
    events: list[LifecycleEvent] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    dead_letters: list[GivenUp] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision applied: the person's new state and what goes out (a dataclass like
    :class:`Decision`: its parts are validated models already, and validating them again
    cost about 1 µs of the ~32 µs a decision takes, in the ledger and in replay --verify)."""

    state: PersonState
    events: list[LifecycleEvent] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    dead_letters: list[GivenUp] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule of the ledger's table decides with (the worker's clock, ``now_ms``, only
    sets deadlines)."""

    state: PersonState
    policy: Policy
    now_ms: int


# --- builders ---------------------------------------------------------------------------------


def generate_command(flight: InFlight, now_ms: int) -> GenerateText:
    r = flight.request
    return GenerateText(
        request_id=flight.request_id,
        person=r.person,
        site=r.spec.site,
        attempt=flight.attempt,
        issued_at_ms=now_ms,
        chat=r.spec.chat,
        openai_api_key=r.secrets.openai_api_key,
        openai_key_id=r.openai_key_id,
        redrive=flight.redriven,
    )


def publish_command(flight: InFlight, window: Window | None, now_ms: int) -> PublishCompletion:
    """The flight's write-back. ``window`` (the person's now) counts only for a flight that has
    not frozen the window it writes (one tracked by an earlier version)."""
    r = flight.request
    window = flight.written_window or window
    properties = {"generated_text": flight.text or ""}
    if r.spec.usage_limit is not None and window is not None:
        properties["__start_time"] = str(window.start)
        properties["__current_usage_amount"] = str(window.count)
    return PublishCompletion(
        request_id=flight.request_id,
        person=r.person,
        site=r.spec.site,
        email=r.spec.email,
        attempt=flight.attempt,
        issued_at_ms=now_ms,
        event_number=completion_event_number(r.spec.event_number, flight.request_id),
        custom_properties=properties,
        talkable_api_key=r.secrets.talkable_api_key,
        talkable_key_id=r.talkable_key_id,
        redrive=flight.redriven,
        other_event_number=_other_event_number(flight),
    )


def _other_event_number(flight: InFlight) -> str | None:
    """Where the flight's text goes when Talkable holds another request's event under the
    request's own default number (400 "Duplicate entity": an event of other data; the same data
    again is a success): the number of a repeat of this delivery, ``..-<id>~<delivery>``.

    A request named by its fingerprint can be that other request's namesake: the same params
    once the person's entry was forgotten whole (nothing heard from them for the fingerprint
    retention), decided as never heard of. Its own earlier attempts write the same data (the
    text and the window frozen when it was generated), so they cannot be the event Talkable
    holds. None for a number the campaign gave (its own: DuplicateEventNumber), for a repeat's
    id (its own delivery's), and for a flight an earlier version tracked without freezing its
    window (its earlier attempts may hold other data)."""
    r = flight.request
    if r.spec.event_number is not None or "~" in flight.request_id:
        return None
    if r.spec.usage_limit is not None and flight.written_window is None:
        return None
    return completion_event_number(None, f"{flight.request_id}~{r.delivery_id}")


def transition(
    request_id: str,
    r: RequestReceived,
    type_: EventType,
    *,
    after: State | None,
    at_ms: int,
    cause: str,
    **fields: Any,
) -> LifecycleEvent:
    """One transition of ``request_id`` (the lifecycle entity of webhook ``r``); the type
    names the state it reaches, and the table in ``models.lifecycle`` must allow it."""
    state = STATE_AFTER[type_]
    check_transition(request_id, after, state)
    # validated, not ``model_construct``-ed: pydantic's validation (compiled) costs a quarter
    # of construct's per-field Python on this hot path of the ledger and of replay --verify
    return LifecycleEvent(
        type=type_,
        request_id=request_id,
        person=r.person,
        site=r.spec.site,
        state=state,
        previous_state=after,
        at_ms=at_ms,
        cause=cause,
        **fields,
    )

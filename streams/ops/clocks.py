"""The two clocks of a request, for people reading its history (the console, ``audit``).

A webhook is judged at its **event time** (``received_at_ms``: Talkable's rendered
``usage_limit.current_time``, else the arrival), which can be well before it **arrived** at the
ingress (``arrived_at_ms``, a wall clock; None on rows projected before migration 0002). The
transitions the ledger decided on the webhook itself (received, admitted, the first generation
request; or limited, skipped, duplicate) carry the event time; every later one carries a wall
clock (the executor's, the timer's, the operator's). So a timeline places the judgement at the
arrival and measures every step from the arrival: a webhook rendered 44 s before it arrived
does not seem to spend 44 s generating, and first: an event time ahead of the arrival (up to
``MAX_CLOCK_AHEAD_SECONDS``) is later than the executors' times after it. Where the arrival was
not recorded, the event time stands in for it (and ``arrival_known`` says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.lifecycle import State
from streams.projection.tables import RequestRow, TransitionRow


@dataclass(frozen=True)
class Step:
    """One transition on the timeline, with both clocks."""

    state: str
    previous_state: str | None
    type: str
    attempt: int
    cause: str
    error_class: str | None
    error_message: str | None
    latency_ms: int | None
    waited_ms: int | None
    window_start: int | None
    window_count: int | None
    source: str
    at_ms: int  # as recorded: the event time for the webhook's judgement, else a wall clock
    wall_ms: int  # when it happened on a wall clock (the arrival, for the judgement)
    judged: bool  # decided on the webhook itself, at its event time
    since_arrival_ms: int
    # a publication's Talkable event number: attempted, or landed under (migration 0010; None
    # when the timeline was read without it)
    event_number: str | None = None


@dataclass(frozen=True)
class Timeline:
    request: RequestRow
    steps: list[Step]
    arrived_ms: int  # arrival, or the event time when the arrival was not recorded
    arrival_known: bool
    event_ms: int  # the event time it was judged at
    event_offset_ms: int  # event time - arrival: negative when Talkable's clock lagged
    end_to_end_ms: int | None  # arrival -> terminal


# the states the webhook's own judgement moves a request from (at its event time)
_JUDGED_FROM = frozenset({State.RECEIVED.value, State.ADMITTED.value})
# the terminal states the judgement itself can reach (limited also after a redrive, later)
_JUDGED_TERMINAL = frozenset(
    {State.LIMITED.value, State.SKIPPED.value, State.REJECTED_DUPLICATE.value}
)


def ended_ms(request: RequestRow) -> int | None:
    """When a request reached its terminal state, on a wall clock (None while in flight): the
    arrival for a webhook judged terminal at once (its recorded time is the event time, which
    can be before it arrived), else the time recorded. From the row alone, for lists; a
    timeline (:func:`timeline_of`) tells the same from the transitions."""
    if not request.terminal or request.terminal_at_ms is None:
        return None
    if request.state in _JUDGED_TERMINAL and request.terminal_at_ms == request.received_at_ms:
        return _arrived(request)
    return request.terminal_at_ms


def end_to_end_ms(request: RequestRow) -> int | None:
    """Arrival → terminal state (None while in flight)."""
    ended = ended_ms(request)
    return None if ended is None else ended - _arrived(request)


def in_flight_ms(request: RequestRow, now_ms: int) -> int | None:
    """Arrival → now, for a request not yet terminal (None once it is): how long it has been
    in flight."""
    return None if request.terminal else max(0, now_ms - _arrived(request))


def _arrived(request: RequestRow) -> int:
    return request.arrived_at_ms if request.arrived_at_ms is not None else request.received_at_ms


def timeline_of(
    request: RequestRow, transitions: Sequence[TransitionRow], *, numbered: bool = False
) -> Timeline:
    """The steps, the judgement's at arrival: the transitions the ledger decided on the
    webhook itself carry its event time (which can be far older than the arrival when Talkable
    rendered ``current_time`` early); everything after carries a wall clock. ``numbered``:
    the transitions were read with their Talkable event numbers (migration 0010)."""
    arrival_known = request.arrived_at_ms is not None
    arrived = _arrived(request)

    def judged(t: TransitionRow) -> bool:
        return (
            t.at_ms == request.received_at_ms
            and (t.previous_state or "received") in _JUDGED_FROM
            and t.attempt <= 1
        )

    # the judgement comes first, whatever its event time: the transitions come ordered by the
    # time they carry, and an event time ahead of the arrival (Talkable's clock ahead of ours:
    # the ingress takes a current_time up to MAX_CLOCK_AHEAD_SECONDS ahead) sorted the executor's
    # results, on a wall clock, before the webhook was even received
    steps: list[Step] = []
    judgement = [t for t in transitions if judged(t)]
    for t in [*judgement, *(t for t in transitions if not judged(t))]:
        judging = judged(t)
        wall = arrived if judging else t.at_ms
        steps.append(
            Step(
                state=t.state,
                previous_state=t.previous_state,
                type=t.type,
                attempt=t.attempt,
                cause=t.cause,
                error_class=t.error_class,
                error_message=t.error_message,
                latency_ms=t.latency_ms,
                waited_ms=t.waited_ms,
                window_start=t.window_start,
                window_count=t.window_count,
                source=f"{t.topic}/{t.partition}/{t.offset}",
                at_ms=t.at_ms,
                wall_ms=wall,
                judged=judging,
                since_arrival_ms=wall - arrived,
                event_number=t.event_number if numbered else None,
            )
        )
    end = request.terminal_at_ms if request.terminal else None
    if end is not None and steps and steps[-1].judged:
        end = arrived  # judged at once (limited, skipped, duplicate): no time spent
    return Timeline(
        request=request,
        steps=steps,
        arrived_ms=arrived,
        arrival_known=arrival_known,
        event_ms=request.received_at_ms,
        event_offset_ms=request.received_at_ms - arrived,
        end_to_end_ms=None if end is None else end - arrived,
    )

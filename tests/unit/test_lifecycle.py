"""The request lifecycle of DESIGN.md §3: one table of allowed transitions; anything else
raises."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.lifecycle import (
    STATE_AFTER,
    TERMINAL,
    TRANSITIONS,
    EventType,
    IllegalTransition,
    State,
    check_transition,
)

FAST = settings(max_examples=200, deadline=None)

S = State
# DESIGN.md §3, edge by edge; the self-loops are re-issues of overdue work (next attempt).
DESIGN_EDGES: frozenset[tuple[State | None, State]] = frozenset(
    {
        (None, S.RECEIVED),
        (S.RECEIVED, S.REJECTED_DUPLICATE),
        (S.RECEIVED, S.SKIPPED),
        (S.RECEIVED, S.LIMITED),
        (S.RECEIVED, S.ADMITTED),
        (S.ADMITTED, S.GENERATING),
        (S.GENERATING, S.GENERATING),
        (S.GENERATING, S.GENERATED),
        (S.GENERATING, S.GENERATION_FAILED),
        (S.GENERATED, S.PUBLISHING),
        (S.PUBLISHING, S.PUBLISHING),
        (S.PUBLISHING, S.PUBLISHED),
        (S.PUBLISHING, S.PUBLISH_FAILED),
        # an operator's `talkstream redrive` of a parked publication: it runs again...
        (S.PUBLISH_FAILED, S.PUBLISHING),
        # ...or, as recorded before redrives ran through the ledger, it landed
        (S.PUBLISH_FAILED, S.PUBLISHED),
        # a redriven failed generation takes a slot again, or finds the window full now
        (S.GENERATION_FAILED, S.ADMITTED),
        (S.GENERATION_FAILED, S.LIMITED),
    }
)
REDRIVE = {
    (S.PUBLISH_FAILED, S.PUBLISHING),
    (S.PUBLISH_FAILED, S.PUBLISHED),
    (S.GENERATION_FAILED, S.ADMITTED),
    (S.GENERATION_FAILED, S.LIMITED),
}
DESIGN_TERMINAL = {
    S.REJECTED_DUPLICATE,
    S.SKIPPED,
    S.LIMITED,
    S.PUBLISHED,
    S.PUBLISH_FAILED,
    S.GENERATION_FAILED,
}
SOURCES: list[State | None] = [None, *State]
ALL_PAIRS = list(itertools.product(SOURCES, list(State)))


def test_the_table_is_the_design() -> None:
    table = {(current, new) for current, targets in TRANSITIONS.items() for new in targets}
    assert table == DESIGN_EDGES
    assert set(TERMINAL) == DESIGN_TERMINAL


@pytest.mark.parametrize(
    ("current", "new"),
    [pair for pair in ALL_PAIRS if pair in DESIGN_EDGES],
    ids=lambda s: str(s),
)
def test_every_allowed_transition_is_accepted(current: State | None, new: State) -> None:
    assert check_transition("req-1", current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [pair for pair in ALL_PAIRS if pair not in DESIGN_EDGES],
    ids=lambda s: str(s),
)
def test_every_illegal_transition_raises(current: State | None, new: State) -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_transition("req-1", current, new)

    assert (raised.value.request_id, raised.value.current, raised.value.new) == (
        "req-1",
        current,
        new,
    )
    assert "req-1" in str(raised.value)
    assert str(new) in str(raised.value)


@pytest.mark.parametrize("terminal", sorted(DESIGN_TERMINAL))
def test_nothing_leaves_a_terminal_state_but_a_redrive(terminal: State) -> None:
    for new in State:
        if (terminal, new) in REDRIVE:
            continue
        with pytest.raises(IllegalTransition):
            check_transition("req-1", terminal, new)


def _reachable(start: State | None) -> set[State]:
    seen: set[State] = set()
    frontier = set(TRANSITIONS.get(start, frozenset()))
    while frontier:
        state = frontier.pop()
        if state not in seen:
            seen.add(state)
            frontier |= TRANSITIONS.get(state, frozenset())
    return seen


def test_every_state_is_reachable_and_every_request_can_end() -> None:
    assert _reachable(None) == set(State)
    for state in set(State) - DESIGN_TERMINAL:
        assert _reachable(state) & DESIGN_TERMINAL, f"{state} cannot reach a terminal state"


@FAST
@given(path=st.lists(st.sampled_from(list(State)), max_size=12))
def test_a_path_is_accepted_exactly_when_each_step_is_in_the_table(path: list[State]) -> None:
    steps = list(zip([None, *path], path, strict=False))
    legal = all(step in DESIGN_EDGES for step in steps)
    current: State | None = None
    try:
        for new in path:
            current = check_transition("req-1", current, new)
    except IllegalTransition as exc:
        assert not legal
        assert (exc.current, exc.new) in steps
        assert (exc.current, exc.new) not in DESIGN_EDGES
    else:
        assert legal


def test_every_event_type_names_the_state_it_reaches() -> None:
    assert set(STATE_AFTER) == set(get_args(EventType))
    # every state but a terminal re-entry is reached by exactly one type of event
    assert set(STATE_AFTER.values()) == set(State)
    assert len(set(STATE_AFTER.values())) == len(STATE_AFTER)

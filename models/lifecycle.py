"""Request lifecycle: the states and the one table of allowed transitions (DESIGN.md §3).

    received ─┬─> rejected_duplicate
              ├─> skipped
              ├─> limited
              └─> admitted ─> generating ─┬─> generated ─> publishing ─┬─> published
                                          │                            └─> publish_failed
                                          └─> generation_failed (slot released)

``generating -> generating`` and ``publishing -> publishing`` are re-issues of overdue work
with the next attempt number. ``publish_failed -> published`` is the one way out of a terminal
state: an operator redrove the parked publication (``talkstream redrive``) and it landed.
Anything else is a bug and raises :class:`IllegalTransition`.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    RECEIVED = "received"
    REJECTED_DUPLICATE = "rejected_duplicate"
    SKIPPED = "skipped"
    LIMITED = "limited"
    ADMITTED = "admitted"
    GENERATING = "generating"
    GENERATED = "generated"
    GENERATION_FAILED = "generation_failed"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    PUBLISH_FAILED = "publish_failed"


TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.RECEIVED}),
    State.RECEIVED: frozenset(
        {State.REJECTED_DUPLICATE, State.SKIPPED, State.LIMITED, State.ADMITTED}
    ),
    State.ADMITTED: frozenset({State.GENERATING}),
    State.GENERATING: frozenset({State.GENERATING, State.GENERATED, State.GENERATION_FAILED}),
    State.GENERATED: frozenset({State.PUBLISHING}),
    State.PUBLISHING: frozenset({State.PUBLISHING, State.PUBLISHED, State.PUBLISH_FAILED}),
    State.PUBLISH_FAILED: frozenset({State.PUBLISHED}),  # operator redrive only
}

TERMINAL: frozenset[State] = frozenset(
    {
        State.REJECTED_DUPLICATE,
        State.SKIPPED,
        State.LIMITED,
        State.PUBLISHED,
        State.PUBLISH_FAILED,
        State.GENERATION_FAILED,
    }
)


class IllegalTransition(Exception):
    """A transition outside :data:`TRANSITIONS`: a bug, refused loudly."""

    def __init__(self, request_id: str, current: State | None, new: State) -> None:
        super().__init__(f"illegal transition {current} -> {new} for request_id={request_id}")
        self.request_id = request_id
        self.current = current
        self.new = new


def check_transition(request_id: str, current: State | None, new: State) -> State:
    if new not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(request_id, current, new)
    return new

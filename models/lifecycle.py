"""Request lifecycle: the states and the one table of allowed transitions (DESIGN.md §3).

    received ─┬─> rejected_duplicate
              ├─> skipped
              ├─> limited
              └─> admitted ─> generating ─┬─> generated ─> publishing ─┬─> published
                                          │                            └─> publish_failed
                                          └─> generation_failed (slot released)

``generating -> generating`` and ``publishing -> publishing`` are re-issues of overdue work
with the next attempt number. An operator's redrive (``talkstream redrive``) is the one way out
of a terminal state, and it runs through the ledger like any attempt: ``publish_failed ->
publishing`` publishes the parked text again; ``generation_failed -> admitted`` generates again
once a slot is taken in the person's window (``generation_failed -> limited`` if it is full
now). (``publish_failed -> published`` is a publication redrive as recorded by versions before
the ledger re-issued redrives itself.) Anything else is a bug and raises
:class:`IllegalTransition`.

Each lifecycle event's ``type`` (:data:`EventType`) names one transition and implies the state
it reaches (:data:`STATE_AFTER`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


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
    # an operator's redrive only (``published``: as recorded before redrives ran in the ledger)
    State.PUBLISH_FAILED: frozenset({State.PUBLISHING, State.PUBLISHED}),
    # an operator's redrive only: a slot is taken again, or the window is full now
    State.GENERATION_FAILED: frozenset({State.ADMITTED, State.LIMITED}),
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


EventType = Literal[
    "RequestReceived",
    "DuplicateRejected",
    "RequestSkipped",
    "UsageLimited",
    "RequestAdmitted",
    "GenerationStarted",
    "TextGenerated",
    "GenerationFailed",
    "PublicationStarted",
    "CompletionPublished",
    "PublicationFailed",
]

STATE_AFTER: dict[EventType, State] = {
    "RequestReceived": State.RECEIVED,
    "DuplicateRejected": State.REJECTED_DUPLICATE,
    "RequestSkipped": State.SKIPPED,
    "UsageLimited": State.LIMITED,
    "RequestAdmitted": State.ADMITTED,
    "GenerationStarted": State.GENERATING,
    "TextGenerated": State.GENERATED,
    "GenerationFailed": State.GENERATION_FAILED,
    "PublicationStarted": State.PUBLISHING,
    "CompletionPublished": State.PUBLISHED,
    "PublicationFailed": State.PUBLISH_FAILED,
}


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

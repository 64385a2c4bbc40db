"""The ledger's per-person state and the shapes of its decisions (frozen pydantic models).

``PersonState`` is what the ledger table stores per person (JSON, in the ``ledger`` table's
changelog); ``Outcome`` is what ``models.ledger.handle`` returns.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.events import GenerateText, LifecycleEvent, PublishCompletion, RequestReceived
from models.lifecycle import State
from models.usage import Window

Command = GenerateText | PublishCompletion
EventType = str


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True)

    dedupe_window_ms: int = 24 * 3600 * 1000
    fingerprint_retention_ms: int = 30 * 24 * 3600 * 1000
    max_fingerprints: int = 10_000
    generation_deadline_ms: int = 120_000
    publish_deadline_ms: int = 60_000
    max_attempts: int = Field(3, ge=1)


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


class PersonState(BaseModel):
    model_config = ConfigDict(frozen=True)

    window: Window | None = None
    inflight: dict[str, InFlight] = Field(default_factory=dict)
    seen: dict[str, Seen] = Field(default_factory=dict)
    # publications given up on (publish_failed), by request_id → when: an operator may redrive
    parked: dict[str, int] = Field(default_factory=dict)


class Parked(BaseModel):
    """Work given up on, for the dead-letter topic (``talkstream redrive`` re-issues it)."""

    model_config = ConfigDict(frozen=True)

    command: GenerateText | PublishCompletion
    reason: str


class Outcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: PersonState
    events: list[LifecycleEvent] = Field(default_factory=list)
    commands: list[Command] = Field(default_factory=list)
    parked: list[Parked] = Field(default_factory=list)

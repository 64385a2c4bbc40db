"""Small builders for the domain's wire shapes, and a ledger driver that keeps the history.

Sealed tokens here are stand-ins with recognisable markers, so a test can check that no
lifecycle event ever carries one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.events import (
    ChatRequest,
    DeadlineExpired,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    LifecycleEvent,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    RequestReceived,
    RequestSpec,
    RequestsValue,
    SealedSecrets,
)
from models.ledger import Outcome, PersonState, Policy, handle
from models.lifecycle import State
from models.params import UsageLimit, person_key

SITE = "acme-store"
EMAIL = "alice@example.com"
PERSON = person_key(SITE, EMAIL)
SEALED_OPENAI = "gAAAAA-SEALED-OPENAI-TOKEN"
SEALED_TALKABLE = "gAAAAA-SEALED-TALKABLE-TOKEN"
T0 = 1_700_000_000  # epoch seconds, as Talkable renders times

Stage = Literal["generating", "publishing"]


def limit(
    *,
    amount: int = 3,
    duration: int = 3600,
    start: int = T0,
    now: int | None = None,
    used: int = 0,
) -> UsageLimit:
    """A usage-limit snapshot as Liquid renders it (``now`` defaults to ``start``)."""
    return UsageLimit(
        amount=amount,
        duration_in_seconds=duration,
        start_time=start,
        current_time=start if now is None else now,
        current_usage_amount=used,
    )


def received(
    request_id: str = "req-1",
    *,
    delivery_id: str | None = None,
    at_ms: int = T0 * 1000,
    usage_limit: UsageLimit | None = None,
    trigger: str | None = None,
    event_number: str | None = None,
    model: str = "gpt-4o-mini",
) -> RequestReceived:
    return RequestReceived(
        request_id=request_id,
        delivery_id=delivery_id or f"{request_id}/delivery-1",
        person=PERSON,
        at_ms=at_ms,
        spec=RequestSpec(
            site=SITE,
            email=EMAIL,
            event_number=event_number,
            chat=ChatRequest(
                model=model, messages=[{"role": "user", "content": "a verse"}], max_tokens=150
            ),
            usage_limit=usage_limit,
            trigger_criteria=trigger,
        ),
        secrets=SealedSecrets(talkable_api_key=SEALED_TALKABLE, openai_api_key=SEALED_OPENAI),
    )


def generated(
    request_id: str,
    attempt: int = 1,
    *,
    at_ms: int = T0 * 1000,
    text: str = "A verse.",
    truncated: bool = False,
) -> GenerationAttemptSucceeded:
    return GenerationAttemptSucceeded(
        request_id=request_id,
        person=PERSON,
        attempt=attempt,
        at_ms=at_ms,
        text=text,
        model="gpt-4o-mini",
        prompt_tokens=12,
        completion_tokens=7,
        latency_ms=321,
        truncated=truncated,
    )


def generation_failed(
    request_id: str, attempt: int = 1, *, retriable: bool = False, at_ms: int = T0 * 1000
) -> GenerationAttemptFailed:
    return GenerationAttemptFailed(
        request_id=request_id,
        person=PERSON,
        attempt=attempt,
        at_ms=at_ms,
        error_class="RateLimited" if retriable else "BadRequest",
        error_message="stand-in failure",
        retriable=retriable,
    )


def published(
    request_id: str,
    attempt: int = 1,
    *,
    duplicate: bool = False,
    at_ms: int = T0 * 1000,
    event_number: str | None = None,
    landed_event_number: str | None = None,
) -> PublicationAttemptSucceeded:
    return PublicationAttemptSucceeded(
        request_id=request_id,
        person=PERSON,
        attempt=attempt,
        at_ms=at_ms,
        duplicate=duplicate,
        event_number=event_number,
        landed_event_number=landed_event_number,
    )


def publication_failed(
    request_id: str, attempt: int = 1, *, retriable: bool = False, at_ms: int = T0 * 1000
) -> PublicationAttemptFailed:
    return PublicationAttemptFailed(
        request_id=request_id,
        person=PERSON,
        attempt=attempt,
        at_ms=at_ms,
        error_class="ServerError" if retriable else "Unauthorized",
        error_message="stand-in failure",
        retriable=retriable,
        status=503 if retriable else 401,
    )


def expired(
    request_id: str, attempt: int, stage: Stage, *, at_ms: int = T0 * 1000, lost: bool = False
) -> DeadlineExpired:
    return DeadlineExpired(
        request_id=request_id, person=PERSON, attempt=attempt, stage=stage, at_ms=at_ms, lost=lost
    )


@dataclass
class Ledger:
    """One person's ledger, fed message by message, keeping what it emitted."""

    policy: Policy = field(default_factory=Policy)
    state: PersonState | None = None
    now_ms: int = T0 * 1000
    history: list[tuple[RequestsValue, Outcome]] = field(default_factory=list)

    def send(self, message: RequestsValue) -> Outcome:
        outcome = handle(self.state, message, self.policy, self.now_ms)
        self.state = outcome.state
        self.history.append((message, outcome))
        return outcome

    @property
    def events(self) -> list[LifecycleEvent]:
        return [event for _, outcome in self.history for event in outcome.events]

    def types(self, request_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if request_id is None or e.request_id == request_id]

    def states(self, request_id: str) -> list[State]:
        return [e.state for e in self.events if e.request_id == request_id]


def types_of(outcome: Outcome) -> list[str]:
    return [event.type for event in outcome.events]

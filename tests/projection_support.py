"""Lifecycle events for projection tests, made by the real rules (``models.ledger.handle``),
and a comparable snapshot of a projection's tables (surrogate ids left out)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Boolean, text

from models.events import (
    ChatRequest,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    LifecycleEvent,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    RedriveRequested,
    RequestReceived,
    RequestSpec,
    RequestsValue,
    SealedSecrets,
)
from models.ledger import PersonState, Policy, handle
from models.params import UsageLimit, completion_event_number, person_key
from streams.projection.rows import Sourced
from streams.projection.store import ProjectionStore
from streams.projection.tables import RequestRow, TransitionRow

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TOPIC = "test-lifecycle"


@dataclass
class Log:
    """A ledger driven message by message; its lifecycle events get offsets like Kafka's
    (partition by request id, as the lifecycle topic is keyed)."""

    partitions: int = 4
    policy: Policy = field(default_factory=Policy)
    states: dict[str, PersonState] = field(default_factory=dict)
    records: list[Sourced] = field(default_factory=list)
    messages: list[RequestsValue] = field(default_factory=list)  # what [requests] would hold
    _next: dict[int, int] = field(default_factory=dict)

    def send(self, message: RequestsValue, now_ms: int | None = None) -> list[LifecycleEvent]:
        outcome = handle(
            self.states.get(message.person), message, self.policy, now_ms or message.at_ms
        )
        self.states[message.person] = outcome.state
        self.messages.append(message)
        for event in outcome.events:
            partition = sum(event.request_id.encode()) % self.partitions
            offset = self._next.get(partition, 0)
            self._next[partition] = offset + 1
            self.records.append(Sourced(TOPIC, partition, offset, event))
        return outcome.events

    # --- whole requests ---------------------------------------------------------------------

    def received(
        self,
        request_id: str,
        *,
        site: str = "acme",
        email: str = "ada@example.com",
        at_ms: int = T0_MS,
        limit: int | None = None,
        trigger: str | None = "true",
        delivery: str = "d1",
        event_number: str | None = None,
        person: str | None = None,
    ) -> RequestReceived:
        """``person``: the key the record carries, if not ``person_key``'s (one written by an
        earlier version: before schema 11, the site as typed)."""
        usage = (
            UsageLimit(
                amount=limit,
                duration_in_seconds=3600,
                start_time=at_ms // 1000,
                current_time=at_ms // 1000,
                current_usage_amount=0,
            )
            if limit is not None
            else None
        )
        message = RequestReceived(
            request_id=request_id,
            delivery_id=f"{request_id}/{delivery}",
            person=person or person_key(site, email),
            at_ms=at_ms,
            spec=RequestSpec(
                site=site,
                email=email,
                event_number=event_number,
                chat=ChatRequest(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "a verse"}],
                    max_tokens=60,
                ),
                usage_limit=usage,
                trigger_criteria=trigger,
            ),
            secrets=SealedSecrets(talkable_api_key="gAAAA-t", openai_api_key="gAAAA-o"),
        )
        self.send(message)
        return message

    def generated(
        self,
        r: RequestReceived,
        *,
        at_ms: int,
        latency_ms: int = 800,
        attempt: int = 1,
        waited_ms: int = 0,
        truncated: bool = False,
    ) -> None:
        self.send(
            GenerationAttemptSucceeded(
                request_id=r.request_id,
                person=r.person,
                attempt=attempt,
                at_ms=at_ms,
                text="a verse for you",
                model="gpt-4o-mini-2024",
                prompt_tokens=12,
                completion_tokens=30,
                latency_ms=latency_ms,
                waited_ms=waited_ms,
                truncated=truncated,
            )
        )

    def failed(
        self, r: RequestReceived, *, at_ms: int, retriable: bool = False, attempt: int = 1
    ) -> None:
        self.send(
            GenerationAttemptFailed(
                request_id=r.request_id,
                person=r.person,
                attempt=attempt,
                at_ms=at_ms,
                error_class="AuthenticationError" if not retriable else "RateLimitError",
                error_message="401 invalid key" if not retriable else "429 slow down",
                retriable=retriable,
                latency_ms=40,
            )
        )

    def published(self, r: RequestReceived, *, at_ms: int, said: bool = True) -> None:
        """``said``: the publisher reports the number the event landed under (schema 8 on),
        as the publisher does: the campaign's, else the request's default."""
        number = completion_event_number(r.spec.event_number, r.request_id) if said else None
        self.send(
            PublicationAttemptSucceeded(
                request_id=r.request_id,
                person=r.person,
                attempt=1,
                at_ms=at_ms,
                landed_event_number=number,
            )
        )

    def redriven(
        self, request_id: str, *, lands: bool, at_ms: int = T0_MS, **kw: Any
    ) -> RequestReceived:
        """A text Talkable refused (SiteNotFound: publish_failed), redriven once the site was
        fixed: published again if it ``lands``, else still publishing."""
        r = self.received(request_id, at_ms=at_ms, **kw)
        self.generated(r, at_ms=at_ms + 700)
        self.send(PublicationAttemptFailed(
            request_id=request_id, person=r.person, attempt=1, at_ms=at_ms + 900,
            error_class="SiteNotFound", error_message="Talkable answered 404: no such site",
        ))  # fmt: skip
        self.send(RedriveRequested(request_id=request_id, person=r.person, at_ms=at_ms + 60_000,
                                   reason="fixed", stage="publishing", attempt=1))  # fmt: skip
        if lands:
            self.send(PublicationAttemptSucceeded(
                request_id=request_id, person=r.person, attempt=2, at_ms=at_ms + 61_000,
                redrive=True,
            ))  # fmt: skip
        return r

    def full(
        self,
        request_id: str,
        *,
        at_ms: int = T0_MS,
        latency_ms: int = 800,
        truncated: bool = False,
        **kw: Any,
    ) -> RequestReceived:
        r = self.received(request_id, at_ms=at_ms, **kw)
        self.generated(r, at_ms=at_ms + latency_ms, latency_ms=latency_ms, truncated=truncated)
        self.published(r, at_ms=at_ms + latency_ms + 200)
        return r


def mixed_log() -> Log:
    """Published (one text cut at its token cap; one under the campaign's own event number),
    retried then published (reported by a publisher before schema 8: no event number), failed,
    limited, skipped, duplicate: two sites."""
    log = Log()
    log.full("pub-1", at_ms=T0_MS, latency_ms=700, limit=2, event_number="order-42-complete")
    retried = log.received("retry-1", email="bob@example.com", at_ms=T0_MS + 1000)
    log.failed(retried, at_ms=T0_MS + 1500, retriable=True)
    log.generated(retried, at_ms=T0_MS + 2500, latency_ms=900, attempt=2, waited_ms=4000)
    log.published(retried, at_ms=T0_MS + 2600, said=False)
    bad = log.received("fail-1", email="carol@example.com", at_ms=T0_MS + 3000)
    log.failed(bad, at_ms=T0_MS + 3100)
    log.full("pub-2", at_ms=T0_MS + 4000, latency_ms=1200, limit=2, truncated=True)
    log.received("lim-1", at_ms=T0_MS + 5000, limit=2)
    log.received("skip-1", site="globex", email="dan@example.com", trigger="false")
    dup = log.full("pub-3", site="globex", email="eve@example.com", at_ms=T0_MS + 6000)
    log.received(
        dup.request_id, site="globex", email="eve@example.com", at_ms=T0_MS + 6100, delivery="d2"
    )
    return log


def request_rows(rows: Iterable[RequestRow]) -> list[dict[str, Any]]:
    return sorted(
        ({c.name: getattr(r, c.name) for c in RequestRow.__table__.columns} for r in rows),
        key=lambda d: d["request_id"],
    )


def transition_rows(rows: Iterable[TransitionRow]) -> list[dict[str, Any]]:
    columns = [c.name for c in TransitionRow.__table__.columns if c.name != "id"]
    return sorted(
        ({c: getattr(r, c) for c in columns} for r in rows),
        key=lambda d: (d["topic"], d["partition"], d["offset"]),
    )


def stored_requests(store: ProjectionStore) -> list[dict[str, Any]]:
    """The requests table as the database holds it, whatever its migration (the models read
    the newest), by request id; booleans as Python's (SQLite keeps them as 0 and 1)."""
    with store.engine.connect() as connection:
        found = connection.execute(text("SELECT * FROM requests ORDER BY request_id"))
        return [
            {k: bool(v) if k in _BOOLEANS and v is not None else v for k, v in row._mapping.items()}
            for row in found
        ]


_BOOLEANS = {c.name for c in RequestRow.__table__.columns if isinstance(c.type, Boolean)}


def stored_transitions(store: ProjectionStore) -> list[dict[str, Any]]:
    """The transitions table as the database holds it, whatever its migration, without the
    surrogate ids, in source order."""
    with store.engine.connect() as connection:
        found = connection.execute(
            text('SELECT * FROM transitions ORDER BY topic, partition, "offset"')
        )
        return [{k: v for k, v in row._mapping.items() if k != "id"} for row in found]


Snapshot = tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[Any, ...]]]


def ended_minutes(store: ProjectionStore) -> list[tuple[Any, ...]]:
    """The overview's counts a minute (migration 0007) as (minute, site, state, requests,
    tokens), in key order, every row of the table (a row its requests all moved out of is
    deleted: it stayed, requests 0, and a projection differed with how its batches fell)."""
    with store.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                text(
                    "SELECT minute, site, state, requests, tokens FROM ended_minutes"
                    " ORDER BY minute, site, state"
                )
            )
        ]


def snapshot(store: ProjectionStore) -> Snapshot:
    """The tables as plain values, in a fixed order, without surrogate ids: the requests, the
    transitions and the overview's counts a minute."""
    return (
        request_rows(store.requests()),
        transition_rows(store.all_transitions()),
        ended_minutes(store),
    )


# values longer than their columns (``VARCHAR(n)``), as events may carry them: a model name an
# OpenAI-compatible server returned, an error's class, an email lower-casing lengthened, an
# event written before the ingress bounded a field
LONG_SITE = "s" * 300  # site: 200
LONG_PERSON = f"{LONG_SITE}:{'e' * 400}@example.com"  # person: 600
LONG_MODEL = "m" * 500  # model: 200
LONG_ERROR = "E" * 300  # error_class: 200
LONG_DUPLICATE = "d" * 300  # duplicate_of: 200


def too_long_log(first_offset: int = 0) -> Log:
    """A published request (``long-pub``), a failed one (``long-fail``) and one in flight
    (``long-dup``, its events saying ``duplicate_of`` as a rejected duplicate's would) whose
    every bounded value is longer than its column."""
    log = Log(_next=dict.fromkeys(range(4), first_offset))
    published = log.full("long-pub")
    failed = log.received("long-fail", email="bob@example.com", at_ms=T0_MS + 1000)
    log.failed(failed, at_ms=T0_MS + 1100)
    log.received("long-dup", email="cy@example.com", at_ms=T0_MS + 2000)
    stretched = {"site": LONG_SITE, "person": LONG_PERSON}
    for i, item in enumerate(log.records):
        e = item.event
        update = dict(stretched)
        if e.model is not None:
            update["model"] = LONG_MODEL
        if e.error_class is not None:
            update["error_class"] = LONG_ERROR
        if e.request_id == "long-dup":
            update["duplicate_of"] = LONG_DUPLICATE
        log.records[i] = item._replace(event=e.model_copy(update=update))
    assert published.request_id == "long-pub"
    return log

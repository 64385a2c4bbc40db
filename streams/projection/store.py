"""The idempotent projector store.

Each lifecycle event is applied with its source (topic, partition, offset) in the same
transaction, and a source already applied is skipped, so redelivery after a crash or a replay
over an existing database changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, select, tuple_
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from models.events import LifecycleEvent
from models.lifecycle import TERMINAL
from streams.projection.tables import Base, RequestRow, TransitionRow


@dataclass(frozen=True)
class Sourced:
    topic: str
    partition: int
    offset: int
    event: LifecycleEvent


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, future=True, pool_pre_ping=True)


class ProjectionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        Base.metadata.create_all(engine)

    @classmethod
    def from_url(cls, url: str) -> ProjectionStore:
        return cls(make_engine(url))

    def apply(self, batch: Sequence[Sourced]) -> int:
        """Apply a batch in one transaction; returns how many events were new."""
        if not batch:
            return 0
        with self._session.begin() as session:
            keys = [(s.topic, s.partition, s.offset) for s in batch]
            done = set(
                session.execute(
                    select(
                        TransitionRow.topic, TransitionRow.partition, TransitionRow.offset
                    ).where(
                        tuple_(
                            TransitionRow.topic, TransitionRow.partition, TransitionRow.offset
                        ).in_(keys)
                    )
                ).tuples()
            )
            applied = 0
            for item in batch:
                if (item.topic, item.partition, item.offset) in done:
                    continue
                done.add((item.topic, item.partition, item.offset))
                _apply(session, item)
                applied += 1
            return applied

    def request(self, request_id: str) -> RequestRow | None:
        with self._session() as session:
            return session.get(RequestRow, request_id)

    def transitions(self, request_id: str) -> list[TransitionRow]:
        with self._session() as session:
            rows = session.scalars(
                select(TransitionRow)
                .where(TransitionRow.request_id == request_id)
                .order_by(TransitionRow.at_ms, TransitionRow.id)
            )
            return list(rows)

    def requests(self) -> list[RequestRow]:
        with self._session() as session:
            return list(session.scalars(select(RequestRow).order_by(RequestRow.received_at_ms)))

    def close(self) -> None:
        self.engine.dispose()


def _apply(session: Session, item: Sourced) -> None:
    e = item.event
    session.add(
        TransitionRow(
            request_id=e.request_id,
            type=e.type,
            state=e.state.value,
            previous_state=e.previous_state.value if e.previous_state else None,
            at_ms=e.at_ms,
            cause=e.cause,
            attempt=e.attempt,
            topic=item.topic,
            partition=item.partition,
            offset=item.offset,
        )
    )
    row = session.get(RequestRow, e.request_id)
    if row is None:
        row = RequestRow(
            request_id=e.request_id,
            site=e.site,
            person=e.person,
            state=e.state.value,
            received_at_ms=e.at_ms,
            updated_at_ms=e.at_ms,
            attempts=0,
            terminal=False,
        )
        session.add(row)
    row.state = e.state.value
    row.terminal = e.state in TERMINAL
    row.updated_at_ms = max(row.updated_at_ms, e.at_ms)
    row.attempts = max(row.attempts or 0, e.attempt)
    row.duplicate_of = e.duplicate_of or row.duplicate_of
    row.model = e.model or row.model
    if e.prompt_tokens is not None:
        row.prompt_tokens = e.prompt_tokens
    if e.completion_tokens is not None:
        row.completion_tokens = e.completion_tokens
    if e.type == "TextGenerated" and e.latency_ms is not None:
        row.generation_latency_ms = e.latency_ms
    if e.error_class is not None:
        row.error_class = e.error_class
        row.error_message = e.error_message

"""Tables of the projection: one row per request, one row per transition.

The schema is owned by the Alembic migrations in ``streams/projection/migrations/``; these
classes must match them (a contract test compares the two on SQLite and PostgreSQL). Times are
epoch milliseconds, as on the topics.

``requests``      the request as it stands: site, person, state, when it arrived and when it
                  reached each state, model, tokens, generation latency, the waits for the
                  upstream targets, attempts, error, whether its text was cut at its token cap,
                  the number Talkable holds its event under (migration 0009);
                  keyed by its id and ``occurrence`` (migration 0008): 0 for the first
                  request of an id, 1 for the next, ... (the ledger names a request by its
                  fingerprint again once it forgot the person, or the fingerprint)
``transitions``   every lifecycle event applied, with its source (topic, partition, offset):
                  the source is unique, so an event is never applied twice; and the occurrence
                  of the request it belongs to; a publication's, the Talkable event number it
                  attempted or landed under (migration 0010)
``projected_offsets``  how far the live projector has read each partition of [lifecycle] (the
                  next offset), written in the transaction of the batch it read: a partition
                  whose records were all dead-lettered has no transition to say so
``ended_minutes`` the requests that ended in each minute, by site and state, and their tokens
                  (migration 0007): what the console's overview counts, kept with the rows
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class RequestRow(Base):
    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_site_received", "site", "received_at_ms"),
        Index("ix_requests_person", "person", "received_at_ms"),
        # the console (migration 0003): newest-first pages, keyset on (received_at_ms, id)
        Index("ix_requests_received", "received_at_ms", "request_id"),
        Index("ix_requests_state_received", "state", "received_at_ms", "request_id"),
        Index("ix_requests_site_state_received", "site", "state", "received_at_ms", "request_id"),
        # the overview (migration 0005): what ended in a window, from the index alone; the
        # sites of the requests in flight
        Index(
            "ix_requests_ended",
            "terminal_at_ms",
            "state",
            "site",
            "prompt_tokens",
            "completion_tokens",
            "arrived_at_ms",
            "received_at_ms",
            sqlite_where=text("terminal_at_ms IS NOT NULL"),
            postgresql_where=text("terminal_at_ms IS NOT NULL"),
        ),
        Index(
            "ix_requests_in_flight",
            "site",
            sqlite_where=text("NOT terminal"),
            postgresql_where=text("NOT terminal"),
        ),
    )

    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    site: Mapped[str] = mapped_column(String(200))
    person: Mapped[str] = mapped_column(String(600))
    state: Mapped[str] = mapped_column(String(32), index=True)
    terminal: Mapped[bool] = mapped_column(Boolean, default=False)
    # when the request reached each state (the event time the ledger decided with)
    received_at_ms: Mapped[int] = mapped_column(BigInteger)
    # when the webhook reached the ingress (wall clock): latencies are measured from it
    arrived_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    admitted_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    generating_at_ms: Mapped[int | None] = mapped_column(BigInteger)  # the first attempt
    generated_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    publishing_at_ms: Mapped[int | None] = mapped_column(BigInteger)  # the first attempt
    terminal_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    cause: Mapped[str | None] = mapped_column(Text)  # of the latest transition
    duplicate_of: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    generation_latency_ms: Mapped[int | None] = mapped_column(Integer)
    # how long the last generation / publication attempt waited for its upstream target
    generation_wait_ms: Mapped[int | None] = mapped_column(Integer)
    publish_wait_ms: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_class: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    window_start: Mapped[int | None] = mapped_column(BigInteger)
    window_count: Mapped[int | None] = mapped_column(Integer)
    # the text was cut at the completion's cap (its TextGenerated said so: lifecycle schema 5,
    # migration 0006); published as it was. Deferred, and loaded only where it is shown
    # (``undefer``): a console upgraded before the projector migrated reads every other page
    # of a projection without it, and nothing reads it unasked (``deferred_raiseload``)
    truncated: Mapped[bool] = mapped_column(
        Boolean,
        default=False,
        server_default=false(),
        deferred=True,
        deferred_raiseload=True,
    )
    # which request of this id (migration 0008): the ledger names a request by the fingerprint
    # of its params, and names one by it again once it has forgotten it (the person not heard
    # of for 30 days, or the fingerprint pushed out of the entry and its Bloom filter): a
    # RequestReceived of a request that was received, judged at another event time, starts the
    # next one (never while the earlier is in flight in the ledger). The table's key is
    # (request_id, occurrence); the ORM's is (request_id, received_at_ms), which is as unique
    # (each occurrence is judged at another time), so that the console reads a projection not
    # migrated yet, which has no such column: deferred as ``truncated`` is, and loaded where it
    # is shown
    occurrence: Mapped[int] = mapped_column(
        Integer,
        primary_key=True,
        default=0,
        server_default=text("0"),
        deferred=True,
        deferred_raiseload=True,
    )
    # the number Talkable holds its event under, as its CompletionPublished said (lifecycle
    # schema 8, migration 0009): with ``site``, what joins it with Talkable's event. NULL until
    # published, and for a publication reported before schema 8. Deferred as ``truncated`` is
    event_number: Mapped[str | None] = mapped_column(
        String(200), deferred=True, deferred_raiseload=True
    )

    __mapper_args__ = {"primary_key": (request_id, received_at_ms)}


class TransitionRow(Base):
    __tablename__ = "transitions"
    __table_args__ = (
        UniqueConstraint("topic", "partition", "offset", name="uq_transition_source"),
        Index("ix_transitions_request", "request_id", "at_ms"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    previous_state: Mapped[str | None] = mapped_column(String(32))
    at_ms: Mapped[int] = mapped_column(BigInteger)
    cause: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    window_start: Mapped[int | None] = mapped_column(BigInteger)
    window_count: Mapped[int | None] = mapped_column(Integer)
    waited_ms: Mapped[int | None] = mapped_column(Integer)
    arrived_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    # the occurrence of the request row it belongs to (migration 0008; deferred: see
    # ``RequestRow.occurrence``)
    occurrence: Mapped[int] = mapped_column(
        Integer, default=0, server_default=text("0"), deferred=True, deferred_raiseload=True
    )
    # the Talkable event number it concerns (migration 0010): the number a PublicationStarted
    # or PublicationFailed attempt writes under (lifecycle schema 9), the one a
    # CompletionPublished landed under (schema 8); NULL otherwise. Deferred: a console newer
    # than its projection reads the transitions of one not migrated yet
    event_number: Mapped[str | None] = mapped_column(
        String(200), deferred=True, deferred_raiseload=True
    )


class ProjectedOffsetRow(Base):
    __tablename__ = "projected_offsets"

    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)


class EndedMinuteRow(Base):
    """The requests that ended in each minute, by site and state, and their tokens (migration
    0007): what the console's overview counts, kept by ``ProjectionStore.apply`` beside the
    request rows it sums (a request counts where its ``terminal_at_ms`` puts it, in its
    current state)."""

    __tablename__ = "ended_minutes"

    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # terminal_at_ms // 60,000
    site: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)  # prompt and completion, NULLs as 0


# columns that identify a transition apart from where it was read (a replay compares these)
TRANSITION_IDENTITY = ("request_id", "occurrence", "type", "state", "attempt")

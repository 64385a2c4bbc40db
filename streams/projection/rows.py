"""How lifecycle events become rows: a request's row folded from its events, a transition's
row, and the database driver's own statements that write them (``ProjectionStore.apply``, for
the live projector and ``talkstream replay`` alike)."""

from __future__ import annotations

import functools
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table

from models.events import LifecycleEvent
from models.lifecycle import TERMINAL, State
from streams.projection.tables import Base, EndedMinuteRow, RequestRow, TransitionRow

_TRANSITIONS = Base.metadata.tables[TransitionRow.__tablename__]
_REQUESTS = Base.metadata.tables[RequestRow.__tablename__]
_ENDED = Base.metadata.tables[EndedMinuteRow.__tablename__]
# every column of a request row, as a new row starts (the events fill them in)
_EMPTY_ROW: dict[str, Any] = {c.name: None for c in _REQUESTS.columns} | {
    "terminal": False,
    "attempts": 0,
    "truncated": False,
    "occurrence": 0,
}


class Sourced(NamedTuple):  # a tuple: a replay makes one per event
    topic: str
    partition: int
    offset: int
    event: LifecycleEvent


# a cut value ends with it: what the console and ``audit`` show was longer in the event
CUT = "\u2026"


def _bounds() -> tuple[tuple[str, int], ...]:
    """The event's fields kept in a bounded column (``VARCHAR(n)``: PostgreSQL refuses a
    longer value, SQLite keeps it), each with the least ``n`` of the columns named so."""
    bounds: dict[str, int] = {}
    for table in (_REQUESTS, _TRANSITIONS, _ENDED):
        for column in table.columns:
            length = getattr(column.type, "length", None)
            if column.name in LifecycleEvent.model_fields and isinstance(length, int):
                bounds[column.name] = min(length, bounds.get(column.name, length))
    # kept in ``transitions.event_number`` too
    bounds["attempted_event_number"] = bounds["event_number"]
    return tuple(sorted(bounds.items()))


_BOUNDED = _bounds()


def fitted(item: Sourced) -> Sourced:
    """The event with each value longer than its column cut to it, ending with ``CUT``: the
    ingress bounds what a webhook gives, but an OpenAI-compatible server's model name, an
    error's class, an email that lower-casing lengthened, or an event written before a bound
    was, may be longer. PostgreSQL refused such a row, and the projector retried its batch
    forever, holding up every request behind it. ``ProjectionStore.apply`` cuts here, for the
    live projector and a replay alike, before it looks anything up (a cut ``request_id``'s
    row is found by the id as cut): both make the same rows. The ledger's ids (at most 65
    characters), states and types are within theirs; a few ``len`` a record otherwise."""
    e = item.event
    long = {
        name: value[: length - len(CUT)] + CUT
        for name, length in _BOUNDED
        if (value := getattr(e, name)) is not None and len(value) > length
    }
    if not long:
        return item
    return item._replace(event=e.model_copy(update=long))


# when a request first reached a state: the column that keeps it
_REACHED = {
    State.ADMITTED: "admitted_at_ms",
    State.GENERATING: "generating_at_ms",
    State.GENERATED: "generated_at_ms",
    State.PUBLISHING: "publishing_at_ms",
}


# the transitions' columns as written (``id`` is the database's)
TRANSITION_COLUMNS = (
    "request_id", "type", "state", "previous_state", "at_ms", "cause", "attempt",
    "error_class", "error_message", "latency_ms", "window_start", "window_count", "waited_ms",
    "arrived_at_ms", "event_number", "topic", "partition", "offset", "occurrence",
)  # fmt: skip
REQUEST_KEY = ("request_id", "occurrence")
REQUEST_COLUMNS = tuple(c.name for c in _REQUESTS.columns)
_REQUEST_VALUES = tuple(c for c in REQUEST_COLUMNS if c not in REQUEST_KEY)  # what an UPDATE sets

RowKey = tuple[str, int]  # request_id, occurrence


def occurrence_of(
    row: dict[str, Any] | None, e: LifecycleEvent, identities: Container[tuple[Any, ...]]
) -> int:
    """Which request of its id an event belongs to, given the id's latest row (None: none
    yet) and the identities of the transitions applied (``(request_id, occurrence, type,
    state, attempt)``). The ledger names a request by the fingerprint of its params, and by it
    again once it has forgotten it (the person not heard of for 30 days, or the fingerprint
    pushed out of the entry and its Bloom filter): a ``RequestReceived`` for a request whose
    own was applied (its identity taken), judged at another event time, is the id's next
    request. The ledger judges a webhook at a time the webhook carries (Talkable's rendered
    ``current_time``, or its arrival): one judged at the same time is the same decision
    emitted again (the ledger re-processing a message after a crash); another time is another
    webhook, and the ledger never names one by the id of a request in flight (it keeps the
    fingerprint, and the person, while one is: ``models.state.forgettable_at``), so the
    earlier request ended, whether or not its end reached the projection (an event Kafka
    refused is dead-lettered, not projected: the earlier row stays in the state it reached).
    One for a request whose own was not applied yet is its own (a request whose events are in
    two partitions, which were added to while it was in flight, can be read out of order). A
    request of the same id comes a retention (30 days) later, and its event time with it."""
    if row is None:
        return 0
    occurrence = int(row["occurrence"])
    if (
        e.state is State.RECEIVED
        and e.at_ms != row["received_at_ms"]
        and (e.request_id, occurrence, e.type, str(e.state), e.attempt) in identities
    ):
        return occurrence + 1
    return occurrence


def transition_row(item: Sourced, occurrence: int = 0) -> tuple[Any, ...]:
    e = item.event
    return (
        e.request_id,
        e.type,
        str(e.state),  # a StrEnum's text; ``.value`` is a Python property, 4x slower
        str(e.previous_state) if e.previous_state else None,
        e.at_ms,
        e.cause,
        e.attempt,
        e.error_class,
        e.error_message,
        e.latency_ms,
        e.window_start,
        e.window_count,
        e.waited_ms,
        e.arrived_at_ms,
        # the number a publication attempts (schema 9), or the one it landed under (schema 8)
        e.attempted_event_number or e.event_number,
        item.topic,
        item.partition,
        item.offset,
        occurrence,  # last: ``ProjectionStore.apply`` reads it there
    )


def request_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in REQUEST_COLUMNS)


def update_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """The parameters of ``Writes.update_request``: the values, then the key."""
    return tuple(row[name] for name in (*_REQUEST_VALUES, *REQUEST_KEY))


@dataclass(frozen=True)
class Writes:
    """The projector's writes as the database driver's own statements, executed with
    ``executemany`` on plain tuples: per row, no SQLAlchemy parameter processing (most of a
    replay's time otherwise). On PostgreSQL new rows go in with ``COPY`` (psycopg's
    executemany is a round of Python per row: a third of the rate). Made once per dialect."""

    insert_transition: str
    insert_request: str
    update_request: str
    copy: bool  # inserts are COPY ... FROM STDIN statements
    # a COPY's column types by its statement: psycopg then formats each value with the
    # column's own dumper, instead of looking one up by the value's Python type (half of
    # its time formatting a row; ``bench/PROFILE.md``, twenty-ninth round)
    copy_types: dict[str, list[str]]

    @classmethod
    def of(cls, connection: Connection) -> Writes:
        dialect = connection.dialect
        return _writes_for(
            dialect.paramstyle,
            dialect.identifier_preparer,
            dialect.name,
            dialect.type_compiler_instance,
        )

    def insert(self, connection: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if not self.copy:
            connection.exec_driver_sql(sql, rows)
            return
        driver = connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            copy.set_types(self.copy_types[sql])
            for row in rows:
                copy.write_row(row)

    @staticmethod
    def many(connection: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            connection.exec_driver_sql(sql, rows)


@functools.cache
def _writes_for(paramstyle: str, preparer: Any, dialect: str, type_compiler: Any) -> Writes:
    mark = "?" if paramstyle == "qmark" else "%s"
    copy = dialect == "postgresql"

    def names(columns: Sequence[str]) -> str:
        return ", ".join(preparer.quote(c) for c in columns)

    def insert(table: str, columns: Sequence[str]) -> str:
        if copy:
            return f"COPY {table} ({names(columns)}) FROM STDIN"
        return f"INSERT INTO {table} ({names(columns)}) VALUES ({', '.join([mark] * len(columns))})"

    def types(table: Table, columns: Sequence[str]) -> list[str]:
        """The columns' PostgreSQL type names as psycopg knows them: "bigint", "varchar"
        (from "VARCHAR(200)")."""
        compiled = (type_compiler.process(table.c[c].type) for c in columns)
        return [name.split("(")[0].lower() for name in compiled]

    sets = ", ".join(f"{preparer.quote(c)} = {mark}" for c in _REQUEST_VALUES)
    key = " AND ".join(f"{preparer.quote(c)} = {mark}" for c in REQUEST_KEY)
    insert_transition = insert("transitions", TRANSITION_COLUMNS)
    insert_request = insert("requests", REQUEST_COLUMNS)
    return Writes(
        insert_transition=insert_transition,
        insert_request=insert_request,
        update_request=f"UPDATE requests SET {sets} WHERE {key}",
        copy=copy,
        copy_types={
            insert_transition: types(_TRANSITIONS, TRANSITION_COLUMNS),
            insert_request: types(_REQUESTS, REQUEST_COLUMNS),
        }
        if copy
        else {},
    )


def fold(rows: dict[str, dict[str, Any]], e: LifecycleEvent, occurrence: int = 0) -> dict[str, Any]:
    """Bring the request's row (a dict of its columns) up to date with one event, and return
    it. ``rows``: the latest row of each request id; ``occurrence``: the event's
    (:func:`occurrence_of`): another than its id's row starts a new row, which takes its place
    in ``rows``."""
    row = rows.get(e.request_id)
    if row is None or row["occurrence"] != occurrence:
        row = rows[e.request_id] = {
            **_EMPTY_ROW,
            "request_id": e.request_id,
            "occurrence": occurrence,
            "site": e.site,
            "person": e.person,
            "received_at_ms": e.at_ms,
            "updated_at_ms": e.at_ms,
        }
    if not (row["terminal"] and e.state not in TERMINAL and e.previous_state not in TERMINAL):
        row["state"] = str(e.state)
        row["terminal"] = e.state in TERMINAL
        row["cause"] = e.cause
    # else: an earlier step's transition read after the request ended (from a terminal state
    # only a redrive moves on, and its event says it leaves it): history, not the state. An
    # earlier version's ledger wrote one so when Kafka gave up on it while a later output of
    # its batch to the same partition was taken (a decision held up past the producer's
    # request timeout), and its batch, decided again, sent it after that one; a topic it
    # wrote may hold such records (the ledger now sends nothing of a batch after an output
    # Kafka gave up on: tests/unit/test_ledger_order.py)
    row["updated_at_ms"] = max(row["updated_at_ms"], e.at_ms)
    row["attempts"] = max(row["attempts"] or 0, e.attempt)
    if e.state is State.RECEIVED:
        row["received_at_ms"] = e.at_ms
        row["arrived_at_ms"] = e.arrived_at_ms
    elif e.state in TERMINAL:
        row["terminal_at_ms"] = e.at_ms
    elif row[_REACHED[e.state]] is None:  # re-issues keep the first attempt's time
        row[_REACHED[e.state]] = e.at_ms
    row["duplicate_of"] = e.duplicate_of or row["duplicate_of"]
    row["model"] = e.model or row["model"]
    if e.prompt_tokens is not None:
        row["prompt_tokens"] = e.prompt_tokens
    if e.completion_tokens is not None:
        row["completion_tokens"] = e.completion_tokens
    if e.type == "TextGenerated":
        if e.latency_ms is not None:
            row["generation_latency_ms"] = e.latency_ms
        # the text it published (a text generated again replaces it): cut, or not said (an
        # event written before lifecycle schema 5 does not say; one not cut says nothing)
        row["truncated"] = e.truncated is True
    if e.event_number is not None:  # on CompletionPublished (lifecycle schema 8 on)
        row["event_number"] = e.event_number
    if e.waited_ms is not None:
        if e.type in ("TextGenerated", "GenerationFailed"):
            row["generation_wait_ms"] = e.waited_ms
        else:
            row["publish_wait_ms"] = e.waited_ms
    if e.error_class is not None:
        row["error_class"] = e.error_class
        row["error_message"] = e.error_message
    if e.window_start is not None:
        row["window_start"] = e.window_start
        row["window_count"] = e.window_count
    return row

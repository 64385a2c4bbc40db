"""The idempotent projector store.

Each lifecycle event is applied with its source (topic, partition, offset) in the same
transaction, and an event is skipped when its source was applied already, or when an event
with the same identity (request_id, occurrence, type, state, attempt) was: the ledger may emit
a transition twice when it re-processes a message after a crash. So redelivery, a replay over
an existing database, or the live projector and a replay reading the same log all converge on
the same rows.

Events of one request id share a partition (the lifecycle topic is keyed by request_id), so
they are applied in the order the ledger decided them, and each belongs to the id's latest
request: a ``RequestReceived`` of an id whose request was received, judged at another event
time, starts the next, whether or not the earlier's end was projected (``occurrence``: the
ledger names a request by its params' fingerprint again once it has forgotten the person,
never while the earlier is in flight; ``streams.projection.rows.occurrence_of``). A projector and
a replay decide it from the same rows, and the bulk path looks up nothing more than the
batch's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker, undefer

from models.lifecycle import State
from streams.projection import migrate
from streams.projection.engine import make_engine, safe_url, sqlite_directory
from streams.projection.rows import (
    RowKey,
    Sourced,
    Writes,
    fitted,
    fold,
    occurrence_of,
    request_values,
    transition_row,
    update_values,
)
from streams.projection.tables import (
    Base,
    EndedMinuteRow,
    ProjectedOffsetRow,
    RequestRow,
    TransitionRow,
)

_TRANSITIONS = Base.metadata.tables[TransitionRow.__tablename__]
_REQUESTS = Base.metadata.tables[RequestRow.__tablename__]
_OFFSETS = Base.metadata.tables[ProjectedOffsetRow.__tablename__]
_ENDED = Base.metadata.tables[EndedMinuteRow.__tablename__]
# a request as ``audit`` shows it: every column, the deferred ones too (the store reads a
# current projection only; the console reads one that may be behind, without them)
_WHOLE = (
    undefer(RequestRow.truncated),
    undefer(RequestRow.occurrence),
    undefer(RequestRow.event_number),
)


Source = tuple[str, int, int]
Identity = tuple[str, int, str, str, int]  # request_id, occurrence, type, state, attempt


class StatsRow(NamedTuple):
    """What ``talkstream stats`` reads of one request."""

    site: str
    state: str
    terminal: bool
    admitted: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    generation_latency_ms: int | None
    generation_wait_ms: int | None
    publish_wait_ms: int | None
    error_class: str | None
    truncated: bool


STATS_BATCH = 10_000  # rows fetched at a time by stats_rows
# SQLite's planner statistics (``refresh_statistics``): first gathered at this many requests,
# then again each time the requests have grown this many times
STATISTICS_FIRST_ROWS = 1_000
STATISTICS_GROWTH = 2


class ProjectionBehind(Exception):
    """The database holds less of some partitions than the live projector recorded in it: it
    was restored from an older backup, or emptied, under the running projector. ``marks``:
    where the database says it has read each of them to (None: nothing of it)."""

    def __init__(self, marks: Mapping[tuple[str, int], int | None]) -> None:
        super().__init__(marks)
        self.marks = dict(marks)


class ProjectionStore:
    def __init__(self, engine: Engine, *, migrate_schema: bool = True) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        if migrate_schema:
            migrate.upgrade(engine)

    @classmethod
    def from_url(cls, url: str, *, migrate_schema: bool = True) -> ProjectionStore:
        """The store at ``url``; not ``migrate_schema`` (a projector's, migrated once its
        group has taken it): a SQLite file's directory is not made either, only checked that
        it could be (``sqlite_directory``): the migration makes it."""
        engine = make_engine(url, make_directory=migrate_schema)
        if not migrate_schema:
            sqlite_directory(engine, make=False)  # (an engine that has opened nothing)
        return cls(engine, migrate_schema=migrate_schema)

    def upgrade_schema(self) -> None:
        """Migrate the schema to the newest migration (what ``migrate_schema`` does at once)."""
        migrate.upgrade(self.engine)

    @property
    def url(self) -> str:
        return safe_url(self.engine)

    @property
    def in_process(self) -> bool:
        """The database does its work in this process (SQLite), not in a server's."""
        return self.engine.dialect.name == "sqlite"

    # --- writing --------------------------------------------------------------------------

    def apply(
        self,
        batch: Sequence[Sourced],
        rebuilt: set[str] | None = None,
        *,
        read: Mapping[tuple[str, int], int] | None = None,
        recorded: Mapping[tuple[str, int], int] | None = None,
    ) -> int:
        """Apply a batch in one transaction; returns how many events were new.

        SQLAlchemy Core, not the ORM: the request rows are read as dicts, brought up to date in
        Python, and written back with one executemany INSERT for the new ones and one UPDATE
        for the others, beside one multi-row INSERT of the transitions (the live projector and
        ``talkstream replay`` share this path; it is what makes a replay fast).

        ``rebuilt``: a replay into an empty store passes the request ids it has written so far
        (and this adds the batch's): only their rows and transitions can exist, so only they
        are looked up, and no source is (a replay reads each record once). A third of a
        replay's time into PostgreSQL went to looking up rows that were not there.

        ``read``: the live projector's next offset of each (topic, partition) it read the batch
        from, recorded in the same transaction (``projected_offsets``): where it resumes, even
        when every record it read there was dead-lettered.

        The overview's counts a minute (``ended_minutes``) move with the rows in the same
        transaction: each request the batch touched, from the (minute, site, state) it counted
        in before to the one it counts in now (``_count_ended``).

        ``recorded``: what the live projector recorded for some of these partitions with its
        previous batches. A database that holds less than that went back in time under it
        (restored from a backup, emptied): ``ProjectionBehind``, and nothing is applied."""
        if not batch and not read:
            return 0
        with self.engine.begin() as connection:
            if recorded:
                _not_behind(connection, recorded)
            if read:
                _record_offsets(connection, read)
            if not batch:
                return 0
            batch = [fitted(item) for item in batch]  # each value within its column
            sources = _applied_sources(connection, batch) if rebuilt is None else set()
            request_ids = sorted({s.event.request_id for s in batch})
            if rebuilt is not None:
                fresh = set(request_ids) - rebuilt
                rebuilt.update(fresh)
                request_ids = [rid for rid in request_ids if rid not in fresh]
            identities: set[Identity] = set()
            rows: dict[str, dict[str, Any]] = {}  # the latest row of each id
            for chunk in _chunks(request_ids):
                identities.update(
                    (request_id, occurrence, type_, state, attempt)
                    for request_id, occurrence, type_, state, attempt in connection.execute(
                        select(
                            _TRANSITIONS.c.request_id,
                            _TRANSITIONS.c.occurrence,
                            _TRANSITIONS.c.type,
                            _TRANSITIONS.c.state,
                            _TRANSITIONS.c.attempt,
                        ).where(_TRANSITIONS.c.request_id.in_(chunk))
                    )
                )
                for row in connection.execute(
                    select(_REQUESTS).where(_REQUESTS.c.request_id.in_(chunk))
                ):
                    latest = rows.get(row.request_id)
                    if latest is None or latest["occurrence"] < row.occurrence:
                        rows[row.request_id] = dict(row._mapping)
            existing = {(rid, row["occurrence"]) for rid, row in rows.items()}
            ended = {(rid, row["occurrence"]): _ended(row) for rid, row in rows.items()}
            earlier: dict[RowKey, dict[str, Any]] = {}  # rows a later request of the id followed
            transitions: list[tuple[Any, ...]] = []
            for item in batch:
                source = (item.topic, item.partition, item.offset)
                e = item.event
                latest = rows.get(e.request_id)
                if latest is None:
                    occurrence = 0
                elif e.state is State.RECEIVED:  # (the one event that can start another)
                    occurrence = occurrence_of(latest, e, identities)
                else:
                    occurrence = latest["occurrence"]
                identity = (e.request_id, occurrence, e.type, str(e.state), e.attempt)
                if source in sources or identity in identities:
                    continue
                sources.add(source)
                identities.add(identity)
                transitions.append(transition_row(item, occurrence))
                if latest is not None and occurrence != latest["occurrence"]:
                    earlier[(e.request_id, latest["occurrence"])] = latest
                fold(rows, e, occurrence)
            if transitions:
                touched = {(t[0], t[-1]) for t in transitions}
                by_key = {(rid, row["occurrence"]): row for rid, row in rows.items()} | earlier
                writes = Writes.of(connection)
                writes.insert(connection, writes.insert_transition, transitions)
                writes.insert(
                    connection,
                    writes.insert_request,
                    [request_values(by_key[key]) for key in touched - existing],
                )
                writes.many(
                    connection,
                    writes.update_request,
                    [update_values(by_key[key]) for key in sorted(touched & existing)],
                )
                _count_ended(connection, ended, by_key, touched)
            return len(transitions)

    def next_offset(self, topic: str, partition: int) -> int | None:
        """Where the projector resumes this partition: one past the highest source offset
        applied from it, or the offset it recorded having read to, whichever is further
        (None: nothing of it here)."""
        with self._session() as session:
            highest = session.scalar(
                select(func.max(TransitionRow.offset)).where(
                    TransitionRow.topic == topic, TransitionRow.partition == partition
                )
            )
            read = session.get(ProjectedOffsetRow, (topic, partition))
        marks = [int(highest) + 1] if highest is not None else []
        if read is not None:
            marks.append(read.next_offset)
        return max(marks, default=None)

    def holds(self, topic: str) -> bool:
        """Whether anything of ``topic`` was projected here: a transition from it, or an offset
        read to (a new or emptied database holds nothing)."""
        with self._session() as session:
            return bool(
                session.scalar(
                    select(
                        exists().where(TransitionRow.topic == topic)
                        | exists().where(ProjectedOffsetRow.topic == topic)
                    )
                )
            )

    def reset(self) -> None:
        """Drop the projection's tables and history, and migrate from scratch (``replay
        --force``); other applications' tables in the database are left as they are."""
        with self.engine.begin() as connection:
            migrate.adopt_legacy_history(connection)  # so that an old history goes too
        Base.metadata.drop_all(self.engine)
        with self.engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {migrate.VERSION_TABLE}"))
        migrate.upgrade(self.engine)

    # --- the planner's statistics -------------------------------------------------------

    def gather_statistics(self) -> None:
        """``ANALYZE``: the database's planner statistics of the projection's tables (after a
        rebuild, which loads them all at once; PostgreSQL's autovacuum would come to it
        later, SQLite never)."""
        with self.engine.begin() as connection:
            if self.in_process:
                connection.exec_driver_sql("ANALYZE")
            else:
                connection.exec_driver_sql(f"ANALYZE {', '.join(Base.metadata.tables)}")

    def refresh_statistics(self) -> bool:
        """SQLite's statistics gathered again once the requests have grown ``STATISTICS_GROWTH``
        times since they were (the first time at ``STATISTICS_FIRST_ROWS``): SQLite gathers
        none by itself, and keeps those of a table a fraction of the size it has grown to
        until they are gathered again. A check costs two one-row reads; the ANALYZE, about 2 s at
        1,000,000 requests, comes ever more seldom (its total cost about twice the last one's).
        PostgreSQL's autovacuum keeps its own: nothing is done there. Whether it ran."""
        if not self.in_process:
            return False
        with self.engine.begin() as connection:
            # rows are never deleted: the highest rowid is how many there are, read from the
            # end of the table's b-tree (count(*) reads all of it)
            rows = connection.exec_driver_sql("SELECT max(rowid) FROM requests").scalar() or 0
            gathered = 0
            if connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
            ).first():
                stats = connection.exec_driver_sql(
                    "SELECT stat FROM sqlite_stat1 WHERE tbl = 'requests'"
                ).scalars()
                gathered = max((int(stat.split()[0]) for stat in stats), default=0)
            if rows < max(STATISTICS_FIRST_ROWS, gathered * STATISTICS_GROWTH):
                return False
            connection.exec_driver_sql("ANALYZE")
        return True

    # --- reading --------------------------------------------------------------------------

    def is_empty(self) -> bool:
        """Whether no projection is here: none of its tables, or no transitions in them
        (other applications' tables do not count)."""
        tables = set(inspect(self.engine).get_table_names())
        if "transitions" not in tables:
            return not tables & set(Base.metadata.tables)
        with self._session() as session:
            return not session.scalar(select(exists().select_from(TransitionRow)))

    def is_current(self) -> bool:
        """Whether the schema is at the newest migration (readers check, never migrate)."""
        return migrate.is_current(self.engine)

    def request(self, request_id: str) -> RequestRow | None:
        """The latest request of this id (see :meth:`occurrences` for all of them)."""
        found = self.occurrences(request_id)
        return found[-1] if found else None

    def occurrences(self, request_id: str) -> list[RequestRow]:
        """Every request of this id, oldest first: one, unless the ledger named a request by
        its fingerprint again after it forgot the person (``occurrence`` 1, 2, ...)."""
        r = RequestRow
        return self._whole(lambda q: q.where(r.request_id == request_id).order_by(r.occurrence))

    def states_of(self, request_ids: list[str]) -> dict[str, str]:
        """The state of each of these requests the projection has (of an id's latest)."""
        found: dict[str, str] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start : start + 500]
                query = select(RequestRow.request_id, RequestRow.state).order_by(
                    RequestRow.occurrence
                )
                rows = connection.execute(query.where(RequestRow.request_id.in_(chunk)))
                found.update((request_id, state) for request_id, state in rows)
        return found

    def transitions(self, request_id: str, occurrence: int | None = None) -> list[TransitionRow]:
        """The transitions of the requests of this id (of one of them: ``occurrence``)."""
        t = TransitionRow
        query = (
            select(t)
            .options(undefer(t.occurrence), undefer(t.event_number))
            .where(t.request_id == request_id)
        )
        if occurrence is not None:
            query = query.where(t.occurrence == occurrence)
        with self._session() as session:
            rows = session.scalars(query.order_by(t.occurrence, t.at_ms, t.offset, t.id))
            return list(rows)

    def requests(self) -> list[RequestRow]:
        r = RequestRow
        return self._whole(lambda q: q.order_by(r.received_at_ms, r.request_id, r.occurrence))

    def _whole(
        self, shaped: Callable[[Select[RequestRow]], Select[RequestRow]]
    ) -> list[RequestRow]:
        """The request rows ``shaped`` selects, every column (the deferred ones too)."""
        with self._session() as session:
            return list(session.scalars(shaped(select(RequestRow).options(*_WHOLE))))

    def repeats_of(self, request_id: str, limit: int) -> list[RequestRow]:
        """The requests the ledger named after ``request_id`` (``<request_id>~<delivery>``):
        the same params again, a repeat rejected or a request of its own after the dedupe
        window, to which the ingress answered the same ``request_id``; oldest first, at most
        ``limit``."""
        r = RequestRow
        return self._whole(
            lambda q: (
                q.where(r.request_id.startswith(f"{request_id}~", autoescape=True))
                .order_by(
                    r.arrived_at_ms.nulls_first(), r.received_at_ms, r.request_id, r.occurrence
                )
                .limit(limit)
            )
        )

    def requests_of(self, *persons: str) -> list[RequestRow]:
        """A person's requests (``site:email``; several keys: ``models.params.person_keys``,
        the keys records before schema 11 carry too), newest first: by event time (whole
        seconds, as Talkable renders it), then by arrival."""
        r = RequestRow
        return self._whole(
            lambda q: q.where(r.person.in_(persons)).order_by(
                r.received_at_ms.desc(),
                r.arrived_at_ms.desc().nulls_last(),
                r.request_id,
                r.occurrence.desc(),
            )
        )

    def stats_rows(
        self,
        since_ms: int | None = None,
        until_ms: int | None = None,
        sites: Sequence[str] | None = None,
    ) -> Iterator[StatsRow]:
        """What ``stats`` needs of each request received in ``[since_ms, until_ms)`` (of one
        site: ``sites``, its spellings, each read by equality on the indexes leading with the
        site), as plain tuples fetched in batches: a projection of millions of requests is
        never in memory at once (PostgreSQL streams them through a server-side cursor)."""
        r = RequestRow
        query = select(
            r.site,
            r.state,
            r.terminal,
            r.admitted_at_ms.is_not(None),
            r.prompt_tokens,
            r.completion_tokens,
            r.generation_latency_ms,
            r.generation_wait_ms,
            r.publish_wait_ms,
            r.error_class,
            r.truncated,
        )
        if since_ms is not None:
            query = query.where(r.received_at_ms >= since_ms)
        if until_ms is not None:
            query = query.where(r.received_at_ms < until_ms)
        if sites is not None:
            query = query.where(r.site.in_(sites))
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=STATS_BATCH).execute(query)
            for row in result:
                yield StatsRow._make(row)

    def all_transitions(self) -> list[TransitionRow]:
        with self._session() as session:
            return list(
                session.scalars(
                    select(TransitionRow)
                    .options(undefer(TransitionRow.occurrence), undefer(TransitionRow.event_number))
                    .order_by(TransitionRow.topic, TransitionRow.partition, TransitionRow.offset)
                )
            )

    def counts(self) -> tuple[int, int]:
        """(requests, transitions)."""
        with self._session() as session:
            requests = session.scalar(select(func.count()).select_from(RequestRow)) or 0
            transitions = session.scalar(select(func.count()).select_from(TransitionRow)) or 0
            return requests, transitions

    def states(self) -> dict[str, int]:
        """How many requests are in each state."""
        with self._session() as session:
            rows = session.execute(
                select(RequestRow.state, func.count()).group_by(RequestRow.state)
            )
            return {state: count for state, count in rows}

    def close(self) -> None:
        self.engine.dispose()


def _applied_sources(connection: Connection, batch: Sequence[Sourced]) -> set[Source]:
    """The batch's sources already applied: a range scan of the unique source index for each
    (topic, partition) in the batch."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for s in batch:
        low, high = spans.get((s.topic, s.partition), (s.offset, s.offset))
        spans[(s.topic, s.partition)] = (min(low, s.offset), max(high, s.offset))
    t = _TRANSITIONS.c
    query = select(t.topic, t.partition, t.offset).where(
        or_(
            *(
                and_(t.topic == topic, t.partition == partition, t.offset.between(low, high))
                for (topic, partition), (low, high) in spans.items()
            )
        )
    )
    return {(topic, partition, offset) for topic, partition, offset in connection.execute(query)}


def _not_behind(connection: Connection, recorded: Mapping[tuple[str, int], int]) -> None:
    """Raise ``ProjectionBehind`` when the database's offset of a partition is missing or lower
    than what the projector recorded there (marks never go back otherwise: see
    ``_record_offsets``)."""
    o = _OFFSETS.c
    query = select(o.topic, o.partition, o.next_offset).where(
        or_(*(and_(o.topic == topic, o.partition == partition) for topic, partition in recorded))
    )
    held = {(topic, partition): mark for topic, partition, mark in connection.execute(query)}
    behind = {key: held.get(key) for key, mark in recorded.items() if held.get(key, -1) < mark}
    if behind:
        raise ProjectionBehind(behind)


def _record_offsets(connection: Connection, read: Mapping[tuple[str, int], int]) -> None:
    """Upsert the next offset of each (topic, partition) read (SQLite and PostgreSQL share
    the ``ON CONFLICT`` form), never lowering one: a projector whose partition was handed to
    another during its batch may commit after the new owner (both batches are applied once,
    the furthest mark stands)."""
    postgres = connection.dialect.name == "postgresql"
    statement = (postgresql.insert if postgres else sqlite.insert)(_OFFSETS)
    furthest = func.greatest if postgres else func.max  # SQLite's two-argument max is scalar
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[_OFFSETS.c.topic, _OFFSETS.c.partition],
            set_={"next_offset": furthest(_OFFSETS.c.next_offset, statement.excluded.next_offset)},
        ),
        [
            {"topic": topic, "partition": partition, "next_offset": offset}
            for (topic, partition), offset in sorted(read.items())
        ],
    )


Ended = tuple[int, str, str, int]  # minute, site, state; tokens


def _ended(row: Mapping[str, Any]) -> Ended | None:
    """Where a request row counts in ``ended_minutes`` (None: it has not ended)."""
    at = row["terminal_at_ms"]
    if at is None:
        return None
    tokens = (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
    return at // 60_000, row["site"], row["state"], tokens


def _count_ended(
    connection: Connection,
    before: Mapping[RowKey, Ended | None],
    rows: Mapping[RowKey, Mapping[str, Any]],
    touched: set[RowKey],
) -> None:
    """Move the touched requests in ``ended_minutes`` from where they counted to where they
    count now: one upsert of the sums that changed, in key order (two projectors' batches
    lock the same rows in the same order), and the rows a move emptied deleted (a minute
    whose requests all moved on, a redriven request's failure: they stayed, requests 0, so
    the table differed with how its batches fell, the live projector's from a replay's and
    from the migration's fill, and a consumer counting its rows counted noughts)."""
    moved: dict[tuple[int, str, str], list[int]] = {}
    for key in touched:
        was, now = before.get(key), _ended(rows[key])
        if was == now:
            continue
        for ended, sign in ((was, -1), (now, 1)):
            if ended is not None:
                sums = moved.setdefault(ended[:3], [0, 0])
                sums[0] += sign
                sums[1] += sign * ended[3]
    changed = [
        {"minute": k[0], "site": k[1], "state": k[2], "requests": n, "tokens": t}
        for k, (n, t) in sorted(moved.items())
        if n or t
    ]
    if not changed:
        return
    postgres = connection.dialect.name == "postgresql"
    statement = (postgresql.insert if postgres else sqlite.insert)(_ENDED)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[_ENDED.c.minute, _ENDED.c.site, _ENDED.c.state],
            set_={
                "requests": _ENDED.c.requests + statement.excluded.requests,
                "tokens": _ENDED.c.tokens + statement.excluded.tokens,
            },
        ),
        changed,
    )
    emptied = [  # the rows that may be noughts now: those requests moved out of
        {"at_minute": k[0], "of_site": k[1], "in_state": k[2]}
        for k, (n, _) in sorted(moved.items())
        if n < 0
    ]
    if emptied:
        connection.execute(
            delete(_ENDED).where(
                _ENDED.c.minute == bindparam("at_minute"),
                _ENDED.c.site == bindparam("of_site"),
                _ENDED.c.state == bindparam("in_state"),
                _ENDED.c.requests == 0,
                _ENDED.c.tokens == 0,
            ),
            emptied,
        )


def _chunks(values: list[str], size: int = 500) -> list[list[str]]:
    """IN lists of a bounded size (SQLite caps the number of bound parameters)."""
    return [values[i : i + size] for i in range(0, len(values), size)]

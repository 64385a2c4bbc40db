"""What the console reads from the SQL projection (SQLite or PostgreSQL, through SQLAlchemy).

Every query here is shaped for an index of ``streams/projection/tables.py`` (migration 0003
adds the console's), so pages stay fast on millions of requests:

- search pages are newest first, keyset-paginated on ``(received_at_ms, request_id)`` (a page
  is one range scan of an index, however deep), filtered by person (``ix_requests_person``),
  site and state (``ix_requests_site_state_received``), site (``ix_requests_site_received``),
  state (``ix_requests_state_received``) or nothing (``ix_requests_received``); a group of
  states ("failed", "in flight") is a query a state, merged; an email
  without a site becomes the persons of every site (``site:email``), the sites read by a loose
  index scan, asked for ``PERSONS_PER_QUERY`` at a time (each query a page of its own, merged);
- a site is read in any case, as every spelling the projection records of it (``Shop``,
  ``shop``: one site, as the ledger counts it), found by one loose index scan of the sites,
  then a query a spelling (a range of an index leading with the site), merged;
- a timeline is one request row and its transitions (``ix_transitions_request``); whether its
  text was cut (``truncated``, migration 0006), the number Talkable holds its event under
  (``event_number``, migration 0009) and its publications' numbers (``transitions
  .event_number``, migration 0010) are read only of a projection that has them: a console
  upgraded before the projector migrated reads every other page (every other query leaves
  the columns out);
- the overview counts terminal states per minute and per site, and tokens, over a window of
  ``terminal_at_ms``: its whole minutes from ``ended_minutes`` (migration 0007, kept by the
  projector), its partial first and last minute (or all of it, on a projection before 0007)
  from one index (``ix_requests_ended``, which holds every column they read); the latencies'
  p50 and p95 from the same index, ranked by the database (exact: every published request of
  the window); the failed requests' reasons (error classes, per site) over the same range of it,
  a row read only where the index says it failed; and the requests in flight per site from
  ``ix_requests_in_flight`` (migration 0005).

None needs the database's statistics to be chosen: SQLite has none until the projector first
gathers them (``ProjectionStore.refresh_statistics``), and a test reads the plans of a
projection without them.

Times: ``received_at_ms`` is the event time a webhook was judged at, ``arrived_at_ms`` when it
reached the ingress (``streams.ops.clocks``: the two clocks, shared with ``talkstream audit``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, text, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.lifecycle import TERMINAL, State
from models.params import person_keys, site_identity
from streams.ops.clocks import Timeline, timeline_of
from streams.projection.tables import EndedMinuteRow, RequestRow, TransitionRow

PAGE_SIZE = 50
SUGGESTED_SITES = 100  # the sites the search form suggests, at most
NEWEST_REQUESTS_SUGGESTING = 500  # nothing typed, more sites than that: these requests' sites
PERSONS_PER_QUERY = 500  # an email on every site: the persons one query asks for
LEADING_REASONS = 3  # the reasons the overview names for a site's failures
NO_CLASS = "no error class"  # a failed request whose event named none

FAILED = (State.GENERATION_FAILED.value, State.PUBLISH_FAILED.value)
IN_FLIGHT = tuple(s.value for s in State if s not in TERMINAL)
TERMINAL_STATES = tuple(
    s.value
    for s in (
        State.PUBLISHED,
        State.LIMITED,
        State.SKIPPED,
        State.REJECTED_DUPLICATE,
        State.GENERATION_FAILED,
        State.PUBLISH_FAILED,
    )
)
# a request in flight is one whose state is not terminal (the projector keeps the two together)
IN_FLIGHT_ROWS = text("NOT requests.terminal")
# what the search form offers besides each state
STATE_GROUPS = {"failed": FAILED, "in_flight": IN_FLIGHT}
SEARCHABLE_STATES = (*STATE_GROUPS, *(s.value for s in State))


# --- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    site: str | None = None
    email: str | None = None  # normalized as the ingress does: trimmed, lower-cased
    state: str | None = None  # a state, or a group of STATE_GROUPS
    since_ms: int | None = None  # event time, inclusive
    until_ms: int | None = None  # event time, exclusive
    # the site's spellings (``ConsoleQueries.spellings``), when the page has read them: a
    # search reads them from here, not the sites again
    spellings: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in SEARCHABLE_STATES:
            raise ValueError(  # named like the form's field, as a bad time is
                f"state: {self.state!r} is not a state: one of {', '.join(SEARCHABLE_STATES)}"
            )


def fits_bigint(value: int) -> bool:
    """Whether a number from a link fits the projection's BIGINT columns: SQLite and
    PostgreSQL refuse a parameter past them (an error, where no row matches was meant)."""
    return -(2**63) <= value < 2**63


@dataclass(frozen=True)
class Cursor:
    """A position in newest-first order: the row to continue after (or before)."""

    received_at_ms: int
    request_id: str

    def encode(self) -> str:
        raw = json.dumps([self.received_at_ms, self.request_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str | None, field: str) -> Cursor | None:
        """The cursor of the query's ``field`` (``before``/``after``); a ValueError naming it
        when it is not one (a link cut short, or edited)."""
        if not value:
            return None
        try:
            at, request_id = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        except (ValueError, TypeError, binascii.Error):
            raise ValueError(f"{field}: not a page cursor") from None
        # a time past a BIGINT (an edited link) is no row's: the database would refuse it
        if not isinstance(at, int) or not isinstance(request_id, str) or not fits_bigint(at):
            raise ValueError(f"{field}: not a page cursor")
        return cls(at, request_id)

    @classmethod
    def of(cls, row: RequestRow) -> Cursor:
        return cls(row.received_at_ms, row.request_id)


@dataclass(frozen=True)
class Page:
    rows: list[RequestRow]
    newer: Cursor | None  # show the page of newer rows: ?after=newer
    older: Cursor | None  # show the page of older rows: ?before=older


@dataclass(frozen=True)
class Suggestions:
    sites: list[str]  # at most SUGGESTED_SITES of them (each spelling: ``Shop``, ``shop``)
    found: int  # how many sites there were to suggest (a site's spellings: one site)
    named: str | None  # the site named as typed (in any case), when one is


# --- the overview -----------------------------------------------------------------------------


@dataclass
class SiteRow:
    site: str
    by_state: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    tokens: int = 0
    # the failed requests by their error's class (a class names no key: never the message)
    reasons: dict[str, int] = field(default_factory=dict)
    # the site as its webhooks typed it, each spelling (``Shop``, ``shop``: one site, one row)
    spellings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.by_state.get(s, 0) for s in FAILED)

    def leading_reasons(self, count: int = LEADING_REASONS) -> tuple[list[tuple[str, int]], int]:
        """The ``count`` commonest reasons of its failures, most first (ties by name), and how
        many failed requests the others hold."""
        ranked = sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:count], sum(n for _, n in ranked[count:])

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


@dataclass(frozen=True)
class Overview:
    since_ms: int
    until_ms: int
    minutes: list[int]  # epoch minute of each bucket, oldest first
    series: dict[str, list[int]]  # terminal state -> requests that ended in each minute
    published: int
    p50_ms: int | None  # arrival -> published
    p95_ms: int | None
    sites: list[SiteRow]


# --- a person ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonSummary:
    person: str
    by_state: dict[str, int]
    first_ms: int | None
    last_ms: int | None
    window_start: int | None  # epoch seconds, the latest window the ledger reported
    window_count: int | None
    window_request_id: str | None  # the request that reported it
    window_received_ms: int | None  # and its event time: which request of that id
    latest_request_id: str | None


# --- the reader -------------------------------------------------------------------------------


class ConsoleQueries:
    """Read-only queries over a projection engine; each call is one short session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    # search ----------------------------------------------------------------------------------

    def search(
        self,
        filters: Filters,
        *,
        before: Cursor | None = None,
        after: Cursor | None = None,
        limit: int = PAGE_SIZE,
    ) -> Page:
        """One page, newest first: after ``before`` (older rows), or just before ``after``
        (newer rows), or the newest."""
        if before is not None and after is not None:
            raise ValueError("one cursor at a time")
        key = tuple_(RequestRow.received_at_ms, RequestRow.request_id)
        rows: list[RequestRow] = []
        with self._session() as session:
            for query in self._filtered(session, filters):
                if after is not None:
                    query = query.where(key > tuple_(after.received_at_ms, after.request_id))
                    order = (RequestRow.received_at_ms.asc(), RequestRow.request_id.asc())
                else:
                    if before is not None:
                        query = query.where(key < tuple_(before.received_at_ms, before.request_id))
                    order = (RequestRow.received_at_ms.desc(), RequestRow.request_id.desc())
                rows += session.scalars(query.order_by(*order).limit(limit + 1))
        # the queries' pages merged (one query but for an email on every site)
        rows.sort(key=lambda r: (r.received_at_ms, r.request_id), reverse=after is None)
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
            newer = Cursor.of(rows[0]) if more and rows else None
            older = Cursor.of(rows[-1]) if rows else after
            return Page(rows, newer=newer, older=older)
        newer = Cursor.of(rows[0]) if before is not None and rows else None
        if before is not None and not rows:
            newer = before
        return Page(rows, newer=newer, older=Cursor.of(rows[-1]) if more else None)

    def _filtered(self, session: Session, f: Filters) -> list[Select[RequestRow]]:
        """The query of the filters: one, or one per ``PERSONS_PER_QUERY`` persons for an
        email on every site (however many sites there are: none is left out)."""
        query = select(RequestRow)
        if f.since_ms is not None:
            query = query.where(RequestRow.received_at_ms >= f.since_ms)
        if f.until_ms is not None:
            query = query.where(RequestRow.received_at_ms < f.until_ms)
        states = STATE_GROUPS.get(f.state or "", (f.state,) if f.state else ())
        if f.email:
            if states:
                query = query.where(RequestRow.state.in_(states))
            sites = self._spelled(session, f.site, f.spellings) if f.site else self._sites(session)
            # each site's person as the ledger keys them, and as it keyed them before schema
            # 11 (the site as typed): one person, whichever spelling their webhooks used
            persons = person_keys(sites, f.email)
            return [
                query.where(RequestRow.person.in_(persons[at : at + PERSONS_PER_QUERY]))
                for at in range(0, len(persons), PERSONS_PER_QUERY)
            ]
        # a group of states: a query a state, each a range of an index that leads with the
        # state, never ``state IN (...)``, which SQLite without statistics (a projection before
        # the projector first gathers them) met by sorting every failed request ever; a site
        # spelled several ways (``Shop``, ``shop``: one site), a query a spelling likewise, each
        # a range of ``ix_requests_site_received`` (or ``_site_state_received``), not ``IN``
        queries = [query.where(RequestRow.state == state) for state in states] or [query]
        if not f.site:
            return queries
        return [
            each.where(RequestRow.site == site)
            for site in self._spelled(session, f.site, f.spellings)
            for each in queries
        ]

    def sites(self) -> list[str]:
        """Every site of the projection, in order."""
        with self._session() as session:
            return self._sites(session)

    def site_suggestions(self, typed: str | None, limit: int = SUGGESTED_SITES) -> Suggestions:
        """The sites the search form suggests, ``limit`` at most (a deployment has thousands):
        those whose name contains what was typed, in any case (the one named so first, then by
        name); nothing typed, every site when there are no more than ``limit``, else those of
        the newest requests (topped up by name)."""
        with self._session() as session:
            if not typed:
                first = self._sites(session, limit + 1)  # a probe a site, stopped past limit
                if len(first) <= limit:
                    return Suggestions(first, len(first), named=None)  # every site
                newest = session.scalars(
                    select(RequestRow.site)
                    .order_by(RequestRow.received_at_ms.desc(), RequestRow.request_id.desc())
                    .limit(NEWEST_REQUESTS_SUGGESTING)
                )
                recent = list(dict.fromkeys([*newest, *first]))[:limit]  # topped up by name
                return Suggestions(recent, len(recent), named=None)
            folded = typed.casefold()
            found = [site for site in self._sites(session) if folded in site.casefold()]
        found.sort(key=lambda site: (site.casefold() != folded, site))
        # the site typed in any case: its one spelling, else (``Shop``, ``shop``, spellings
        # the projection records apart, as their webhooks typed them: one site) as typed
        alike = [site for site in found if site.casefold() == folded]
        named = alike[0] if len(alike) == 1 else typed if alike else None
        # counted as sites, a site's spellings one ("2 sites have it" was Shop and shop)
        return Suggestions(found[:limit], len({site_identity(s) for s in found}), named=named)

    def site_named(self, name: str) -> str:
        """The site as the projection spells it: the one spelling its webhooks gave it
        (``Acme`` for ``acme``), else ``name`` as typed (a site spelled several ways, which
        the filters read as every one of them; or none, which finds nothing)."""
        spelled = self.spellings(name)
        return spelled[0] if len(spelled) == 1 else name

    def spellings(self, name: str) -> list[str]:
        """Every spelling of the site ``name`` names in any case, as the projection records
        them (each webhook's: ``Shop``, ``shop``), by name; none when it has no requests. One
        site, as the ledger counts it (``models.params.site_identity``): a filter by site
        reads them all."""
        with self._session() as session:
            return self._spellings(session, name)

    def _spelled(self, session: Session, site: str, known: tuple[str, ...] | None) -> list[str]:
        """What a filter by ``site`` reads: its spellings (``known``, as the filters carry
        them, else read), or ``site`` as named (no site has it: nothing found)."""
        spelled = known if known is not None else self._spellings(session, site)
        return list(spelled) or [site]

    @classmethod
    def _spellings(cls, session: Session, name: str) -> list[str]:
        # one query, the sites' loose index scan (a probe a site): a site's spellings are
        # not together in a collation's order, and no index holds lower(site); each spelling
        # is then read by equality, a range of the indexes that lead with the site
        folded = site_identity(name)
        return [site for site in cls._sites(session) if site_identity(site) == folded]

    @staticmethod
    def _sites(session: Session, limit: int | None = None) -> list[str]:
        """Every site by name (``limit``: the first ones only, the scan stopped there)."""
        # a loose index scan over ix_requests_site_received: one probe per distinct site
        found = session.execute(
            text(
                "WITH RECURSIVE s(site) AS ("
                " SELECT MIN(site) FROM requests"
                " UNION ALL"
                " SELECT (SELECT MIN(r.site) FROM requests r WHERE r.site > s.site)"
                " FROM s WHERE s.site IS NOT NULL"
                ") SELECT site FROM s WHERE site IS NOT NULL"
                + ("" if limit is None else f" LIMIT {int(limit)}")
            )
        )
        return [site for (site,) in found]

    # one request -----------------------------------------------------------------------------

    def timeline(
        self,
        request_id: str,
        *,
        truncated: bool = False,
        at_ms: int | None = None,
        occurrences: bool = False,
        numbered: bool = False,
        numbered_steps: bool = False,
    ) -> Timeline | None:
        """The request and its transitions; ``truncated``: whether its text was cut too (a
        projection migrated to 0006 has it: not one behind the console). ``at_ms``: which
        request of the id, by its event time (the ORM's key with the id: each request of an
        id is judged at another time); None: the latest. ``occurrences``: the projection has
        them (migration 0008): only that request's transitions are read (before it, an id has
        one request). ``numbered``: the number Talkable holds its event under too (migration
        0009); ``numbered_steps``: each publication transition's (migration 0010)."""
        r, t = RequestRow, TransitionRow
        with self._session() as session:
            options = [undefer(r.truncated)] if truncated else []
            if occurrences:
                options.append(undefer(r.occurrence))
            if numbered:
                options.append(undefer(r.event_number))
            query = select(r).options(*options).where(r.request_id == request_id)
            if at_ms is not None:
                query = query.where(r.received_at_ms == at_ms)
            request = session.scalars(query.order_by(r.received_at_ms.desc()).limit(1)).first()
            if request is None:
                return None
            steps = select(t).where(t.request_id == request_id)
            if numbered_steps:
                steps = steps.options(undefer(t.event_number))
            if occurrences:
                steps = steps.where(t.occurrence == request.occurrence)
            # the lifecycle topic is keyed by request: one partition, in decision order
            transitions = session.scalars(steps.order_by(t.topic, t.partition, t.offset))
            return timeline_of(request, list(transitions), numbered=numbered_steps)

    def event_times(self, request_id: str) -> list[int]:
        """The event times of the requests of this id, oldest first: one, unless the ledger
        named the same params by it again once it had forgotten the person."""
        r = RequestRow
        with self._session() as session:
            return list(
                session.scalars(
                    select(r.received_at_ms)
                    .where(r.request_id == request_id)
                    .order_by(r.received_at_ms)
                )
            )

    def requests_by_id(self, request_ids: Iterable[str]) -> dict[str, RequestRow]:
        """The latest request of each id."""
        return {rid: rows[-1] for rid, rows in self.occurrences_by_id(request_ids).items()}

    def occurrences_by_id(self, request_ids: Iterable[str]) -> dict[str, list[RequestRow]]:
        """Every request of each id, oldest first (one, unless the ledger named the same
        params by it again once it had forgotten the person): :func:`occurrence_at` picks the
        one a letter is of."""
        ids = sorted(set(request_ids))
        found: dict[str, list[RequestRow]] = {}
        with self._session() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for row in session.scalars(
                    select(RequestRow)
                    .where(RequestRow.request_id.in_(chunk))
                    .order_by(RequestRow.received_at_ms)
                ):
                    found.setdefault(row.request_id, []).append(row)
        return found

    def original_of(self, duplicate: RequestRow) -> RequestRow | None:
        """The request a ``rejected_duplicate`` repeated, as the ledger judged it: of the same
        person, named by the fingerprint it is a duplicate of (``duplicate_of``) or, had the
        ledger forgotten that fingerprint before, ``<fingerprint>~<delivery>``; not a repeat
        itself; the latest to have arrived by the repeat's arrival (the ledger's dedupe
        compares arrivals). None: the projection does not hold it."""
        fingerprint = duplicate.duplicate_of
        if fingerprint is None:
            return None
        r = RequestRow
        arrived = func.coalesce(r.arrived_at_ms, r.received_at_ms)
        with self._session() as session:
            candidates = session.scalars(
                select(r)
                .where(
                    r.person == duplicate.person,
                    (r.request_id == fingerprint)
                    | r.request_id.startswith(f"{fingerprint}~", autoescape=True),
                    r.duplicate_of.is_(None),
                    arrived <= arrival_of(duplicate),
                )
                .order_by(arrived.desc(), r.received_at_ms.desc())
            )
            # SQLite's LIKE ignores case: the id's own spelling, exactly
            return next(
                (
                    row
                    for row in candidates
                    if row.request_id == fingerprint or row.request_id.startswith(f"{fingerprint}~")
                ),
                None,
            )

    # a person --------------------------------------------------------------------------------

    def person(self, person: str, *before: str) -> PersonSummary:
        """The summary of the person ``person`` keys, with their requests under the keys
        ``before`` (the site as typed, before schema 11: ``models.params.person_keys``)."""
        keys = (person, *before)
        with self._session() as session:
            counts = session.execute(
                select(RequestRow.state, func.count())
                .where(RequestRow.person.in_(keys))
                .group_by(RequestRow.state)
            )
            by_state = {state: count for state, count in counts}
            first, last = session.execute(
                select(
                    func.min(RequestRow.received_at_ms), func.max(RequestRow.received_at_ms)
                ).where(RequestRow.person.in_(keys))
            ).one()
            windowed = session.execute(
                select(
                    RequestRow.window_start,
                    RequestRow.window_count,
                    RequestRow.request_id,
                    RequestRow.received_at_ms,
                )
                .where(RequestRow.person.in_(keys), RequestRow.window_start.is_not(None))
                .order_by(RequestRow.received_at_ms.desc(), RequestRow.request_id.desc())
                .limit(1)
            ).first()
            latest = session.scalar(
                select(RequestRow.request_id)
                .where(RequestRow.person.in_(keys))
                .order_by(RequestRow.received_at_ms.desc(), RequestRow.request_id.desc())
                .limit(1)
            )
        return PersonSummary(
            person=person,
            by_state=by_state,
            first_ms=first,
            last_ms=last,
            window_start=windowed[0] if windowed else None,
            window_count=windowed[1] if windowed else None,
            window_request_id=windowed[2] if windowed else None,
            window_received_ms=windowed[3] if windowed else None,
            latest_request_id=latest,
        )

    # the overview ----------------------------------------------------------------------------

    def overview(self, since_ms: int, until_ms: int, *, minutes: bool = False) -> Overview:
        """What ended in ``[since_ms, until_ms)``, and what is in flight now. ``minutes``: the
        projection has ``ended_minutes`` (migration 0007; not one behind the console): the
        counts and tokens of the window's whole minutes are read from it, and only its two
        partial minutes from the requests; else all of them from the requests."""
        first_minute, last_minute = since_ms // 60_000, (until_ms - 1) // 60_000
        buckets = list(range(first_minute, last_minute + 1))
        series = {state: [0] * len(buckets) for state in TERMINAL_STATES}
        sites: dict[str, SiteRow] = {}
        # the whole minutes read from ended_minutes, and the spans of requests read beside them
        whole = (-(-since_ms // 60_000), until_ms // 60_000) if minutes else (0, 0)
        if whole[0] < whole[1]:
            spans = [(since_ms, whole[0] * 60_000), (whole[1] * 60_000, until_ms)]
        else:
            whole, spans = (0, 0), [(since_ms, until_ms)]
        spans = [(low, high) for low, high in spans if low < high]
        by_minute: dict[tuple[int, str], int] = {}
        by_site: dict[tuple[str, str], list[int]] = {}
        with self._session() as session:
            for bucket, state, count in _counts_a_minute(session, whole, spans):
                if bucket is not None:
                    key = (int(bucket), state)
                    by_minute[key] = by_minute.get(key, 0) + int(count)
            for site, state, count, used in _counts_a_site(session, whole, spans):
                sums = by_site.setdefault((site, state), [0, 0])
                sums[0] += int(count)
                sums[1] += int(used or 0)
            for site, count in session.execute(
                select(RequestRow.site, func.count())
                .where(IN_FLIGHT_ROWS)  # as ix_requests_in_flight is written: its few rows
                .group_by(RequestRow.site)
            ):
                sites.setdefault(site, SiteRow(site)).in_flight = count
            published, p50, p95 = self._latencies(session, since_ms, until_ms)
            reasons = _failure_reasons(session, since_ms, until_ms)
        for (bucket, state), count in by_minute.items():
            index = bucket - first_minute
            if state in series and 0 <= index < len(buckets):
                series[state][index] = count
        for (site, state), (count, used) in by_site.items():
            # no row of noughts (its requests all moved on): a projection written before the
            # projector deleted such rows keeps them until it is rebuilt
            if count:
                row = sites.setdefault(site, SiteRow(site))
                row.by_state[state] = count
                row.tokens += used
        for site, reason, count in reasons:
            if site in sites:
                found = sites[site].reasons
                found[reason or NO_CLASS] = found.get(reason or NO_CLASS, 0) + int(count)
        return Overview(
            since_ms=since_ms,
            until_ms=until_ms,
            minutes=buckets,
            series=series,
            published=published,
            p50_ms=p50,
            p95_ms=p95,
            sites=_one_a_site(sites.values()),
        )

    @staticmethod
    def _latencies(
        session: Session, since_ms: int, until_ms: int
    ) -> tuple[int, int | None, int | None]:
        """How many requests were published in the window, and their arrival -> published
        p50 and p95 (nearest rank, as ``talkstream stats``), ranked by the database: two rows
        come back, not one per request (the 24-hour overview at 1,000,000 requests fetched
        114,000 latencies into Python, half its time)."""
        found = session.execute(
            _LATENCIES,
            {"published": State.PUBLISHED.value, "since": since_ms, "until": until_ms},
        ).all()
        if not found:
            return 0, None, None
        count = int(found[0][0])
        at = {int(rank): int(ms) for _, rank, ms in found}
        return count, at[_nearest(50, count)], at[_nearest(95, count)]


_TOKENS = func.coalesce(RequestRow.prompt_tokens, 0) + func.coalesce(
    RequestRow.completion_tokens, 0
)


def _one_a_site(spelled: Iterable[SiteRow]) -> list[SiteRow]:
    """A site's spellings (``Shop``, ``shop``: one site, as the ledger counts it and the
    publisher paces it, ``models.params.site_identity``) as one row, by name, as ``talkstream
    stats`` counts them: named by its one spelling, else lower-cased. Its counts add up (the
    overview keeps no percentile a site)."""
    by_identity: dict[str, list[SiteRow]] = {}
    for row in spelled:
        by_identity.setdefault(site_identity(row.site), []).append(row)
    rows = []
    for identity, spellings in by_identity.items():
        if len(spellings) == 1:
            [one] = spellings
            one.spellings = [one.site]
            rows.append(one)
            continue
        merged = SiteRow(identity, spellings=sorted(r.site for r in spellings))
        for row in spellings:
            for state, count in row.by_state.items():
                merged.by_state[state] = merged.by_state.get(state, 0) + count
            for reason, count in row.reasons.items():
                merged.reasons[reason] = merged.reasons.get(reason, 0) + count
            merged.in_flight += row.in_flight
            merged.tokens += row.tokens
        rows.append(merged)
    return sorted(rows, key=lambda r: r.site)


def _ended_in(low: int, high: int) -> ColumnElement[bool]:
    return (RequestRow.terminal_at_ms >= low) & (RequestRow.terminal_at_ms < high)


def _counts_a_minute(
    session: Session, whole: tuple[int, int], spans: list[tuple[int, int]]
) -> list[Any]:
    """(minute, state, requests) of the whole minutes ``whole`` from ended_minutes, and of the
    requests that ended in each span."""
    found: list[Any] = []
    m = EndedMinuteRow
    if whole[0] < whole[1]:
        found += session.execute(
            select(m.minute, m.state, func.sum(m.requests))
            .where(m.minute >= whole[0], m.minute < whole[1])
            .group_by(m.minute, m.state)
        ).all()
    minute = RequestRow.terminal_at_ms // 60_000
    for low, high in spans:
        found += session.execute(
            select(minute, RequestRow.state, func.count())
            .where(_ended_in(low, high))
            .group_by(minute, RequestRow.state)
        ).all()
    return found


def _counts_a_site(
    session: Session, whole: tuple[int, int], spans: list[tuple[int, int]]
) -> list[Any]:
    """(site, state, requests, tokens) of the whole minutes ``whole`` from ended_minutes, and
    of the requests that ended in each span."""
    found: list[Any] = []
    m = EndedMinuteRow
    if whole[0] < whole[1]:
        found += session.execute(
            select(m.site, m.state, func.sum(m.requests), func.sum(m.tokens))
            .where(m.minute >= whole[0], m.minute < whole[1])
            .group_by(m.site, m.state)
        ).all()
    for low, high in spans:
        found += session.execute(
            select(RequestRow.site, RequestRow.state, func.count(), func.sum(_TOKENS))
            .where(_ended_in(low, high))
            .group_by(RequestRow.site, RequestRow.state)
        ).all()
    return found


def _failure_reasons(session: Session, since_ms: int, until_ms: int) -> list[Any]:
    """(site, error class, requests) of the failed requests that ended in the window: the
    range of ``ix_requests_ended`` the counts read, a row read only where the index says it
    failed. Its state is a value compared (``state || ''``), not a condition an index could
    meet: SQLite without statistics met ``state IN (...)`` by ``ix_requests_state``, reading
    every failed request ever."""
    return list(
        session.execute(
            select(RequestRow.site, RequestRow.error_class, func.count())
            .where(_ended_in(since_ms, until_ms), (RequestRow.state + "").in_(FAILED))
            .group_by(RequestRow.site, RequestRow.error_class)
        ).all()
    )


# arrival -> published of the requests that ended in a window: each ended request's latency
# when it was published (a value beside its state, not a condition on it, which a database
# without statistics might meet by reading every published request ever by ix_requests_state),
# from ix_requests_ended alone; the count, and the rows at the p50 and p95 ranks of them
_LATENCY = (
    "SELECT CASE WHEN state = :published"
    " THEN terminal_at_ms - COALESCE(arrived_at_ms, received_at_ms) END AS ms"
    " FROM requests WHERE terminal_at_ms >= :since AND terminal_at_ms < :until"
)
_LATENCIES = text(
    f"WITH counted AS (SELECT count(ms) AS n FROM ({_LATENCY}) AS ended)"
    " SELECT (SELECT n FROM counted), ranked.rank, ranked.ms FROM ("
    f"  SELECT ms, row_number() OVER (ORDER BY ms) AS rank FROM ({_LATENCY}) AS ended"
    "  WHERE ms IS NOT NULL"
    ") AS ranked"
    " WHERE ranked.rank IN ("
    "  (SELECT (50 * n + 99) / 100 FROM counted), (SELECT (95 * n + 99) / 100 FROM counted)"
    " )"
)


def _nearest(p: int, count: int) -> int:
    """The 1-based rank of the nearest-rank ``p``th percentile of ``count`` values (what the
    query's ``(p * n + 99) / 100`` computes)."""
    return -(-p * count // 100)


def arrival_of(row: RequestRow) -> int:
    """When a request's webhook reached the ingress (its event time on a row projected before
    migration 0002, which has no arrival)."""
    return row.arrived_at_ms if row.arrived_at_ms is not None else row.received_at_ms


def occurrence_at(rows: list[RequestRow], wall_ms: int) -> RequestRow | None:
    """Which request of an id (``rows``: each of them) something written at ``wall_ms`` (a
    wall clock: a dead letter) is of: the latest to have arrived by then. A request of the
    same id comes a retention (30 days) after the earlier ended, so the clocks of the ingress
    and of the letter's writer need only agree within that. Written before any arrived (a
    clock far behind): the first. None: the id has no request in the projection."""
    arrived = [row for row in rows if arrival_of(row) <= wall_ms]
    if arrived:
        return max(arrived, key=lambda row: (arrival_of(row), row.received_at_ms))
    return min(rows, key=lambda row: (arrival_of(row), row.received_at_ms), default=None)

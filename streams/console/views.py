"""The console's pages: overview, search, a request's timeline (and its content from the log),
a person's usage, dead letters with redrive (preview, then the real one).

Handlers read top to bottom: parse the query → read (the projection in a thread, Kafka and the
workers' metrics asynchronously) → render a template (Jinja2, autoescaped: every value from a
webhook is text, never markup). Every action is a POST (checked by ``auth``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from models.params import person_key
from streams.console import auth
from streams.console.chart import COLORS, chart
from streams.console.log import Content, Letter
from streams.console.pacing import Pacing
from streams.console.queries import (
    FAILED,
    SEARCHABLE_STATES,
    TERMINAL_STATES,
    ConsoleQueries,
    Cursor,
    Filters,
)
from streams.errors import TalkstreamError
from streams.ops.audit import parse_time
from streams.ops.redrive import RedriveReport, Selection
from streams.projection.tables import RequestRow

log = logging.getLogger(__name__)

WINDOWS = {"15m": 15, "1h": 60, "6h": 360, "24h": 1440}
LOG_TIMEOUT_SECONDS = 15.0
PARKED = frozenset(FAILED)


class Log(Protocol):
    """What the console reads from and sends to Kafka (a fake in the functional tests)."""

    async def letters(self) -> list[Letter]: ...

    async def content(
        self, *, request_id: str, person: str, arrived_ms: int, generated_ms: int | None
    ) -> Content: ...

    async def redrive(self, selection: Selection, *, dry_run: bool) -> RedriveReport: ...


@dataclass(frozen=True)
class Services:
    queries: ConsoleQueries
    log: Log
    pacing: Callable[[], Any]  # -> Awaitable[Pacing]
    now_ms: Callable[[], int]
    database: str  # the projection's URL, password hidden


SERVICES = web.AppKey("console_services", Services)


TEMPLATES = web.AppKey("console_templates", jinja2.Environment)


def render(
    request: web.Request, template: str, context: Mapping[str, Any], status: int = 200
) -> web.Response:
    """A page: the template with the context every page has (the session's CSRF token for
    its forms, whether someone is signed in, the projection's URL)."""
    services = request.app.get(SERVICES)
    page = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            {
                "csrf": request.get(auth.CSRF, ""),
                "signed_in": request.get(auth.AUTH) is not None,
                "database": services.database if services else "",
                "nav": "",
                **context,
            }
        )
    )
    return web.Response(text=page, status=status, content_type="text/html")


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _db(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A projection query, off the event loop."""
    return await asyncio.to_thread(function, *args, **kwargs)


# --- overview ---------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    s = _services(request)
    window = request.query.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"
    until = s.now_ms()
    since = until - WINDOWS[window] * 60_000
    summary, pacing = await asyncio.gather(_db(s.queries.overview, since, until), _pacing(s.pacing))
    return render(
        request,
        "overview.html",
        {
            "nav": "overview",
            "window": window,
            "windows": list(WINDOWS),
            "o": summary,
            "chart": chart(summary),
            "colors": COLORS,
            "states": TERMINAL_STATES,
            "pacing": pacing,
        },
    )


async def _pacing(scrape: Callable[[], Any]) -> Pacing:
    try:
        found: Pacing = await scrape()
    except Exception:  # a page never fails for lack of metrics
        log.exception("console: reading the workers' metrics failed")
        return Pacing()
    return found


# --- search -----------------------------------------------------------------------------------


def _filters(query: Mapping[str, str], now_ms: int) -> Filters:
    def time(name: str) -> int | None:
        value = (query.get(name) or "").strip()
        return parse_time(value, now_ms) if value else None

    state = (query.get("state") or "").strip() or None
    email = (query.get("email") or "").strip().lower() or None
    return Filters(
        site=(query.get("site") or "").strip() or None,
        email=email,
        state=state,
        since_ms=time("since"),
        until_ms=time("until"),
    )


def _query(values: Mapping[str, str | None]) -> str:
    return urlencode({k: v for k, v in values.items() if v})


async def search(request: web.Request) -> web.Response:
    s = _services(request)
    given = {k: request.query.get(k, "") for k in ("site", "email", "state", "since", "until")}
    error = None
    try:
        filters = _filters(request.query, s.now_ms())
        before = Cursor.decode(request.query.get("before"))
        after = Cursor.decode(request.query.get("after"))
        page = await _db(s.queries.search, filters, before=before, after=after)
    except ValueError as exc:
        error, page = str(exc), None
    sites = await _db(s.queries.sites)
    return render(
        request,
        "search.html",
        {
            "nav": "search",
            "given": given,
            "sites": sites,
            "states": SEARCHABLE_STATES,
            "page": page,
            "error": error,
            "newer": page and page.newer and _query({**given, "after": page.newer.encode()}),
            "older": page and page.older and _query({**given, "before": page.older.encode()}),
        },
        status=400 if error else 200,
    )


# --- a request --------------------------------------------------------------------------------


async def request_page(request: web.Request) -> web.Response:
    s = _services(request)
    request_id = request.query.get("id", "")
    timeline = await _db(s.queries.timeline, request_id) if request_id else None
    if timeline is None:
        return render(request, "missing.html", {"what": "request", "name": request_id}, status=404)
    row = timeline.request
    site, _, email = row.person.partition(":")
    return render(
        request,
        "request.html",
        {
            "nav": "search",
            "t": timeline,
            "r": row,
            "person_link": _query({"site": site, "email": email}),
            "content_link": _query({"id": row.request_id}),
            "letters_link": _query({"request_id": row.request_id}),
            "parked": row.state in PARKED,
        },
    )


async def request_content(request: web.Request) -> web.Response:
    """The request's webhook messages, generated text and event number, read from the log
    (a frame of the timeline page, so the timeline never waits for Kafka)."""
    s = _services(request)
    request_id = request.query.get("id", "")
    timeline = await _db(s.queries.timeline, request_id) if request_id else None
    if timeline is None:
        return render(request, "missing.html", {"what": "request", "name": request_id}, 404)
    generated = [step.wall_ms for step in timeline.steps if step.state == "generated"]
    content, error = await _content(s, timeline.request, timeline.arrived_ms, generated)
    return render(request, "content.html", {"c": content, "error": error})


async def _content(
    s: Services, row: RequestRow, arrived_ms: int, generated: list[int]
) -> tuple[Content | None, str | None]:
    try:
        content = await asyncio.wait_for(
            s.log.content(
                request_id=row.request_id,
                person=row.person,
                arrived_ms=arrived_ms,
                generated_ms=generated[-1] if generated else None,
            ),
            LOG_TIMEOUT_SECONDS,
        )
    except TimeoutError:
        return None, f"Kafka did not answer within {LOG_TIMEOUT_SECONDS:.0f} s"
    except TalkstreamError as exc:
        return None, str(exc)
    return content, None


# --- a person ---------------------------------------------------------------------------------


async def person_page(request: web.Request) -> web.Response:
    s = _services(request)
    site = request.query.get("site", "").strip()
    email = request.query.get("email", "").strip().lower()
    if not site or not email:
        return render(request, "missing.html", {"what": "person", "name": ""}, 404)
    key = person_key(site, email)
    try:
        before = Cursor.decode(request.query.get("before"))
        after = Cursor.decode(request.query.get("after"))
    except ValueError:
        before = after = None
    summary, page = await asyncio.gather(
        _db(s.queries.person, key),
        _db(s.queries.search, Filters(site=site, email=email), before=before, after=after),
    )
    if not summary.by_state:
        return render(request, "missing.html", {"what": "person", "name": key}, 404)
    limit, error = None, None
    if summary.window_request_id is not None:
        windowed = await _db(s.queries.timeline, summary.window_request_id)
        if windowed is not None:
            content, error = await _content(s, windowed.request, windowed.arrived_ms, [])
            limit = content.usage_limit if content is not None else None
    who = {"site": site, "email": email}
    return render(
        request,
        "person.html",
        {
            "nav": "search",
            "site": site,
            "email": email,
            "p": summary,
            "limit": limit,
            "limit_error": error,
            "now_ms": s.now_ms(),
            "page": page,
            "search_link": _query(who),
            "newer": page.newer and _query({**who, "after": page.newer.encode()}),
            "older": page.older and _query({**who, "before": page.older.encode()}),
        },
    )


# --- dead letters and redrive ------------------------------------------------------------------

LETTER_FIELDS = ("site", "reason", "topic", "since", "until", "request_id")


@dataclass(frozen=True)
class LetterFilters:
    site: str | None
    reason: str | None
    topic: str | None
    since_ms: int | None
    until_ms: int | None
    request_id: str | None

    @classmethod
    def of(cls, values: Mapping[str, Any], now_ms: int) -> LetterFilters:
        def text(name: str) -> str | None:
            value = values.get(name)
            return value.strip() or None if isinstance(value, str) else None

        def time(name: str) -> int | None:
            value = text(name)
            return parse_time(value, now_ms) if value else None

        return cls(
            site=text("site"),
            reason=text("reason"),
            topic=text("topic"),
            since_ms=time("since"),
            until_ms=time("until"),
            request_id=text("request_id"),
        )

    def matches(self, letter: Letter, row: RequestRow | None) -> bool:
        return (
            (self.request_id is None or letter.request_id == self.request_id)
            and (self.topic is None or letter.topic == self.topic)
            and (self.reason is None or self.reason.lower() in letter.reason.lower())
            and (self.since_ms is None or letter.at_ms >= self.since_ms)
            and (self.until_ms is None or letter.at_ms <= self.until_ms)
            and (self.site is None or (row is not None and row.site == self.site))
        )

    def selection(self, request_ids: frozenset[str]) -> Selection:
        """What ``talkstream redrive`` is asked: these filters, and only these requests."""
        return Selection(
            topic=self.topic,
            reason_contains=self.reason,
            site=self.site,
            since_ms=self.since_ms,
            until_ms=self.until_ms,
            request_ids=request_ids,
        )


@dataclass(frozen=True)
class LetterRow:
    letter: Letter
    request: RequestRow | None

    @property
    def parked(self) -> bool:
        return self.request is not None and self.request.state in PARKED

    @property
    def since(self) -> str:
        """What became of the request after the letter was written."""
        row = self.request
        if row is None:
            return "not in the projection" if self.letter.request_id else "a message"
        if row.state in PARKED and row.updated_at_ms <= self.letter.at_ms + 1000:
            return "parked: can be redriven"
        if row.state in PARKED:
            return "redriven, parked again"
        return f"redriven: {row.state}" if row.terminal else f"redriven: {row.state} (running)"


async def _letters(s: Services, filters: LetterFilters) -> tuple[list[LetterRow], str | None]:
    try:
        letters = await asyncio.wait_for(s.log.letters(), LOG_TIMEOUT_SECONDS)
    except TimeoutError:
        return [], f"Kafka did not answer within {LOG_TIMEOUT_SECONDS:.0f} s"
    except TalkstreamError as exc:
        return [], str(exc)
    rows = await _db(s.queries.requests_by_id, [x.request_id for x in letters if x.request_id])
    joined = [LetterRow(x, rows.get(x.request_id or "")) for x in letters]
    return [j for j in joined if filters.matches(j.letter, j.request)], None


def _given(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: v.strip() for k in LETTER_FIELDS if isinstance(v := values.get(k), str)}


async def dead_letters(request: web.Request) -> web.Response:
    s = _services(request)
    given = _given(request.query)
    try:
        filters = LetterFilters.of(request.query, s.now_ms())
    except ValueError as exc:
        return render(request, "deadletters.html", _letters_context(given, [], str(exc)), 400)
    rows, error = await _letters(s, filters)
    return render(request, "deadletters.html", _letters_context(given, rows, error))


def _letters_context(given: dict[str, str], rows: list[LetterRow], error: str | None) -> Any:
    return {
        "nav": "deadletters",
        "given": given,
        "rows": rows,
        "parked": len({r.letter.request_id for r in rows if r.parked}),
        "error": error,
    }


async def preview(request: web.Request) -> web.Response:
    """The dry run: what a redrive of these filters would send, changing nothing."""
    s = _services(request)
    form = await request.post()
    given = _given(form)
    try:
        filters = LetterFilters.of(form, s.now_ms())
    except ValueError as exc:
        return render(request, "deadletters.html", _letters_context(given, [], str(exc)), 400)
    rows, error = await _letters(s, filters)
    candidates = {r.letter.request_id: r for r in rows if r.parked and r.letter.request_id}
    report, would = None, []
    if candidates and error is None:
        try:
            report = await s.log.redrive(filters.selection(frozenset(candidates)), dry_run=True)
        except TalkstreamError as exc:
            error = str(exc)
        else:
            would = [candidates[i] for i in _request_ids(report) if i in candidates]
    return render(
        request,
        "preview.html",
        {"nav": "deadletters", "given": given, "would": would, "error": error, "report": report},
    )


async def redrive(request: web.Request) -> web.Response:
    """The real redrive of what the preview showed (those of its requests still parked)."""
    s = _services(request)
    form = await request.post()
    given = _given(form)
    try:
        filters = LetterFilters.of(form, s.now_ms())
    except ValueError as exc:
        return render(request, "deadletters.html", _letters_context(given, [], str(exc)), 400)
    asked = {v for v in form.getall("id", []) if isinstance(v, str) and v}
    rows = await _db(s.queries.requests_by_id, asked)
    parked = frozenset(i for i, row in rows.items() if row.state in PARKED)
    report, error = None, None
    if parked:
        try:
            report = await s.log.redrive(filters.selection(parked), dry_run=False)
        except TalkstreamError as exc:
            error = str(exc)
    done = _request_ids(report) if report is not None else []
    log.info("console redrive: asked=%d parked=%d redriven=%d", len(asked), len(parked), len(done))
    return render(
        request,
        "redriven.html",
        {
            "nav": "deadletters",
            "given": given,
            "redriven": [rows[i] for i in done if i in rows],
            "not_parked": sorted(asked - parked),
            "error": error,
        },
    )


def _request_ids(report: RedriveReport) -> list[str]:
    """The requests a redrive (or its dry run) sent to the ledger, each once, in order."""
    seen: dict[str, None] = {}
    for entry in report.redriven:
        request_id, arrow, _ = entry.rpartition(" → ")
        if arrow:
            seen.setdefault(request_id, None)
    return list(seen)

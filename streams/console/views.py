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
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from models.params import person_keys, site_identity, site_named
from streams.console import schema
from streams.console.chart import COLORS, chart
from streams.console.log import Content, Letters, Sought
from streams.console.pacing import Pacing
from streams.console.pages import REVISION, render
from streams.console.queries import (
    SEARCHABLE_STATES,
    TERMINAL_STATES,
    ConsoleQueries,
    Cursor,
    Filters,
    SiteRow,
    fits_bigint,
)
from streams.errors import TalkstreamError
from streams.ops.audit import parse_range
from streams.ops.clocks import Timeline
from streams.ops.redrive import PARKED, RedriveReport, Selection
from streams.projection.tables import RequestRow
from streams.settings import Settings

log = logging.getLogger(__name__)

WINDOWS = {"15m": 15, "1h": 60, "6h": 360, "24h": 1440}
SITES_PER_PAGE = 50  # the overview's sites table
# the orders the sites table offers: what it is sorted by (ties, and "name": by name)
SITE_ORDERS: dict[str, tuple[str, Callable[[SiteRow], int]]] = {
    "name": ("by name", lambda row: 0),
    "failed": ("most failed first", lambda row: -row.failed),
    "ended": ("most ended first", lambda row: -row.total),
    "in_flight": ("most in flight first", lambda row: -row.in_flight),
    "tokens": ("most tokens first", lambda row: -row.tokens),
}
LOG_TIMEOUT_SECONDS = 15.0


class Log(Protocol):
    """What the console reads from and sends to Kafka (a fake in the functional tests)."""

    async def letters(self) -> Letters: ...

    async def content(self, sought: Sought) -> Content: ...

    async def redrive(self, selection: Selection, *, dry_run: bool) -> RedriveReport: ...


@dataclass(frozen=True)
class Services:
    settings: Settings
    queries: ConsoleQueries
    log: Log
    pacing: Callable[[], Any]  # -> Awaitable[Pacing]
    now_ms: Callable[[], int]


SERVICES = web.AppKey("console_services", Services)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


async def run_query(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A projection query, off the event loop."""
    return await asyncio.to_thread(function, *args, **kwargs)


# --- overview ---------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    s = services_of(request)
    window, error = request.query.get("window", "1h"), None
    if window not in WINDOWS:  # the last hour is shown, and the page says why
        window, error = "1h", f"window: one of {', '.join(WINDOWS)}"
    until = s.now_ms()
    since = until - WINDOWS[window] * 60_000
    # a projection before migration 0007 (not migrated yet) has no ended_minutes: its requests
    minutes = schema.has(request.get(REVISION), "0007")
    summary, pacing = await asyncio.gather(
        run_query(s.queries.overview, since, until, minutes=minutes), _pacing(s.pacing)
    )
    table, table_error = _sites_table(summary.sites, request.query, window)
    error = error or table_error
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
            "error": error,
            **table,
        },
        status=400 if error else 200,
    )


def _sites_table(
    rows: list[SiteRow], query: Mapping[str, str], window: str
) -> tuple[dict[str, Any], str | None]:
    """The page of the overview's sites table the query asks for: the sites whose name
    contains what was typed (in any case), in the order chosen (ties by name: a stable order to
    page through), ``SITES_PER_PAGE`` at a time (a deployment has thousands); and what is wrong
    with the query (the first page by name is shown then)."""
    error = None
    find = query.get("site", "").strip()
    order = query.get("order", "name")
    if order not in SITE_ORDERS:
        order, error = "name", f"order: one of {', '.join(SITE_ORDERS)}"
    key = SITE_ORDERS[order][1]
    sites = sorted(
        (row for row in rows if find.casefold() in row.site.casefold()),
        key=lambda row: (key(row), row.site),
    )
    pages = max(1, -(-len(sites) // SITES_PER_PAGE))
    try:
        page = int(query.get("page", "1"))
    except ValueError:
        page = 0
    if not 1 <= page <= pages:
        page, error = 1, error or f"page: a number from 1 to {pages}"
    first = (page - 1) * SITES_PER_PAGE
    here = {"window": window, "site": find, "order": order if order != "name" else ""}
    return {
        "find": find,
        "order": order,
        "orders": {name: label for name, (label, _) in SITE_ORDERS.items()},
        "sites": sites[first : first + SITES_PER_PAGE],
        "sites_first": first + 1,
        "sites_matching": len(sites),
        "previous": page > 1 and _query({**here, "page": str(page - 1)}) + "#sites",
        "next": page < pages and _query({**here, "page": str(page + 1)}) + "#sites",
    }, error


async def _pacing(scrape: Callable[[], Any]) -> Pacing:
    try:
        found: Pacing = await scrape()
    except Exception:  # a page never fails for lack of metrics
        log.exception("console: reading the workers' metrics failed")
        return Pacing()
    return found


# --- search -----------------------------------------------------------------------------------


def _filters(query: Mapping[str, str], now_ms: int) -> Filters:
    since_ms, until_ms = parse_range(query.get("since"), query.get("until"), now_ms)
    state = (query.get("state") or "").strip() or None
    email = (query.get("email") or "").strip().lower() or None
    return Filters(
        site=(query.get("site") or "").strip() or None,
        email=email,
        state=state,
        since_ms=since_ms,
        until_ms=until_ms,
    )


def _query(values: Mapping[str, str | None]) -> str:
    return urlencode({k: v for k, v in values.items() if v})


def request_link(row: RequestRow | None, request_id: str) -> str:
    """The query of the page of one request: its id and event time (``at``: which request of
    the id, when the ledger named several by it); the id alone (its latest) for one the
    projection does not hold."""
    if row is None:
        return _query({"id": request_id})
    return _query({"id": row.request_id, "at": str(row.received_at_ms)})


async def search(request: web.Request) -> web.Response:
    s = services_of(request)
    given = {k: request.query.get(k, "") for k in ("site", "email", "state", "since", "until")}
    error = None
    spellings: list[str] = []
    try:
        filters = _filters(request.query, s.now_ms())
        if filters.site:  # in any case, every spelling of it: "acme" finds "Acme", "SHOP"
            # finds Shop and shop (one site); its one spelling is shown as the projection has it
            spellings = await run_query(s.queries.spellings, filters.site)
            given["site"] = spellings[0] if len(spellings) == 1 else filters.site
            filters = replace(filters, site=given["site"], spellings=tuple(spellings))
        before = Cursor.decode(request.query.get("before"), "before")
        after = Cursor.decode(request.query.get("after"), "after")
        page = await run_query(s.queries.search, filters, before=before, after=after)
    except ValueError as exc:
        error, page = str(exc), None
    # a few sites suggested, not every one (80 KB of them at 2,001 sites): those named like
    # what was typed, or those of the newest requests; a site no site is named links to those
    # that have it in their name, so that any site is found from a part of its name
    typed = given["site"].strip()
    suggestions = await run_query(s.queries.site_suggestions, typed)
    unknown = bool(typed) and suggestions.named is None
    return render(
        request,
        "search.html",
        {
            "nav": "search",
            "given": given,
            "suggestions": suggestions,
            "unknown": unknown,
            "spellings": spellings if len(spellings) > 1 else [],
            "site_links": _site_links(suggestions.sites, given) if unknown else [],
            "states": SEARCHABLE_STATES,
            "page": page,
            "error": error,
            "newer": page and page.newer and _query({**given, "after": page.newer.encode()}),
            "older": page and page.older and _query({**given, "before": page.older.encode()}),
        },
        status=400 if error else 200,
    )


def _site_links(sites: list[str], given: Mapping[str, str]) -> list[tuple[str, list[str], str]]:
    """The sites suggested for a site no site is named, each once: a site its webhooks spelled
    several ways (``Shop``, ``shop``) is one link, named lower-cased as the overview names it,
    its spellings beside it (each spelling was a link of its own, "2 sites", though either
    finds the requests of both); with the search's query on that site."""
    grouped: dict[str, list[str]] = {}
    for site in sites:
        grouped.setdefault(site_identity(site), []).append(site)
    links = []
    for spelled in grouped.values():
        named = site_named(spelled)
        links.append((named, spelled if len(spelled) > 1 else [], _query({**given, "site": named})))
    return links


# --- a request --------------------------------------------------------------------------------


def _id(request: web.Request) -> str | None:
    """The request id a page names (``id``); None when it names none."""
    return request.query.get("id", "").strip() or None


NO_ID = "id: empty: say which request (its request id, as search lists it)"


def _at(request: web.Request) -> tuple[int | None, str | None]:
    """Which request of an id a page names (``at``: its event time, in ms; None, the latest,
    when it names none), and what is wrong with an ``at`` it cannot read (the latest is shown
    then, and the page says why)."""
    at = request.query.get("at", "").strip()
    if not at:
        return None, None
    # ASCII digits only ("²" is a digit int() refuses), in a BIGINT (what the database takes)
    if not (at.isascii() and at.isdigit()) or not fits_bigint(int(at)):
        return None, (
            f"at: {at!r} is not an event time (ms since the epoch): the id's latest request "
            "is shown"
        )
    return int(at), None


def _unnamed(request: web.Request, error: str) -> web.Response:
    """A page asked without what it shows (an empty ``id``, a person's ``site``): a 400
    naming the field, as any bad value is."""
    return render(request, "missing.html", {"what": "request", "name": "", "error": error}, 400)


async def request_page(request: web.Request) -> web.Response:
    s = services_of(request)
    request_id = _id(request)
    if request_id is None:
        return _unnamed(request, NO_ID)
    at_ms, at_error = _at(request)
    # a projection before migration 0006 (not migrated yet) has no column of whether a text
    # was cut; one before 0008, none of which request of its id a transition is (each id had
    # one request there)
    current = schema.has(request.get(REVISION), "0006")
    occurrences = schema.has(request.get(REVISION), "0008")
    # nor, before 0009, the number Talkable holds a published request's event under
    numbered = schema.has(request.get(REVISION), "0009")
    # nor, before 0010, the number each publication attempted
    numbered_steps = schema.has(request.get(REVISION), "0010")
    timeline = await run_query(
        s.queries.timeline,
        request_id,
        truncated=current,
        at_ms=at_ms,
        occurrences=occurrences,
        numbered=numbered,
        numbered_steps=numbered_steps,
    )
    if timeline is None:
        return render(request, "missing.html", {"what": "request", "name": request_id}, status=404)
    row = timeline.request
    # the site as its webhook typed it (the person's key folds its case: schema 11)
    site, email = row.site, row.person.partition(":")[2]
    # its text was cut at its token cap: said beside its tokens and on its (last) generated
    # step, by no name (``max_tokens`` or ``max_completion_tokens``: the request does not
    # record which it was sent as; its content frame names the campaign's)
    generated = [i for i, step in enumerate(timeline.steps) if step.state == "generated"]
    cut_step = generated[-1] if current and row.truncated and generated else None
    # the id's requests, when the ledger named more than one by it (the same params once it
    # had forgotten the person): each linked by its event time
    times = await run_query(s.queries.event_times, row.request_id)
    # a repeat links to the request it repeated, not the latest of that id
    original = await run_query(s.queries.original_of, row) if row.duplicate_of else None
    return render(
        request,
        "request.html",
        {
            "nav": "search",
            "t": timeline,
            "r": row,
            "error": at_error,
            "person_link": _query({"site": site, "email": email}),
            "content_link": _query(
                {"id": row.request_id, "at": str(row.received_at_ms) if len(times) > 1 else None}
            ),
            "letters_link": _query({"request_id": row.request_id}),
            "original": original.request_id if original is not None else row.duplicate_of,
            "original_link": request_link(original, row.duplicate_of or ""),
            "parked": row.state in PARKED,
            "truncated": row.truncated if current else None,  # None: not projected yet
            # where its text landed (published only; the content frame's number is the one
            # its webhook gives, read from the log)
            "talkable_event": row.event_number if numbered else None,
            # a publication that did not land (parked, or in flight): the number it attempted
            "attempted_event": _attempted(timeline) if row.state in UNLANDED else None,
            "cut_step": cut_step,
            "same_id": [
                (n, at, _query({"id": row.request_id, "at": str(at)}))
                for n, at in enumerate(times, start=1)
            ]
            if len(times) > 1
            else [],
        },
        status=400 if at_error else 200,
    )


# a request whose publication started and has not landed
UNLANDED = frozenset({"publishing", "publish_failed"})


def _attempted(timeline: Timeline) -> str | None:
    """The Talkable event number the request's latest publication attempted (None: not said,
    an event before lifecycle schema 9 or a projection before migration 0010)."""
    numbers = [step.event_number for step in timeline.steps if step.event_number]
    return numbers[-1] if numbers else None


async def request_content(request: web.Request) -> web.Response:
    """The request's webhook messages, generated text and event number, read from the log
    (a frame of the timeline page, so the timeline never waits for Kafka)."""
    s = services_of(request)
    request_id = _id(request)
    if request_id is None:
        return _unnamed(request, NO_ID)
    at_ms, at_error = _at(request)
    occurrences = schema.has(request.get(REVISION), "0008")
    timeline = await run_query(s.queries.timeline, request_id, at_ms=at_ms, occurrences=occurrences)
    if timeline is None:
        return render(request, "missing.html", {"what": "request", "name": request_id}, 404)
    generated = [step.wall_ms for step in timeline.steps if step.state == "generated"]
    # the last result of each upstream: a generation that failed (none after it succeeded),
    # a publication published or not; their records say how many calls each made
    generations = [x for x in timeline.steps if x.state in ("generated", "generation_failed")]
    publications = [x for x in timeline.steps if x.state in ("published", "publish_failed")]
    failed = (
        generations[-1].wall_ms if generations and generations[-1].state != "generated" else None
    )
    published = publications[-1].wall_ms if publications else None
    row = timeline.request
    last_text = generated[-1] if generated else None
    sought = Sought(row.request_id, row.person, timeline.arrived_ms, last_text, failed, published)
    content, error = await _content(s, sought)
    return render(
        request,
        "content.html",
        {"c": content, "error": error, "asked": at_error},
        status=400 if at_error else 200,
    )


async def _content(s: Services, sought: Sought) -> tuple[Content | None, str | None]:
    try:
        content = await asyncio.wait_for(s.log.content(sought), LOG_TIMEOUT_SECONDS)
    except TimeoutError:
        return None, f"Kafka did not answer within {LOG_TIMEOUT_SECONDS:.0f} s"
    except TalkstreamError as exc:
        return None, str(exc)
    return content, None


# --- a person ---------------------------------------------------------------------------------


async def person_page(request: web.Request) -> web.Response:
    s = services_of(request)
    site = request.query.get("site", "").strip()
    email = request.query.get("email", "").strip().lower()
    if not site or not email:  # a 400 naming each field left empty
        said = [
            f"{name}: empty: say which person (its site and email)"
            for name, value in (("site", site), ("email", email))
            if not value
        ]
        return render(
            request, "missing.html", {"what": "person", "name": "", "error": "; ".join(said)}, 400
        )
    # the site in any case: every spelling of it (one site, one person); and each keyed as
    # typed before schema 11
    spellings = await run_query(s.queries.spellings, site)
    site = spellings[0] if len(spellings) == 1 else site
    key, *as_typed = person_keys(spellings or [site], email)
    try:
        before = Cursor.decode(request.query.get("before"), "before")
        after = Cursor.decode(request.query.get("after"), "after")
        cursor_error = None
    except ValueError as exc:  # the newest page is shown, and the page says why
        before = after = None
        cursor_error = str(exc)
    summary, page = await asyncio.gather(
        run_query(s.queries.person, key, *as_typed),
        run_query(
            s.queries.search,
            Filters(site=site, email=email, spellings=tuple(spellings)),
            before=before,
            after=after,
        ),
    )
    if not summary.by_state:
        return render(request, "missing.html", {"what": "person", "name": key}, 404)
    limit, error = None, None
    if summary.window_request_id is not None:  # that request, not a later one of its id
        windowed = await run_query(
            s.queries.timeline,
            summary.window_request_id,
            at_ms=summary.window_received_ms,
            occurrences=schema.has(request.get(REVISION), "0008"),
        )
        if windowed is not None:
            row = windowed.request
            sought = Sought(row.request_id, row.person, windowed.arrived_ms)
            content, error = await _content(s, sought)
            limit = content.usage_limit if content is not None else None
    who = {"site": site, "email": email}
    return render(
        request,
        "person.html",
        {
            "nav": "search",
            "site": site,
            # a site spelled several ways is named as the overview names it, its spellings
            # beside it (it said "on SHOP", as typed, a spelling no webhook gave)
            "shown_site": site_named(spellings or [site]),
            "spellings": spellings if len(spellings) > 1 else [],
            "email": email,
            "p": summary,
            "limit": limit,
            "limit_error": error,
            "now_ms": s.now_ms(),
            "page": page,
            "search_link": _query(who),
            "newer": page.newer and _query({**who, "after": page.newer.encode()}),
            "older": page.older and _query({**who, "before": page.older.encode()}),
            "error": cursor_error,
        },
        status=400 if cursor_error else 200,
    )

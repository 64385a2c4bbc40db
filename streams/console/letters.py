"""The dead-letter pages: every letter with what became of its request, and the redrive of
one or a filtered set, as a preview (a dry run of ``talkstream redrive``) and then the real one,
restricted to the requests the preview showed that are still parked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from models.params import site_identity
from models.state import never_parked
from streams.console.log import LETTERS_PER_PARTITION, Letter
from streams.console.pages import render
from streams.console.queries import occurrence_at
from streams.console.views import (
    LOG_TIMEOUT_SECONDS,
    Services,
    request_link,
    run_query,
    services_of,
)
from streams.errors import TalkstreamError
from streams.ops.audit import parse_range
from streams.ops.redrive import PARKED, RedriveReport, Selection
from streams.projection.tables import RequestRow
from streams.settings import Settings
from streams.topics import LETTER_SOURCES, letter_source

log = logging.getLogger(__name__)

LETTER_FIELDS = ("site", "reason", "topic", "since", "until", "request_id")
LETTERS_PER_PAGE = 200  # the page lists this many letters; its counts and actions cover all


@dataclass(frozen=True)
class LetterFilters:
    site: str | None
    reason: str | None
    topic: str | None
    since_ms: int | None
    until_ms: int | None
    request_id: str | None

    @classmethod
    def of(cls, values: Mapping[str, Any], now_ms: int, settings: Settings) -> LetterFilters:
        """The filters of a page's query or a posted form; a time or a topic that cannot be
        one is a ValueError saying so."""

        def text(name: str) -> str | None:
            value = values.get(name)
            return value.strip() or None if isinstance(value, str) else None

        since_ms, until_ms = parse_range(text("since"), text("until"), now_ms)
        topic = text("topic")
        try:
            source = letter_source(settings, topic) if topic else None
        except ValueError as exc:  # named as the other fields are ("since: ...")
            raise ValueError(f"topic: {exc}") from None
        return cls(
            site=text("site"),
            reason=text("reason"),
            topic=source,
            since_ms=since_ms,
            until_ms=until_ms,
            request_id=text("request_id"),
        )

    def matches(self, letter: Letter, row: RequestRow | None) -> bool:
        return (
            (self.request_id is None or letter.request_id == self.request_id)
            and (self.topic is None or letter.topic == self.topic)
            and (self.reason is None or self.reason.lower() in letter.reason.lower())
            and (self.since_ms is None or letter.at_ms >= self.since_ms)
            and (self.until_ms is None or letter.at_ms <= self.until_ms)
            and (self.site is None or (row is not None and _one_site(row.site, self.site)))
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
    request: RequestRow | None  # the request the letter is of (:func:`occurrence_at`)
    latest: bool = True  # that request is its id's latest (the one the ledger knows now)

    @property
    def link(self) -> str:
        """The query of its request's page: that request of the id, not the latest."""
        return request_link(self.request, self.letter.request_id or "")

    @property
    def parked(self) -> bool:
        """Its request is parked, and the ledger still knows it: the id's latest."""
        return (
            self.request is not None
            and self.request.state in PARKED
            and self.latest
            and (not self.never_parked)
        )

    @property
    def never_parked(self) -> bool:
        """Its webhook's params did not fit the person's ledger entry: given up on at once,
        never parked, so a redrive of it runs nothing (``models.state.never_parked``)."""
        return never_parked(self.letter.reason)

    @property
    def since(self) -> str:
        """What became of the request after the letter was written."""
        row = self.request
        if row is None and self.letter.undecodable:
            return "does not decode: not redriven (fix the producer)"
        if row is None:
            return "not in the projection" if self.letter.request_id else "a message"
        if self.never_parked:
            return "never parked (its params did not fit): send the webhook again"
        if row.state in PARKED and not self.latest:
            return "parked; its id named a later request since"
        if row.state in PARKED and row.updated_at_ms <= self.letter.at_ms + 1000:
            return "parked: can be redriven"
        if row.state in PARKED:
            return "redriven, parked again"
        return f"redriven: {row.state}" if row.terminal else f"redriven: {row.state} (running)"


@dataclass
class LetterRows:
    """The letters read, with their requests, that the filters match; what went wrong reading
    them; how many older letters were not read (the newest of each partition are)."""

    rows: list[LetterRow]
    error: str | None = None
    unread: int = 0


async def _letters(s: Services, filters: LetterFilters) -> LetterRows:
    try:
        letters = await asyncio.wait_for(s.log.letters(), LOG_TIMEOUT_SECONDS)
    except TimeoutError:
        return LetterRows([], f"Kafka did not answer within {LOG_TIMEOUT_SECONDS:.0f} s")
    except TalkstreamError as exc:
        return LetterRows([], str(exc))
    ids = [x.request_id for x in letters.found if x.request_id]
    # each letter with the request of its id it is of: one written before the ledger named
    # another request by the id (the same params once it had forgotten the person) is the
    # earlier's, whose page its link opens and whose state "since" says
    rows = await run_query(s.queries.occurrences_by_id, ids)
    joined = [_joined(x, rows.get(x.request_id or "", [])) for x in letters.found]
    matched = [j for j in joined if filters.matches(j.letter, j.request)]
    return LetterRows(matched, unread=letters.unread)


def _joined(letter: Letter, requests: list[RequestRow]) -> LetterRow:
    """The letter with the request of its id it is of (``requests``: each of them, oldest
    first)."""
    row = occurrence_at(requests, letter.at_ms)
    return LetterRow(letter, row, latest=row is None or row is requests[-1])


def _one_site(site: str, named: str) -> bool:
    """Whether a request's site is the site named, in any case (``Shop``, ``shop``: one)."""
    return site_identity(site) == site_identity(named)


async def _named(s: Services, filters: LetterFilters, given: dict[str, str]) -> LetterFilters:
    """The filters with their site as the projection spells it ("acme" finds "Acme"), shown so
    on the page and carried so into the actions; a site spelled several ways (``Shop``,
    ``shop``) as typed: it selects every spelling of it, here and in a redrive."""
    if filters.site is None:
        return filters
    given["site"] = await run_query(s.queries.site_named, filters.site)
    return replace(filters, site=given["site"])


def _given(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: v.strip() for k in LETTER_FIELDS if isinstance(v := values.get(k), str)}


async def dead_letters(request: web.Request) -> web.Response:
    s = services_of(request)
    given = _given(request.query)
    try:
        filters = LetterFilters.of(request.query, s.now_ms(), s.settings)
        page = _page_number(request.query.get("page"))
    except ValueError as exc:
        return render(
            request, "deadletters.html", _letters_context(s, given, LetterRows([], str(exc))), 400
        )
    read = await _letters(s, await _named(s, filters, given))
    return render(request, "deadletters.html", _letters_context(s, given, read, page))


def _page_number(value: str | None) -> int:
    """The page of letters asked for (1, the newest, when none)."""
    if value is None or not value.strip():
        return 1
    # ASCII digits only: "²" is a digit to isdigit() that int() refuses (its ValueError, which
    # named no field, was the page's message)
    if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < 1:
        raise ValueError(f"page: {value!r} is not a page number (1, 2, ...)")
    return int(value)


def _letters_context(s: Services, given: dict[str, str], read: LetterRows, page: int = 1) -> Any:
    rows = read.rows
    page = min(page, max(1, -(-len(rows) // LETTERS_PER_PAGE)))  # past the last: the last
    start = (page - 1) * LETTERS_PER_PAGE
    shown = rows[start : start + LETTERS_PER_PAGE]
    return {
        "nav": "deadletters",
        "given": given,
        # the topic filter's choices: each topic letters come from, short and full name
        "sources": [(name, s.settings.topic(name)) for name in LETTER_SOURCES],
        "rows": rows,
        "shown": shown,
        "first": start + 1 if shown else 0,
        "newer": _page_link(given, page - 1) if page > 1 else None,
        "older": _page_link(given, page + 1) if start + LETTERS_PER_PAGE < len(rows) else None,
        "parked": len({r.letter.request_id for r in rows if r.parked}),
        "error": read.error,
        "unread": read.unread,
        "per_partition": LETTERS_PER_PARTITION,
    }


def _page_link(given: dict[str, str], page: int) -> str:
    return urlencode({**{k: v for k, v in given.items() if v}, "page": page})


async def preview(request: web.Request) -> web.Response:
    """The dry run: what a redrive of these filters would send, changing nothing."""
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    s, given, filters = posted.services, posted.given, posted.filters
    read = await _letters(s, filters)
    error = read.error
    candidates = {r.letter.request_id: r for r in read.rows if r.parked and r.letter.request_id}
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
        {
            "nav": "deadletters",
            "given": given,
            "would": would,
            # what the filters select that no redrive runs: shown, never offered
            "never_parked": sorted(
                {r.letter.request_id for r in read.rows if r.never_parked and r.letter.request_id}
            ),
            # letters of records that do not decode: no redrive sends them back (``talkstream
            # redrive`` neither: their reader would dead-letter them again)
            "undecodable": sum(1 for r in read.rows if r.letter.undecodable),
            "error": error,
            "report": report,
            "unread": read.unread,
            "per_partition": LETTERS_PER_PARTITION,
        },
    )


async def redrive(request: web.Request) -> web.Response:
    """The real redrive of what the preview showed (those of its requests still parked)."""
    posted = await _posted(request)
    if isinstance(posted, web.Response):
        return posted
    s, form, given, filters = posted.services, posted.form, posted.given, posted.filters
    asked = {v for v in form.getall("id", []) if isinstance(v, str) and v}
    requests = await run_query(s.queries.occurrences_by_id, asked)
    rows = {i: found[-1] for i, found in requests.items()}  # the latest: the ledger's now
    parked = frozenset(i for i, row in rows.items() if row.state in PARKED)
    report, error = None, None
    if parked:
        try:
            report = await s.log.redrive(filters.selection(parked), dry_run=False)
        except TalkstreamError as exc:
            error = str(exc)
    done = _request_letters(report) if report is not None else []
    log.info("console redrive: asked=%d parked=%d redriven=%d", len(asked), len(parked), len(done))
    return render(
        request,
        "redriven.html",
        {
            "nav": "deadletters",
            "given": given,
            # each with the request of its id its letter is of, linked to that one's page
            "redriven": [
                (row, request_link(row, i))
                for i, written_ms in done
                if (row := _redriven_row(requests.get(i, []), written_ms)) is not None
            ],
            "not_parked": sorted((asked - parked) & rows.keys()),
            "earlier_attempt": report.earlier_attempt if report is not None else [],
            "too_old": report.too_old if report is not None else [],
            "never_parked": report.never_parked if report is not None else [],
            "unknown": sorted(asked - rows.keys()),
            "error": error,
        },
    )


@dataclass(frozen=True)
class _Posted:
    services: Services
    form: Any
    given: dict[str, str]
    filters: LetterFilters


async def _posted(request: web.Request) -> _Posted | web.Response:
    """The filters an action was posted with, or the letters page saying what is wrong (400)."""
    s = services_of(request)
    form = await request.post()
    given = _given(form)
    try:
        filters = LetterFilters.of(form, s.now_ms(), s.settings)
    except ValueError as exc:
        return render(
            request, "deadletters.html", _letters_context(s, given, LetterRows([], str(exc))), 400
        )
    return _Posted(s, form, given, await _named(s, filters, given))


def _request_letters(report: RedriveReport) -> list[tuple[str, int | None]]:
    """The requests a redrive sent to the ledger, each once, in order, with when the letter
    it sent for each was written (None: a report that does not say)."""
    seen: dict[str, int | None] = {}
    for entry in report.redriven:
        if entry.request_id is not None:
            seen.setdefault(entry.request_id, entry.written_ms)
    return list(seen.items())


def _redriven_row(requests: list[RequestRow], written_ms: int | None) -> RequestRow | None:
    """The request of its id a redriven letter is of (``requests``: each of them, oldest
    first): its id's latest when the letter's time is not known."""
    if written_ms is None:
        return requests[-1] if requests else None
    return occurrence_at(requests, written_ms)


def _request_ids(report: RedriveReport) -> list[str]:
    """The requests a redrive (or its dry run) sent to the ledger, each once, in order."""
    seen: dict[str, None] = {}
    for entry in report.redriven:
        if entry.request_id is not None:
            seen.setdefault(entry.request_id, None)
    return list(seen)

"""The console's composition root: the aiohttp app, its routes, and what it reads.

``build_console(settings, queries, log, ...)`` builds the app from its parts (the functional
tests hand in a fake log and a fixed clock); ``run_console(settings)`` builds the real ones (the
projection from ``TALKSTREAM_DATABASE_URL``, Kafka through ``client_options``, the workers'
metrics from ``TALKSTREAM_CONSOLE_WORKER_URLS``) and serves on
``TALKSTREAM_CONSOLE_HOST:PORT`` (127.0.0.1:8090 by default).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, ProgrammingError

from streams import logs
from streams.console import auth, letters, pages, probes, schema, views
from streams.console.log import (
    LETTERS_PER_PARTITION,
    Content,
    Letters,
    Sought,
    read_content,
    read_letters,
    reading,
)
from streams.console.pacing import Pacing, scrape
from streams.console.queries import ConsoleQueries
from streams.ops import clocks
from streams.ops.redrive import RedriveReport, Selection
from streams.ops.redrive import redrive as run_redrive
from streams.projection.engine import database_said, database_unusable, safe_url
from streams.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


class KafkaLog:
    """The console's :class:`views.Log` on the real topics."""

    def __init__(self, settings: Settings, now_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.now_ms = now_ms

    async def letters(self) -> Letters:
        return await read_letters(self.settings)

    async def content(self, sought: Sought) -> Content:
        return await read_content(self.settings, sought)

    async def redrive(self, selection: Selection, *, dry_run: bool) -> RedriveReport:
        # every letter is reconsidered (redrive's own group offers each once): the console
        # chooses by the requests' states in the projection, which the selection names
        # redrive's own line says what it did; its consumer group's INFO chatter is left out
        with reading():
            return await run_redrive(
                self.settings, selection, dry_run=dry_run, from_beginning=True, now_ms=self.now_ms
            )


def build_console(
    settings: Settings,
    queries: ConsoleQueries,
    log: views.Log,
    *,
    token: str,
    now_ms: Callable[[], int],
    pacing: Callable[[], Any] | None = None,
    database: str = "",
) -> web.Application:
    app = web.Application(
        client_max_size=max_form_bytes(settings), client_max_fields=max_form_fields(settings)
    )
    logs.redact_aiohttp_server_log()  # a refused request's bytes may hold the token
    auth.install(
        app,
        auth.check_token(token),
        settings.console_session_hours,
        secure_cookie=settings.console_secure_cookie,
    )
    app.middlewares.append(_projection_unavailable)
    app.middlewares.append(_projection_schema)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("streams.console", "templates"),
        autoescape=True,  # every value is text unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(
        t=_time,
        ms=_duration,
        ago=functools.partial(_ago, now_ms),
        end_to_end=clocks.end_to_end_ms,
        in_flight=lambda request: clocks.in_flight_ms(request, now_ms()),
        n=_count,
        email_parts=_email_parts,
        id_parts=_id_parts,
    )
    app[pages.TEMPLATES] = environment
    app[pages.DATABASE] = database
    urls = settings.worker_metrics_urls
    app[views.SERVICES] = views.Services(
        settings=settings,
        queries=queries,
        log=log,
        pacing=pacing or (lambda: scrape(urls)),
        now_ms=now_ms,
    )
    app.router.add_get("/", views.overview)
    app.router.add_get("/requests", views.search)
    app.router.add_get("/request", views.request_page)
    app.router.add_get("/request/content", views.request_content)
    app.router.add_get("/person", views.person_page)
    app.router.add_get("/deadletters", letters.dead_letters)
    app.router.add_post("/deadletters/preview", letters.preview)
    app.router.add_post("/deadletters/redrive", letters.redrive)
    app.router.add_static("/static", HERE / "static", show_index=False)
    probes.install(app, queries.engine)  # /healthz, /readyz: no token asked
    app.on_startup.append(_check_schema_at_start)
    return app


async def _check_schema_at_start(app: web.Application) -> None:
    """Say in the log, at once, what every page will say of the projection's schema."""
    await asyncio.to_thread(_say_schema, app[views.SERVICES].queries.engine)


def _say_schema(engine: Engine) -> None:
    if schema.not_made(engine):  # INFO: a console started beside its first worker is no alarm
        log.info(
            "console: no projection at %s yet: a worker's projector makes it when it starts "
            "(is TALKSTREAM_DATABASE_URL the workers'?)",
            safe_url(engine),
        )
        return
    try:
        found = schema.check(engine)
    except DBAPIError as exc:  # every page says so (``_projection_unavailable``)
        log.warning("console: the projection cannot be read: %s", database_said(exc))
        return
    if found.refused:
        log.error("console: no page will be served: %s", found.refused)
    elif found.behind:  # a new projection, made but not migrated yet, alarms nobody
        level = logging.INFO if found.revision is None else logging.WARNING
        log.log(level, "console: %s", found.behind)


# what a page needs of no projection: logging in and out, the stylesheet
_NO_PROJECTION = frozenset({*auth.PUBLIC, *auth.PROBES, "/logout"})


@web.middleware
async def _projection_schema(request: web.Request, handler: auth.Handler) -> Any:
    """The projection's revision, read at every page (one row): a projection newer than this
    console is a 503 saying what to do, never its pages (``schema``); one behind it is said
    above each page."""
    if request.path in _NO_PROJECTION or request.path.startswith("/static/"):
        return await handler(request)
    engine = request.app[views.SERVICES].queries.engine
    if schema.not_made(engine):
        reason = (
            f"no projection at {safe_url(engine)} yet: a worker's projector makes it when it "
            "starts (is TALKSTREAM_DATABASE_URL the workers'?)"
        )
        return pages.render(request, "unavailable.html", {"reason": reason}, status=503)
    found = await asyncio.to_thread(schema.check, engine)
    if found.refused:
        return pages.render(request, "too_new.html", {"reason": found.refused}, status=503)
    if found.behind:
        request[pages.BEHIND] = found.behind
    if found.revision is not None:
        request[pages.REVISION] = found.revision
    return await handler(request)


@web.middleware
async def _projection_unavailable(request: web.Request, handler: auth.Handler) -> Any:
    """A projection not created or migrated yet (the worker does that), or a database that
    cannot be used (out of reach, a file that is not one), is a page that says so, not a
    stack trace."""
    try:
        return await handler(request)
    except DBAPIError as exc:
        if not (isinstance(exc, ProgrammingError) or database_unusable(exc)):
            raise
        said = database_said(exc)  # one line: psycopg's hint came on a line of its own
        log.warning("console: the projection cannot be read: %s", said)
        return pages.render(request, "unavailable.html", {"reason": said}, status=503)


# A redrive's confirm form carries the id of every request its preview showed: as many as the
# dead-letter page lists (LETTERS_PER_PARTITION a partition), besides the filters and the CSRF
# token. The console reads no larger form (64 KiB and aiohttp's 1,000 fields refused
# a redrive of a thousand letters with a bare 413).
FORM_BYTES = 64 * 1024  # a login, a page's filters
FORM_FIELDS = 16
ID_FIELD_BYTES = 256  # "&id=" and a request id, percent-encoded


def max_form_bytes(settings: Settings) -> int:
    return FORM_BYTES + LETTERS_PER_PARTITION * settings.partitions * ID_FIELD_BYTES


def max_form_fields(settings: Settings) -> int:
    return FORM_FIELDS + LETTERS_PER_PARTITION * settings.partitions


def _count(value: int | float | None) -> str:
    """A count with its thousands apart: 1,234,567."""
    return "—" if value is None else f"{int(value):,}"


_EMAIL_BREAKS = re.compile(r"(?=[@.+])")
_ID_BREAKS = re.compile(r"(?<=~)|(?=/)")  # after a "~", before a "/"


def _email_parts(email: str) -> list[str]:
    """An email cut before its "@", each "." and each "+": the template ``_email.html``
    joins the parts (each escaped, as every value) with ``<wbr>``, so a column too narrow for
    it breaks it there (``p.gibbons`` / ``+referrals`` / ``@initech.com``), not mid-word, as it
    did at 1280 px (``p.gibbons+referrals@inite`` over ``ch.com``). A part wider than the
    column still breaks where it must (``overflow-wrap: anywhere``) rather than widen the
    page."""
    return [part for part in _EMAIL_BREAKS.split(email) if part]


def _id_parts(request_id: str) -> list[str]:
    """A request id cut after each "~" and before each "/" (``pub-3~`` / ``pub-3`` / ``/d2``,
    a re-sent request's ``<id>~<delivery>``): the template ``_rid.html`` joins the parts with
    ``<wbr>``, each part kept whole (``white-space: nowrap``), so a long id breaks there, never
    at a hyphen inside one (``pub-`` over ``3~pub-`` over ``3/d2``)."""
    return [part for part in _ID_BREAKS.split(request_id) if part]


def _time(ms: int | None, precise: bool = True) -> str:
    if ms is None:
        return "—"
    when = datetime.fromtimestamp(ms / 1000, UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f".{ms % 1000:03d}" if precise else "")


def _duration(ms: int | float | None, signed: bool = False) -> str:
    if ms is None:
        return "—"
    sign = ("+" if ms >= 0 else "-") if signed else ("-" if ms < 0 else "")
    value = abs(ms)
    if value < 1000:
        return f"{sign}{value:.0f} ms"
    if value < 60_000:
        return f"{sign}{value / 1000:.1f} s"
    if value < 3_600_000:
        return f"{sign}{value / 60_000:.1f} min"
    return f"{sign}{value / 3_600_000:.1f} h"


def _ago(now_ms: Callable[[], int], ms: int | None) -> str:
    if ms is None:
        return "—"
    return _duration(now_ms() - ms) + " ago"


def console_engine(url: str) -> Engine:
    """The console's engine of the projection: a reader, which leaves a SQLite file (and its
    directory) not there yet to the worker to make, so a mistyped URL leaves nothing behind."""
    from streams.projection.engine import make_engine

    return make_engine(url, make_directory=False)


def run_console(settings: Settings) -> None:
    """Serve the console until interrupted (``talkstream console``)."""
    from streams.logs import announce
    from streams.refusals import run_app
    from streams.runtime import now_ms

    token = auth.check_token(
        settings.console_token.get_secret_value() if settings.console_token else None
    )
    engine = console_engine(settings.resolved_database_url)
    app = build_console(
        settings,
        ConsoleQueries(engine),
        KafkaLog(settings, now_ms),
        token=token,
        now_ms=now_ms,
        database=safe_url(engine),
    )

    async def dispose(_: web.Application) -> None:
        engine.dispose()

    app.on_cleanup.append(dispose)
    log.info("console of the projection %s", safe_url(engine))
    run_app(  # aiohttp's, answering what it refuses itself in JSON
        app,
        host=settings.console_host,
        port=settings.console_port,
        access_log=None,
        print=announce("console", echo=True),
    )


__all__ = ["KafkaLog", "Pacing", "build_console", "console_engine", "run_console"]

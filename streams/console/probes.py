"""The console's probes, as the worker's, the projector's and the ingress's: ``/healthz`` (the
process answers) and ``/readyz`` (it serves its pages now: 200 ``{"ready": true, "status":
"ready"}``, else 503 with why). Neither needs the operator token (``auth.PROBES``): a
supervisor or an orchestrator's probe carries none.

Ready is the projection readable as the pages read it: made (a SQLite file a worker's
projector has not made yet is not), its database answering, at a migration this console reads
(a newer one is refused on every page; one without our migration history has none of the
tables the pages read; one behind is served, saying so). Kafka is not asked: without it only
the dead letters and a request's webhook are missing, and those pages say so.

An answer says the kind of problem, never the database's URL or what its driver said (it is
served to anyone who can reach the console): the console's log says that, once each time the
answer changes, as its pages do. One check runs at a time: a probe that comes while a check
waits for a database that does not answer waits for that one, at most
:data:`READY_TIMEOUT_SECONDS`, and is answered "database not answering".
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from streams.console import schema
from streams.projection import migrate
from streams.projection.engine import database_said, database_unusable, safe_url

log = logging.getLogger("streams.console.app")  # the console's lines, as its pages'

READY_TIMEOUT_SECONDS = 2.0  # /readyz answers within this, ready or not (as the ingress's)


class Why(NamedTuple):
    """Why the console is not ready: its ``/readyz`` status, what the log says of it, how
    loud (a projection not made yet is no alarm: ``talkstream dev`` starts the console beside
    the worker that makes it)."""

    status: str
    said: str
    level: int = logging.WARNING


def projection_readiness(engine: Engine) -> Why | None:
    """None when the pages can read the projection; otherwise why not (blocking: a thread)."""
    if schema.not_made(engine):
        return Why(
            "no projection yet: a worker's projector makes it when it starts",
            f"no projection at {safe_url(engine)} yet: a worker's projector makes it when it "
            "starts (is TALKSTREAM_DATABASE_URL the workers'?)",
            logging.INFO,
        )
    try:
        try:
            found = schema.check(engine)
            settled = found.revision is not None
        except SQLAlchemyError as exc:
            if database_unusable(exc) and engine.dialect.name != "sqlite":
                raise  # (asked again, an unreachable server's connect timeout twice)
            settled = False  # a read that fails mid-migration too (a table not there yet)
        if not settled:  # a first start's migration under way, as a rule: asked, and read
            # again while none can start (one that committed since it was read is not said
            # as no history, nor a read it failed: a WARNING at a clean start, on a loaded host)
            with migrate.no_migration_meanwhile(engine) as migrating:
                if migrating:
                    return Why(
                        "the projection is being migrated: a worker's projector migrates it "
                        "as it starts",
                        f"the projection at {safe_url(engine)} is being migrated by a projector",
                        logging.INFO,
                    )
                found = schema.check(engine)
    except SQLAlchemyError as exc:
        kind = "database unreachable" if database_unusable(exc) else "database error"
        return Why(kind, f"the projection cannot be read: {database_said(exc)}")
    if found.refused:
        return Why(
            "the projection is newer than this console",
            f"no page will be served: {found.refused}",
            logging.ERROR,
        )
    if found.revision is None:
        return Why(
            "the projection has no migration history yet: a worker's projector migrates it "
            "when it starts",
            str(found.behind),
        )
    return None


class Readiness:
    """The console's ``/readyz``: one check of the projection at a time, each change of its
    answer logged once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._check: asyncio.Future[Why | None] | None = None
        self._started = 0.0
        self._said: str | None = None  # the last answer's status, None: ready
        self.checks = 0  # how many it has started (each in a thread of its own)

    async def why_not(self) -> str | None:
        """None when ready, else the status saying why not."""
        if self._check is None or self._check.done():
            self._check = asyncio.ensure_future(
                asyncio.to_thread(projection_readiness, self.engine)
            )
            self._started = time.monotonic()
            self.checks += 1
        done, _ = await asyncio.wait({self._check}, timeout=READY_TIMEOUT_SECONDS)
        if done:
            why = self._check.result()
        else:
            waited = time.monotonic() - self._started
            why = Why(
                "database not answering",
                f"the projection's database has not answered a check for {waited:.0f} s",
            )
        status = None if why is None else why.status
        if status != self._said:
            if why is None:
                log.info("console: ready: the projection can be read")
            else:
                log.log(why.level, "console: not ready: %s", why.said)
        self._said = status
        return status


READINESS = web.AppKey("console_readiness", Readiness)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    why = await request.app[READINESS].why_not()
    if why is None:
        return web.json_response({"ready": True, "status": "ready"})
    return web.json_response({"ready": False, "status": why}, status=503)


def install(app: web.Application, engine: Engine) -> None:
    app[READINESS] = Readiness(engine)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

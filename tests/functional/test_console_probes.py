"""The console's ``/healthz`` and ``/readyz``, as the worker's, the projector's and the
ingress's: no token asked, ready while its pages can read the projection, 503 saying why (and
nothing of the database's URL or of what its driver said) otherwise."""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import event, text

from streams.console import probes
from streams.console.app import console_engine
from streams.projection.engine import make_engine
from streams.projection.store import ProjectionStore
from tests.functional.test_console import Console, on_engine, start
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)

READY = {"ready": True, "status": "ready"}


@pytest.fixture(autouse=True)
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check answered however loaded the host: only the test of a database that does not
    answer waits less (what a probe says does not hang on the host's speed)."""
    monkeypatch.setattr(probes, "READY_TIMEOUT_SECONDS", 60.0)


async def probed(client: TestClient[Any, Any], path: str = "/readyz", **headers: str) -> Any:
    """The probe's answer to a request with no token: (status, JSON), never a redirect."""
    response = await client.get(path, headers=headers, allow_redirects=False)
    said = (response.status, await response.text())
    assert "Set-Cookie" not in response.headers, said  # no session made
    assert response.headers.get("X-Content-Type-Options") == "nosniff", said  # secured
    return response.status, await response.json()


@pytest.fixture
async def console(tmp_path: Path, database_url: str) -> Any:  # noqa: F811
    """The console on the projection in SQLite and in PostgreSQL."""
    started = await start(tmp_path, url=database_url)
    yield started
    await started.client.close()


async def test_a_console_on_its_projection_is_ready_to_a_probe_with_no_token(
    console: Console,
) -> None:
    """Before, ``/readyz`` was a page like any other: a redirect to the login form (303), which
    a probe reads as up or down by how it follows redirects, whatever the projection was."""
    assert await probed(console.client) == (200, READY)
    assert await probed(console.client, "/healthz") == (200, {"status": "ok"})
    # a probe's stray header opens nothing and refuses nothing
    wrong = {"Authorization": "Bearer not-the-token"}
    assert await probed(console.client, **wrong) == (200, READY)
    response = await console.client.get("/", allow_redirects=False)
    assert response.status == 303  # the pages still need the token
    response = await console.client.post("/readyz", allow_redirects=False)
    assert response.status == 405  # a probe is a GET (or HEAD)


async def test_a_console_whose_projection_is_not_made_yet_is_not_ready_and_makes_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.console.app")
    missing = tmp_path / "later.sqlite3"
    engine = console_engine(f"sqlite:///{missing}")
    client = await on_engine(tmp_path, engine, f"sqlite:///{missing}")
    try:
        for _ in range(2):
            status, answer = await probed(client)
            assert (status, answer["ready"]) == (503, False)
            assert answer["status"] == (
                "no projection yet: a worker's projector makes it when it starts"
            )
        assert not missing.exists()
        said = [
            r.getMessage()
            for r in caplog.records
            if r.name == "streams.console.app" and "ready" in r.getMessage()
        ]
        assert said == [  # once, no alarm (a console started beside its first worker)
            f"console: not ready: no projection at sqlite:///{missing} yet: a worker's "
            "projector makes it when it starts (is TALKSTREAM_DATABASE_URL the workers'?)"
        ]
        ProjectionStore.from_url(f"sqlite:///{missing}").close()  # a worker's projector made it
        assert await probed(client) == (200, READY)
        assert (
            "streams.console.app",
            logging.INFO,
            "console: ready: the projection can be read",
        ) in (caplog.record_tuples)
    finally:
        await client.close()
        engine.dispose()


async def test_a_projection_made_but_not_migrated_is_not_ready(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'made.sqlite3'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE elsewhere (x INTEGER)"))
    client = await on_engine(tmp_path, engine, url)
    try:
        assert await probed(client) == (
            503,
            {
                "ready": False,
                "status": "the projection has no migration history yet: a worker's projector "
                "migrates it when it starts",
            },
        )
    finally:
        await client.close()
        engine.dispose()


def _migration_lock(database: Path) -> IO[bytes]:
    """The lock a projector holds while it migrates the SQLite projection at ``database``,
    held (by this test's process) until released or closed."""
    lock = open(f"{database}.lock", "ab")  # noqa: SIM115  (the caller's ``with`` closes it)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _being_migrated(tmp_path: Path) -> tuple[Path, str, Any]:
    """A SQLite projection as a first migration makes it: a table there, no history yet (its
    file, URL and engine)."""
    database = tmp_path / "first.sqlite3"
    url = f"sqlite:///{database}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE transitions (x INTEGER)"))
    return database, url, engine


async def test_a_projection_being_migrated_is_not_ready_and_no_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite makes a first migration's tables visible as it creates them: a probe meanwhile
    (``talkstream dev`` waits for the console's /readyz as the worker's projector migrates)
    found tables and no history, and the console logged a WARNING on a clean start. While a
    projector holds the migration's lock it is said at INFO; without it, as before."""
    caplog.set_level(logging.INFO, logger="streams.console.app")
    database, url, engine = _being_migrated(tmp_path)
    client = await on_engine(tmp_path, engine, url)
    try:
        with _migration_lock(database) as lock:  # as migrate._file_lock holds it
            assert await probed(client) == (
                503,
                {
                    "ready": False,
                    "status": "the projection is being migrated: a worker's projector "
                    "migrates it as it starts",
                },
            )
            fcntl.flock(lock, fcntl.LOCK_UN)
        status, answer = await probed(client)  # no migration under way: tables, no history
        assert (status, answer["status"]) == (
            503,
            "the projection has no migration history yet: a worker's projector migrates it "
            "when it starts",
        )
        said = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "streams.console.app" and "not ready" in r.getMessage()
        ]
        assert said[0] == (
            logging.INFO,
            f"console: not ready: the projection at {url} is being migrated by a projector",
        )
        assert [level for level, _ in said] == [logging.INFO, logging.WARNING]
    finally:
        await client.close()
        engine.dispose()


async def test_a_migration_that_commits_while_a_probe_reads_is_no_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe read the file as a projector's first migration went on (no history yet), and
    asked whether a migration ran only after it had committed and let its lock go: it said
    "no migration history" in a WARNING at a clean start (``talkstream dev`` on a loaded
    host). Read again while no migration can start, it is the projection as migrated."""
    from streams.console import schema
    from streams.projection import migrate

    caplog.set_level(logging.INFO, logger="streams.console.app")
    database = tmp_path / "first.sqlite3"
    url = f"sqlite:///{database}"
    engine = make_engine(url)
    with engine.begin() as connection:  # the file made, nothing committed in it yet
        connection.execute(text("SELECT 1"))
    read = schema.check

    def migrated_meanwhile(checked: Any) -> Any:
        found = read(checked)  # no history: the migration has not committed
        monkeypatch.setattr(schema, "check", read)
        fcntl.flock(lock, fcntl.LOCK_UN)
        migrate.upgrade(engine)  # ... and now has, its lock let go
        return found

    client = await on_engine(tmp_path, engine, url)
    try:
        with _migration_lock(database) as lock:  # as migrate._file_lock holds it
            monkeypatch.setattr(schema, "check", migrated_meanwhile)
            assert await probed(client) == (200, READY)
        alarms = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert alarms == []
    finally:
        await client.close()
        engine.dispose()


async def test_a_read_that_fails_while_a_migration_runs_is_no_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe's read of the SQLite file failed as the projector's first migration went on
    (``no such table: talkstream_alembic_version``): the console said "cannot be read" in a
    WARNING at a clean start (``talkstream dev``, found by its test). Asked again while the
    migration holds its lock, it is "being migrated", at INFO."""
    from sqlalchemy.exc import OperationalError

    from streams.console import schema

    caplog.set_level(logging.INFO, logger="streams.console.app")
    database, url, engine = _being_migrated(tmp_path)
    missing = OperationalError("SELECT", {}, Exception("no such table: x_alembic_version"))

    def failing(checked: Any) -> Any:
        raise missing

    client = await on_engine(tmp_path, engine, url)
    try:
        with _migration_lock(database):  # as migrate._file_lock holds it
            monkeypatch.setattr(schema, "check", failing)
            status, answer = await probed(client)
        assert (status, answer["status"]) == (
            503,
            "the projection is being migrated: a worker's projector migrates it as it starts",
        )
        alarms = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert alarms == []
    finally:
        await client.close()
        engine.dispose()


async def test_a_projection_a_newer_version_migrated_is_not_ready(tmp_path: Path) -> None:
    console = await start(tmp_path, revision="9999")
    try:
        assert await probed(console.client) == (
            503,
            {"ready": False, "status": "the projection is newer than this console"},
        )
    finally:
        await console.client.close()


async def test_a_database_that_cannot_be_read_is_not_ready_and_the_answer_names_no_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 40)
    engine = make_engine(f"sqlite:///{notes}")
    client = await on_engine(tmp_path, engine, f"sqlite:///{notes}")
    try:
        status, answer = await probed(client)
        assert (status, answer) == (503, {"ready": False, "status": "database unreachable"})
        warned = [r for r in caplog.records if r.name == "streams.console.app"]
        assert [(r.levelname, r.getMessage()) for r in warned if "ready" in r.getMessage()] == [
            (
                "WARNING",
                "console: not ready: the projection cannot be read: DatabaseError: file is not a "
                "database",
            )
        ]
    finally:
        await client.close()
        engine.dispose()


async def test_a_database_that_does_not_answer_is_not_ready_within_the_probes_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes that come while the database keeps a check waiting wait for that check, each
    answered within ``READY_TIMEOUT_SECONDS``: a database that hangs gets one check at a time,
    not one more thread each probe."""
    monkeypatch.setattr(probes, "READY_TIMEOUT_SECONDS", 0.2)
    url = f"sqlite:///{tmp_path / 'projection.sqlite3'}"
    ProjectionStore.from_url(url).close()
    engine = make_engine(url)
    answering = threading.Event()

    def hung(*_: Any) -> None:  # the database holds every statement until told to answer
        answering.wait(60)

    client = await on_engine(tmp_path, engine, url)  # (its check at start answered)
    event.listen(engine, "before_cursor_execute", hung)
    try:
        for _ in range(3):
            assert await probed(client) == (
                503,
                {"ready": False, "status": "database not answering"},
            )
        assert client.app[probes.READINESS].checks == 1  # the later probes waited for it
        answering.set()
        monkeypatch.setattr(probes, "READY_TIMEOUT_SECONDS", 60.0)
        assert await probed(client) == (200, READY)  # the check held answered at last
    finally:
        answering.set()
        await client.close()
        engine.dispose()

"""The projection's database: an engine made from a URL, and what to tell a person when it
cannot be used.

SQLite (a file, made with its directory, in WAL mode) or PostgreSQL through psycopg; any other
URL that SQLAlchemy can open is tried. A URL that cannot be used is one line, never a traceback,
and never its password.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard, cast

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

# how long a SQLite writer waits for another's transaction before it fails (sqlite3's default
# is 5 s): a replay's processes write their batches into one file, one at a time (readers never
# wait, in WAL mode)
SQLITE_WRITER_WAIT_SECONDS = 60.0


def make_engine(url: str, *, make_directory: bool = True) -> Engine:
    """The engine of the projection at ``url``. A URL it cannot be made for raises
    ``ArgumentError`` (``describe_database_error`` says it in one line): one that does not
    parse or names no dialect (SQLAlchemy's own), a driver that is not installed or is an
    asyncio one, a SQLite file whose directory cannot be made (``make_directory``: a reader,
    which makes none, leaves that to the first query; a projector, which makes nothing before
    its group has taken it, has it checked, ``sqlite_directory``, and made by the migration)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # one shared connection, or every checkout would see its own empty database
            return _create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        if make_directory:
            _make_directory(Path(parsed.database).parent)
        _bind_nulls_directly()
        engine = _create_engine(
            parsed, pool_pre_ping=True, connect_args={"timeout": SQLITE_WRITER_WAIT_SECONDS}
        )
        event.listen(engine, "connect", _sqlite_wal)
        return engine
    return _create_engine(parsed, pool_pre_ping=True)


def new_sqlite_paths(url: str) -> list[Path]:
    """What opening the SQLite file at ``url`` would create that is not there yet: the file,
    the files SQLite and the migrations keep beside it (``-wal``, ``-shm``, ``-journal``,
    ``.lock``), and the directories made for it, deepest last; none for another database (or
    a URL that does not parse: it opens nothing)."""
    try:
        parsed = parse_url(url)
    except ArgumentError:
        return []
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return []
    path = Path(parsed.database).absolute()
    directories = [d for d in path.parents if not d.exists()][::-1]
    files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal", ".lock")]
    return directories + [f for f in files if not f.exists()]


def remove_new(paths: list[Path]) -> None:
    """Remove what ``new_sqlite_paths`` listed (files, then the directories made for them
    while they are empty)."""
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)


def parse_url(url: str) -> URL:
    """``make_url``, with the ValueError it lets through (a port that is not a number:
    ``...@host:notaport/db``) said as the ``ArgumentError`` of any other URL that does not
    parse; the URL is not repeated (it holds the password).

    A password holding an ``@`` not written ``%40`` is refused too: SQLAlchemy ends the
    password at its first ``@`` and reads the rest as the host, so ``user:pa@ss@host/db`` was
    shown as ``user:***@ss@host/db``, and the driver's "failed to resolve host 'ss@host'"
    said the rest of the password again, in every command's error and every log line."""
    try:
        parsed = make_url(url)
    except ValueError:
        raise ArgumentError("its port is not a number") from None
    if parsed.host is not None and "@" in parsed.host:
        raise ArgumentError(
            "its password holds an '@': write it %40 in the URL (user:pa%40ss@host), or the "
            "password ends at the '@' and the rest of it is read as the host"
        )
    return parsed


def _create_engine(url: URL, **options: Any) -> Engine:
    """``create_engine``, refusing what would fail later with a traceback: a driver that is not
    installed (SQLAlchemy imports it here and lets the ImportError through), an asyncio driver
    (this engine is synchronous: its first connection would fail); a scheme SQLAlchemy does
    not know is said so, naming the one meant for those others use (``postgres://``)."""
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        meant = _MEANT.get(url.get_backend_name())
        raise ArgumentError(
            f"{url.drivername}:// names no database SQLAlchemy knows"
            + (f": {meant}" if meant else "")
        ) from None
    if dialect.is_async:
        raise ArgumentError(
            f"{url.drivername} is an asyncio driver: talkstream opens the projection synchronously"
        )
    try:
        return create_engine(url, **options)
    except ImportError as exc:
        raise ArgumentError(
            f"{url.drivername} needs the {url.get_driver_name()} driver, which is not "
            f"installed: {exc}"
        ) from exc


# schemes other tools write (Heroku's and many a compose file's DATABASE_URL) for the ones
# SQLAlchemy knows
_MEANT = {
    "postgres": "PostgreSQL's is postgresql+psycopg:// (or postgresql://)",
    "sqlite3": "SQLite's is sqlite:///PATH",
}


def sqlite_directory(engine: Engine, *, make: bool) -> None:
    """The directory of the engine's SQLite file (nothing for another database): made
    (``make``: the migration, which makes the file), or checked that it could be, nothing made
    (a projector's engine: one its group refuses leaves no directory behind, and one whose
    directory can never be made, a file in the way, is said at its start as ``make_engine``
    says it: an ``ArgumentError``); so is a file that could not be written there (a folder
    that takes no file, ``/proc``; a file there that is not writable, or a directory)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return
    path = Path(str(database))
    directory = path.parent
    if make:
        _make_directory(directory)
        return
    existing = next(d for d in (directory, *directory.parents) if d.exists())  # (/ exists)
    if not existing.is_dir():
        why = "Not a directory"
    elif existing != directory and not os.access(existing, os.W_OK | os.X_OK):
        why = "Permission denied"
    else:
        _sqlite_file_writable(path, existing)
        return
    raise ArgumentError(f"cannot create the directory {directory} of the SQLite file: {why}")


def _sqlite_file_writable(path: Path, existing: Path) -> None:
    """The SQLite file at ``path`` could be written: the file, if it is there, opened for
    writing (nothing written), and a file made in ``existing`` (its directory, or the nearest
    one there is, where it and its ``-wal`` and ``-shm`` go) and removed at once. Tried, not
    asked of ``os.access``, which says yes to root for ``/proc`` and to anyone on a read-only
    mount: the projector's migration then failed at every try, forever, as a database merely
    down."""
    if path.is_dir():
        raise ArgumentError(f"cannot use the SQLite file {path}: it is a directory")
    there = path.exists()
    if there:
        try:
            path.open("r+b").close()
        except OSError as exc:
            raise ArgumentError(
                f"cannot write the SQLite file {path}: {exc.strerror or type(exc).__name__}"
            ) from exc
    try:
        handle, probe = tempfile.mkstemp(prefix=".talkstream-probe-", dir=existing)
    except OSError as exc:
        what = (
            f"write beside the SQLite file {path} (its -wal and -shm)"
            if there
            else (f"create the SQLite file {path}")
        )
        raise ArgumentError(
            f"cannot {what}: no file can be made in {existing} "
            f"({exc.strerror or type(exc).__name__})"
        ) from exc
    os.close(handle)
    os.unlink(probe)


def _make_directory(directory: Path) -> None:
    """The SQLite file's directory, made if missing; one that cannot be (a file in the way, no
    permission) is a URL that cannot be used, the OSError its cause (the CLI names
    TALKSTREAM_DATA_DIR when the directory is under it)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # mkdir over a file says "File exists": what is wrong is a file where a directory goes
        why = "Not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise ArgumentError(
            f"cannot create the directory {exc.filename or directory} of the SQLite file: {why}"
        ) from exc


@functools.cache
def _bind_nulls_directly() -> None:
    """Let sqlite3 bind a None as cheaply as it binds an int.

    Python's sqlite3 binds only exact int, float, str and bytes directly; any other value, None
    included, goes through its adaptation protocol: a key built, the adapter registry missed,
    ``__adapt__`` and ``__conform__`` looked up, ~0.8 µs a NULL here against 0.14 µs an int.
    The benchmark's replay binds six NULLs a transition and three a request row, more where
    requests fail or wait (``executemany`` was 38% of a rebuild into SQLite;
    ``bench/PROFILE.md``, sixteenth round). An adapter
    registered for NoneType is found at the first lookup; ``{}.get`` (C code) returns None,
    which is bound as NULL as before. The registry is the process's: nothing else changes,
    since None still binds as NULL."""
    sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))


def _sqlite_wal(dbapi_connection: Any, _: Any) -> None:
    """A SQLite file in WAL mode: readers (audit, stats, the console) never block the projector,
    and a commit is one append instead of a journal rewrite, synced at checkpoints
    (``synchronous=NORMAL``: a power cut may lose the last commits, which the projector's gap
    repair reads back from the lifecycle topic; a crash of the process loses nothing)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def safe_url(engine_or_url: Engine | str) -> str:
    """The URL to show a person: the password hidden."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else parse_url(engine_or_url)
    return url.render_as_string(hide_password=True)


def database_identity(engine_or_url: Engine | str) -> str:
    """A fingerprint of the database an engine writes, safe to show and to publish: two URLs
    naming one database agree, whatever their password or user (neither is in it).

    SQLite: the file's real path (a relative path, a symbolic link resolved), found without
    opening it (nothing is made); an in-memory database is this process's own. PostgreSQL, as
    its server says it: the cluster's system identifier (``pg_control_system()``, made once by
    ``initdb``) and ``current_database()``, so every host name, address or alias of the server
    (``localhost``, ``127.0.0.1``, a DNS name) gives one id. That asks the server: it raises
    the ``SQLAlchemyError`` of one out of reach (the caller waits for it). A server that will
    not say (a role that may not run ``pg_control_system()``, as on some managed services; a
    PostgreSQL-compatible server without it), another backend, or a URL alone: what the URL
    names (``url_identity``). A copy of the cluster made by ``pg_basebackup`` (a physical
    replica, a restored base backup) keeps its system identifier: the same database name on
    it is the same id."""
    if isinstance(engine_or_url, str) or engine_or_url.dialect.name != "postgresql":
        return url_identity(engine_or_url)
    return postgresql_identity(engine_or_url) or url_identity(engine_or_url)


def postgresql_identity(engine: Engine) -> str | None:
    """The fingerprint of the PostgreSQL database ``engine`` writes as its server says it (see
    ``database_identity``); None when the server will not say it (the statement refused:
    ``ProgrammingError``, e.g. permission denied or no such function). A server out of reach
    raises."""
    try:
        with engine.connect() as connection:
            cluster, database = connection.execute(text(_SERVER_IDENTITY_SQL)).one()
    except ProgrammingError as exc:
        log.warning(
            "the PostgreSQL server does not say its system identifier (%s): the database id is "
            "what the URL names (host, port, database), so give every projector of the group "
            "the same host name for the server",
            database_said(exc),
        )
        return None
    return _fingerprint(f"postgresql-cluster:{cluster}/{database}")


_SERVER_IDENTITY_SQL = "SELECT system_identifier, current_database() FROM pg_control_system()"


def url_identity(engine_or_url: Engine | str) -> str:
    """``database_identity`` from the URL alone, nothing asked: SQLite's real path; for a
    server, its backend, host (lower-cased), port (the default filled in) and database, so
    another host name for the same server gives another fingerprint."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else parse_url(engine_or_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            named = f"sqlite:memory:{os.getpid()}"
        else:
            named = f"sqlite:{os.path.realpath(url.database)}"
    else:
        port = url.port or _DEFAULT_PORTS.get(backend)
        named = f"{backend}://{(url.host or '').lower()}:{port}/{url.database or ''}"
    return _fingerprint(named)


def _fingerprint(named: str) -> str:
    return hashlib.sha256(named.encode()).hexdigest()[:16]


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def describe_database_error(
    exc: SQLAlchemyError, url: str | None = None, *, option: bool = True
) -> str:
    """One line for a person about a database that cannot be used: which one (``url``, its
    password hidden, when known), what the driver said (never the SQL or its parameters), a
    password in any URL it echoed hidden. ``option``: the command has ``--database-url``."""
    said = database_said(exc)
    if isinstance(exc, ArgumentError):
        where = "TALKSTREAM_DATABASE_URL or --database-url" if option else "TALKSTREAM_DATABASE_URL"
        return (
            f"the database URL cannot be used ({said}): set {where} to sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB"
        )
    which = f" {safe_url(url)}" if url else ""
    return f"the database{which} cannot be used: {said}"


def database_said(exc: SQLAlchemyError) -> str:
    """What the driver said, on one line (never the SQL or its parameters), a password in any
    URL it echoed hidden: ``OperationalError: connection failed: ... Connection refused``."""
    said = f"{type(exc.orig).__name__}: {exc.orig}" if isinstance(exc, DBAPIError) else str(exc)
    return _URL_PASSWORD.sub(r"\1***@", " ".join(said.split()))


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def database_unusable(exc: BaseException) -> TypeGuard[SQLAlchemyError]:
    """The database cannot be used at all, whatever was asked of it: it cannot be reached or
    opened (OperationalError, InterfaceError), its URL cannot be (ArgumentError, see
    ``make_engine``), or what is there is not a database (DatabaseError itself: sqlite3's
    "file is not a database" or "database disk image is malformed"). Not its subclasses: a
    constraint violated or SQL the database rejects is a failure of the statement."""
    return (
        isinstance(exc, (OperationalError, InterfaceError, ArgumentError))
        or type(exc) is DatabaseError
    )

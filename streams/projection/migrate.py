"""Schema management: ``upgrade`` brings a projection database to the newest migration.

Every process that opens the projection (the worker's projector, ``talkstream replay``, the
tests) calls it; concurrent callers take turns: PostgreSQL through a transaction-scoped
advisory lock, a SQLite file through ``flock`` on a lock file beside it (``<file>.lock``).
Never on the database file itself: closing any descriptor of a file drops every POSIX lock
the process holds on it, SQLite's included, and a WAL-mode connection that has lost its
shared lock lets another process's last close delete the WAL it is still writing to (its
later commits vanish). A database already at head costs one query. A run is one
transaction, on SQLite too (:func:`_transaction`): one that fails halfway leaves the
projection as it was, and is run again as if it had never started.

The history is kept in a table of its own, ``talkstream_alembic_version``, so that the projection
can share a database with other applications (Alembic's default ``alembic_version`` is
theirs). Projections made before kept it in ``alembic_version``: ``upgrade`` moves it over.

A projection a newer version migrated past this one's newest revision is refused, saying so
(Alembic's own error was a traceback naming a revision it could not locate, the projector
restarted on it every second), as is one with tables but no history (``SchemaRefused``;
``refusal`` finds either without writing anything); ``migrate_to`` takes one back down to a
revision an older version knows (``talkstream migrate --to``), run by the version that wrote
it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shlex
import sqlite3
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from streams.errors import ConfigError, SchemaRefused
from streams.projection.engine import sqlite_directory

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "talkstream_alembic_version"
# where projections made before kept their history (Alembic's default, any application's)
LEGACY_VERSION_TABLE = "alembic_version"
_PG_LOCK = 0x7A1C_57EA  # any constant: the advisory lock of projection migrations


class OneLine(logging.Filter):
    """Alembic logs each migration it runs as "Running upgrade 0001 -> 0002, <the first
    paragraph of its docstring>", the docstring's lines and all: a log record of several lines
    (one JSON object, but text lines a reader greps apart). Its whitespace is made one space."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = " ".join(message.split()), ()
        return True


def one_line_log() -> None:
    """For every migration run (``migrations/env.py``): each of Alembic's records one line."""
    runner = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, OneLine) for f in runner.filters):
        runner.addFilter(OneLine())


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "no migrations"
    return revision


def current(connection: Connection, version_table: str = VERSION_TABLE) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": version_table})
    return context.get_current_revision()


@cache
def revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(r.revision for r in script.walk_revisions())


def adopt_legacy_history(connection: Connection) -> None:
    """Move the history of a projection made before it had a version table of its own: the
    ``alembic_version`` row becomes ours if it names one of our revisions and our tables are
    there; another application's (any other case) is left alone."""
    revision = _legacy_history(connection)
    if revision is None:
        return
    config = alembic_config()
    config.attributes["connection"] = connection
    command.stamp(config, revision)
    connection.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))


def _legacy_history(connection: Connection) -> str | None:
    """The revision ``adopt_legacy_history`` would take over from ``alembic_version`` (read
    only), or None."""
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table(LEGACY_VERSION_TABLE):
        return None
    if not inspector.has_table("transitions"):
        return None
    legacy = MigrationContext.configure(connection, opts={"version_table": LEGACY_VERSION_TABLE})
    heads = legacy.get_current_heads()  # another application's may have several
    if len(heads) != 1 or heads[0] not in revisions():
        return None
    return heads[0]


def upgrade(engine: Engine) -> None:
    """Migrate to head (no-op at head). Refuses a database made before migrations existed. A
    SQLite file's directory is made here (an engine made without it: a projector's, which
    makes nothing before its group has taken it)."""
    sqlite_directory(engine, make=True)
    with _migrating(engine) as (connection, revision):
        if revision == head():
            return
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def _migrating(engine: Engine) -> Iterator[tuple[Connection, str | None]]:
    """A transaction that may migrate the projection, alone (a file lock for SQLite, an
    advisory lock for PostgreSQL), and the revision it is at: its history adopted from where
    an earlier version kept it; refused when a newer version migrated it, or when it has tables
    but no history (Alembic would create the tables over them: "table requests already
    exists")."""
    with _file_lock(engine), _transaction(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        if current(connection) is None:
            adopt_legacy_history(connection)
        revision = current(connection)
        refused = _refused(engine, connection, revision)
        if refused is not None:
            raise SchemaRefused(refused)
        yield connection, revision


@contextlib.contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``, whose DDL is in the transaction on SQLite too. pysqlite (Python's
    sqlite3 before 3.12's ``autocommit``) opens a transaction only before an INSERT, UPDATE,
    DELETE or REPLACE: every ``CREATE TABLE`` before the first of them was committed by
    itself, so a migration that failed halfway left some tables and no history (refused from
    then on: "tables but no migration history"), and a reader saw tables appear one by one.
    Here the driver opens none of its own (``isolation_level = None``) and the connection
    begins one with ``BEGIN IMMEDIATE`` (the write lock taken at once: a write later in a
    deferred one can fail at once, not wait, when another wrote meanwhile), committed or
    rolled back by SQLAlchemy as any other; the SQLAlchemy "pysqlite: serializable isolation,
    transactional DDL" recipe, for this connection only, which goes back to the pool as it
    came (the projector's writes keep pysqlite's own handling). PostgreSQL's DDL is
    transactional as it is."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        legacy = driver.isolation_level
        driver.isolation_level = None  # pysqlite begins and commits nothing by itself
        try:
            with connection.begin():
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed by a failure: gone
                driver.isolation_level = legacy


def _refused(engine: Engine, connection: Connection, revision: str | None) -> str | None:
    """Why the projection at ``revision`` (its history adopted) is not migrated, and what to
    do: a newer version migrated it, or it has tables but no history."""
    if revision is not None and revision not in revisions():
        return too_new_advice(engine, revision)
    if revision is None and inspect(connection).has_table("transitions"):
        return _no_history(engine)
    return None


def refusal(engine: Engine) -> str | None:
    """What ``upgrade`` would refuse this projection for (``SchemaRefused``'s message), found
    without writing or locking anything: a SQLite file that is not there is not opened (not
    made), and a history ``upgrade`` would adopt from ``alembic_version`` is taken as adopted.
    None: ``upgrade`` would migrate it (or it is at head). A database out of reach raises
    its ``SQLAlchemyError``. What a projector asks before it joins its group, and again
    before each time it asks again after a refusal: one refused takes no partition."""
    database = engine.url.database
    sqlite_file = engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
    if sqlite_file and not Path(str(database)).exists():
        return None
    with engine.connect() as connection:
        revision = current(connection) or _legacy_history(connection)
        return _refused(engine, connection, revision)


def _no_history(engine: Engine) -> str:
    url = engine.url.render_as_string(hide_password=True)
    return (
        f"the projection database {url} has tables but no migration history (made "
        "before migrations existed): rebuild it from the log with `talkstream replay "
        f"--database-url {url} --force`, or delete it"
    )


def too_new_advice(engine: Engine, revision: str) -> str:
    """What this version says of a projection a newer one migrated to ``revision`` (its
    projector, ``audit``, ``stats`` and the console alike)."""
    url = engine.url.render_as_string(hide_password=True)
    return (
        f"the projection database {url} is at migration {revision}, which this version of "
        f"talkstream does not know (its newest is {head()}): a newer version migrated it. "
        f"Take it back with that newer version first: {migrate_command(engine, f'--to {head()}')}"
    )


def migrate_command(engine: Engine, options: str = "") -> str:
    """``talkstream migrate`` for this database, to paste: its URL quoted for a shell, unless
    it has a password, which is never said (a person puts it in where the URL shows ***)."""
    command = " ".join(["talkstream migrate", *([options] if options else [])])
    url = engine.url.render_as_string(hide_password=True)
    if engine.url.password is None:
        return f"`{command} --database-url {shlex.quote(url)}`"
    return f"`{command} --database-url URL` (URL: {url}, with its password for ***)"


def migrate_to(engine: Engine, target: str) -> tuple[str | None, str]:
    """Bring the projection to ``target`` (a revision or ``head``): up, or down for a rollback
    to an older version (the migrations' ``downgrade``). Returns (from, to)."""
    script = ScriptDirectory.from_config(alembic_config())
    wanted = head() if target == "head" else target
    if wanted not in revisions():
        known = ", ".join(sorted(revisions()))
        raise ConfigError(f"no migration {target!r} in this version (it has {known})")
    with _migrating(engine) as (connection, revision):
        if revision == wanted:
            return revision, wanted
        config = alembic_config()
        config.attributes["connection"] = connection
        below = revision is not None and any(
            r.revision == wanted for r in script.iterate_revisions(revision, "base")
        )
        if below:
            command.downgrade(config, wanted)
        else:
            command.upgrade(config, wanted)
        return revision, wanted


def is_current(engine: Engine) -> bool:
    with engine.connect() as connection:
        return current(connection) == head()


def revision(engine: Engine) -> str | None:
    """The projection's revision, read as cheaply as it can be (one row of the version table:
    what the console checks at every page); None when it has no history of ours (not
    migrated yet, or kept in ``alembic_version`` by a version before). A database that cannot
    be read raises, as any query would."""
    try:
        with engine.connect() as connection:
            found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            return found.scalar()
    except DBAPIError:
        if inspect(engine).has_table(VERSION_TABLE):
            raise
        return None


def not_current(engine: Engine) -> str | None:
    """Why this version cannot read the projection as it is, and what to run: a newer version
    migrated it past this one's newest revision, an older one left it below (``talkstream
    migrate`` brings it up, as a projector does at its start), or its tables have no history.
    None: it is at this version's newest, or holds no projection at all."""
    with engine.connect() as connection:
        revision = current(connection)
        legacy = inspect(connection).has_table(LEGACY_VERSION_TABLE)
        tables = inspect(connection).has_table("transitions")
    if revision == head():
        return None
    if revision is not None and revision not in revisions():
        return too_new_advice(engine, revision)
    if revision is None and not tables:
        return None
    if revision is None and not legacy:
        return _no_history(engine)
    url = engine.url.render_as_string(hide_password=True)
    was = f"is at migration {revision}" if revision else "keeps its history in alembic_version"
    return (
        f"the projection database {url} {was}, older than this version of talkstream "
        f"(its newest is {head()}): bring it up with {migrate_command(engine)} "
        "(what a worker's projector does at its start)"
    )


@contextlib.contextmanager
def no_migration_meanwhile(engine: Engine) -> Iterator[bool]:
    """Whether a SQLite projection is being migrated now (a projector holds the migration's
    lock, :func:`_file_lock`): a reader meanwhile finds a file with no history, its tables
    made once the migration commits (one transaction, :func:`_transaction`; a version before
    this one made each table visible as it was created). If not, none starts until the block
    ends (the lock held shared): what the block reads is the projection as the last migration
    left it. A reader that found no history and then asked whether a migration ran found one
    that had committed meanwhile, and said no history (the console's WARNING at a clean
    start, ``talkstream dev`` on a loaded host). False for any other database (PostgreSQL's
    migration is one transaction too, and makes no lock file), and for a file no migration
    has run on (no lock file: none is made here)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield False
        return
    try:
        handle = open(f"{database}.lock", "rb")  # noqa: SIM115  (closed below)
    except OSError:  # none there: no migration has ever run on it
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            migrating = True
        else:
            migrating = False
        try:
            yield migrating
        finally:
            if not migrating:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    with open(f"{database}.lock", "ab") as handle:  # not the database's own file: see above
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

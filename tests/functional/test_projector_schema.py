"""A projector whose database's schema this version will not migrate (a newer version migrated
it past this one's newest revision; its tables have no migration history) is refused before it
joins its group, read only: it says what to do once (an ERROR), then a line each time it asks
again, its ``/readyz`` says the refusal, and it joins once an operator has taken the database
back. The worker's child exited on it (Alembic's refusal from the migration, once its group had
given it partitions), and the worker started it again every second, the same ERROR each time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ArgumentError

from streams.errors import SchemaRefused
from streams.observability import ready
from streams.projection import migrate
from streams.projection.engine import database_identity, make_engine, url_identity
from streams.projection.store import ProjectionStore
from tests.functional.test_projector_database import without_kafka
from tests.functional.test_worker_http import until


def _projection(path: Path) -> str:
    url = f"sqlite:///{path}"
    ProjectionStore.from_url(url).close()  # migrated to this version's newest
    return url


def _run_sql(url: str, *statements: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def _newer(url: str) -> None:  # as a newer version leaves it
    _run_sql(url, f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'")


def _taken_back(url: str) -> None:  # the newer version's `talkstream migrate --to <head>`
    _run_sql(url, f"UPDATE {migrate.VERSION_TABLE} SET version_num = '{migrate.head()}'")


def _without_history(url: str) -> None:  # as a version before migrations left it
    _run_sql(url, f"DROP TABLE {migrate.VERSION_TABLE}")


def _given_history(url: str) -> None:  # a `talkstream replay --force` rebuilt it
    _run_sql(
        url,
        f"CREATE TABLE {migrate.VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        f"INSERT INTO {migrate.VERSION_TABLE} VALUES ('{migrate.head()}')",
    )


def test_a_refusal_is_found_without_writing_anything(tmp_path: Path) -> None:
    """``refusal`` says what ``upgrade`` would refuse, and nothing else: a SQLite file that is
    not there is not made; a projection at this version's newest, or one ``upgrade`` would
    migrate (its history still in ``alembic_version``), is not refused."""
    missing = tmp_path / "missing.sqlite3"
    engine = make_engine(f"sqlite:///{missing}")
    try:
        assert migrate.refusal(engine) is None
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []

    url = _projection(tmp_path / "p.sqlite3")
    engine = make_engine(url)
    try:
        assert migrate.refusal(engine) is None
        _newer(url)
        too_new = migrate.refusal(engine)
        assert too_new is not None and "is at migration 9999, which this version" in too_new
        assert f"`talkstream migrate --to {migrate.head()} --database-url " in too_new
        with engine.connect() as connection:  # read, not changed
            assert migrate.current(connection) == "9999"
        _without_history(url)
        no_history = migrate.refusal(engine)
        assert no_history is not None and "has tables but no migration history" in no_history
        assert "--force" in no_history
        # its history where a version before kept it: ``upgrade`` adopts it, not refused
        _run_sql(
            url,
            f"CREATE TABLE {migrate.LEGACY_VERSION_TABLE} (version_num VARCHAR(32) NOT NULL)",
            f"INSERT INTO {migrate.LEGACY_VERSION_TABLE} VALUES ('{migrate.head()}')",
        )
        assert migrate.refusal(engine) is None
        with engine.connect() as connection:  # not adopted by the look
            assert migrate.current(connection) is None
    finally:
        engine.dispose()


def test_a_projectors_store_makes_no_directory_before_its_migration(tmp_path: Path) -> None:
    """A projector's store (its schema migrated only once its group has taken it) made its
    SQLite file's directory with its engine: a projector its group or its database refused
    left an empty directory behind, where a refused projector makes nothing. Its migration
    makes it now; a directory that can never be made (a file in the way) is still said when
    the store is made, nothing made."""
    database = tmp_path / "new" / "deeper" / "p.sqlite3"
    store = ProjectionStore.from_url(f"sqlite:///{database}", migrate_schema=False)
    try:
        # what a projector asks before it joins its group
        assert database_identity(store.engine) == url_identity(store.engine)
        assert migrate.refusal(store.engine) is None
        assert list(tmp_path.iterdir()) == []
        store.upgrade_schema()  # the group took it
        assert database.is_file()
    finally:
        store.close()
    in_the_way = tmp_path / "in-the-way"
    in_the_way.write_text("not a directory")
    for url in (f"sqlite:///{in_the_way}/p.sqlite3", f"sqlite:///{in_the_way}/sub/p.sqlite3"):
        with pytest.raises(ArgumentError) as refused:
            ProjectionStore.from_url(url, migrate_schema=False)
        directory = Path(url.removeprefix("sqlite:///")).parent
        assert str(refused.value) == (
            f"cannot create the directory {directory} of the SQLite file: Not a directory"
        )
    assert in_the_way.read_text() == "not a directory"


@pytest.mark.parametrize(
    ("refuse", "take_back", "said"),
    [
        (_newer, _taken_back, "is at migration 9999, which this version of talkstream does"),
        (_without_history, _given_history, "has tables but no migration history"),
    ],
)
async def test_a_projector_on_a_database_it_will_not_migrate_says_so_once_and_joins_once_fixed(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    refuse: Any,
    take_back: Any,
    said: str,
) -> None:
    url = _projection(tmp_path / "p.sqlite3")
    refuse(url)
    store = ProjectionStore.from_url(url, migrate_schema=False)
    projector = without_kafka(store)
    try:
        with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
            for _ in range(3):  # asked again (``until_taken``): refused each time
                with pytest.raises(SchemaRefused, match=said):
                    await projector.run()
                assert projector.consumer is None  # never joined its group
                ok, why = ready(None, [projector])
                assert not ok and said in why
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors  # said once, what to do with it
        assert errors[0].startswith(
            f"projector cannot migrate its database: the projection database {url} "
        )
        assert said in errors[0] and url in errors[0]
        assert caplog.text.count(f"projector still refused by its database {url}") == 2

        take_back(url)
        running = asyncio.create_task(projector.run())
        try:  # it joins its group (Kafka is out of reach here: as far as it gets)
            await until(lambda: projector.consumer is not None, timeout=30)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    finally:
        store.close()
    with make_engine(url).connect() as connection:  # nothing written meanwhile
        assert migrate.current(connection) == migrate.head()

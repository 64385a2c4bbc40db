"""PostgreSQL for the contract tests: a real server, never skipped.

``postgres_server`` (session) is ``TALKSTREAM_TEST_POSTGRES_URL`` when set, else the private
cluster of ``scripts/postgres.sh`` (which installs Debian's ``postgresql`` when missing). Each
session (each pytest-xdist worker, each pytest run on the machine) takes a lease on it for its
pid and releases it at its end: the last session to leave stops the cluster when a session
started it, so none stops it under another's feet, and one started by hand stays up (the
script's header). If it cannot be had, the tests that need it FAIL with the script's output.
``database_url`` gives each test a fresh database on SQLite and on PostgreSQL: import both
fixtures into a test module to use them.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    given = os.environ.get("TALKSTREAM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    session = str(os.getpid())
    leased = subprocess.run([SCRIPT, "lease", session], capture_output=True, text=True, timeout=900)
    if leased.returncode != 0:
        pytest.fail(f"PostgreSQL could not be started ({SCRIPT} lease):\n{leased.stderr}")
    yield leased.stdout.strip().splitlines()[-1]
    subprocess.run([SCRIPT, "release", session], capture_output=True, timeout=120)


def fresh_postgres_database(server: str, name: str | None = None) -> Iterator[str]:
    """A new, empty database on the server (``name``, or one made up); dropped afterwards."""
    name = name or f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'projection.sqlite3'}"
        return
    yield from fresh_postgres_database(request.getfixturevalue("postgres_server"))

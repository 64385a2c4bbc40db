"""PostgreSQL for the contract tests: a real server, never skipped.

``postgres_server`` (session) is ``TALKSTREAM_TEST_POSTGRES_URL`` when set, else the private
cluster of ``scripts/postgres.sh`` (which installs Debian's ``postgresql`` when missing, and is
stopped again at the end when this session started it). If it cannot be had, the tests that
need it FAIL with the script's output. Under pytest-xdist (``make test`` runs the unit and
functional tiers on two processes) the workers start it one at a time, and the run's
controller stops it (``tests/conftest.py``): a worker's session may end while another's still
uses it. ``database_url`` gives each test a fresh database on SQLite and on PostgreSQL:
import both fixtures into a test module to use them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
# beside the script's cluster directory (TALKSTREAM_PG_DIR): two starts at once would race
LOCK = Path(os.environ.get("TALKSTREAM_PG_DIR", "/tmp/talkstream-postgres") + ".lock")


def postgres_running() -> bool:
    return subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0


def stop_postgres() -> None:
    subprocess.run([SCRIPT, "stop"], capture_output=True, timeout=120)


@contextlib.contextmanager
def one_start_at_a_time() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    given = os.environ.get("TALKSTREAM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    with one_start_at_a_time():
        was_running = postgres_running()
        started = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"PostgreSQL could not be started ({SCRIPT} start):\n{started.stderr}")
    yield started.stdout.strip().splitlines()[-1]
    if not was_running and "PYTEST_XDIST_WORKER" not in os.environ:
        stop_postgres()


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

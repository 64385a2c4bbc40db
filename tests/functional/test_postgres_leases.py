"""The tests' PostgreSQL cluster shared by concurrent test sessions (``scripts/postgres.sh``'s
leases). A session that had started the cluster stopped it at its end under another session
still using it (two pytest runs on one machine: 28 ``Connection refused`` in a fresh clone's
``make test``). Every test here runs the real script on a cluster of its own (its own
directory and port), never the one the other tests use; the sessions are real processes."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.postgres import SCRIPT
from tests.support import CHECKOUT, free_port, wait_until


class Cluster:
    """``scripts/postgres.sh`` on a directory and port of its own."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.lock = Path(f"{directory}.lock")
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTEST_", "TALKSTREAM_PG_", "TALKSTREAM_TEST_POSTGRES"))
        }
        self.env |= {"TALKSTREAM_PG_DIR": str(directory), "TALKSTREAM_PG_PORT": str(port)}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=300
        )

    def running(self) -> bool:
        return self.run("status").returncode == 0

    def lease(self, session: subprocess.Popen[bytes]) -> str:
        leased = self.run("lease", str(session.pid))
        assert leased.returncode == 0, leased.stderr
        return leased.stdout.strip().splitlines()[-1]

    def release(self, session: subprocess.Popen[bytes]) -> str:
        released = self.run("release", str(session.pid))
        assert released.returncode == 0, released.stderr
        return released.stderr


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # in /tmp itself: as root the cluster runs as `postgres`, which may not enter tmp_path
    directory = Path(tempfile.mkdtemp(prefix="talkstream-pg-leases-"))
    cluster = Cluster(directory, free_port())
    try:
        yield cluster
    finally:
        cluster.run("stop")
        shutil.rmtree(directory, ignore_errors=True)
        cluster.lock.unlink(missing_ok=True)


@pytest.fixture
def sessions() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes standing for test sessions (what a lease names is a process)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for session in started:
        session.kill()
        session.wait(timeout=30)


def session(sessions: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    started = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    sessions.append(started)
    return started


def answers(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_the_last_session_to_leave_stops_the_cluster_a_session_started(
    cluster: Cluster, sessions: list[subprocess.Popen[bytes]]
) -> None:
    first, second = session(sessions), session(sessions)
    url = cluster.lease(first)
    assert cluster.lease(second) == url
    assert "left running for the test sessions using it" in cluster.release(first)
    assert answers(url), "the second session still has its cluster"
    assert "stopped" in cluster.release(second)
    assert not cluster.running()
    assert list((cluster.directory / "leases").iterdir()) == []


def test_a_gone_sessions_lease_counts_for_nothing(
    cluster: Cluster, sessions: list[subprocess.Popen[bytes]]
) -> None:
    """A session killed before its end never releases its lease: the cluster is stopped all the
    same by the last live session to leave."""
    crashed, last = session(sessions), session(sessions)
    cluster.lease(crashed)
    crashed.kill()
    crashed.wait(timeout=30)
    cluster.lease(last)
    assert "stopped" in cluster.release(last)
    assert not cluster.running()
    assert list((cluster.directory / "leases").iterdir()) == []


def test_a_cluster_started_by_hand_outlives_the_sessions(
    cluster: Cluster, sessions: list[subprocess.Popen[bytes]]
) -> None:
    assert cluster.run("start").returncode == 0
    one = session(sessions)
    cluster.lease(one)
    assert "started by hand" in cluster.release(one)
    assert cluster.running()
    # a session's cluster that `start` was run on while the session had it: the user's now
    assert cluster.run("stop").returncode == 0
    other = session(sessions)
    cluster.lease(other)
    assert cluster.run("start").returncode == 0
    assert "started by hand" in cluster.release(other)
    assert cluster.running()


def test_a_sessions_release_waits_for_the_command_holding_the_lock(
    cluster: Cluster, sessions: list[subprocess.Popen[bytes]]
) -> None:
    """The leases are read and the cluster stopped under the lock every command but status
    takes: here the test holds it (as another session's lease, starting the cluster, would)."""
    only = session(sessions)
    url = cluster.lease(only)
    with cluster.lock.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        release = subprocess.Popen(
            [SCRIPT, "release", str(only.pid)],
            env=cluster.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert release.stderr is not None
        assert "waiting for another postgres.sh" in release.stderr.readline()
        assert release.poll() is None
        assert answers(url), "nothing was decided while another command held the lock"
    assert release.wait(timeout=120) == 0
    assert not cluster.running()


SESSION = """
import os, time
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.postgres import postgres_server  # noqa: F401 (the fixture)


def answers(url):
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_uses_the_cluster(postgres_server):
    answers(postgres_server)
    Path(os.environ["SESSION_READY"]).touch()
    deadline = time.monotonic() + 120
    while not Path(os.environ["SESSION_GO"]).exists():  # until the test says go
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answers(postgres_server)
"""


def test_a_pytest_session_ending_leaves_the_cluster_to_another_still_using_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two real pytest sessions on the fixture ``tests.postgres.postgres_server``: the first
    starts the cluster, the second comes while the first runs and still uses it after the first
    has ended; the cluster is stopped when the second ends."""
    (tmp_path / "test_session.py").write_text(textwrap.dedent(SESSION))
    env = cluster.env | {"PYTHONPATH": str(CHECKOUT)}
    runs: dict[str, subprocess.Popen[str]] = {}
    for name in ("first", "second"):
        runs[name] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_session.py"],
            cwd=tmp_path,
            env=env
            | {
                "SESSION_READY": str(tmp_path / f"{name}.ready"),
                "SESSION_GO": str(tmp_path / f"{name}.go"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready, run = tmp_path / f"{name}.ready", runs[name]
        wait_until(
            lambda ready=ready, run=run: ready.exists() or run.poll() is not None,
            120,
            what=f"the {name} run",
        )
        assert ready.exists(), run.communicate(timeout=30)[0]
    try:
        (tmp_path / "first.go").touch()
        first_output, _ = runs["first"].communicate(timeout=120)
        assert runs["first"].returncode == 0, first_output
        (tmp_path / "second.go").touch()
        second_output, _ = runs["second"].communicate(timeout=120)
        assert runs["second"].returncode == 0, second_output
    finally:
        for run in runs.values():
            run.kill()
            run.wait(timeout=30)
    assert not cluster.running(), "the last session stops the cluster a session started"


def test_a_taken_port_starts_the_cluster_on_the_next_free_one(
    cluster: Cluster, sessions: list[subprocess.Popen[bytes]]
) -> None:
    """CI's cluster once could not listen on its port (``could not create any TCP/IP sockets``:
    55432 was in the kernel's ephemeral range, the local port of some outgoing connection): both
    tests needing PostgreSQL then failed. A taken port is passed over, and the URL every command
    prints is the port the cluster listens on."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", int(cluster.env["TALKSTREAM_PG_PORT"])))
    taken.listen()
    with taken:
        leased = cluster.run("lease", str(session(sessions).pid))
        assert leased.returncode == 0, leased.stderr
        url = leased.stdout.strip().splitlines()[-1]
        port = make_url(url).port
        assert port != taken.getsockname()[1]
        assert f"127.0.0.1:{taken.getsockname()[1]} is taken" in leased.stderr
        assert answers(url)
        assert cluster.run("status").stdout.strip() == url
        assert cluster.lease(session(sessions)) == url

"""The processes talkstream starts itself (the dev supervisor's children, the worker's
projector) run talkstream's own code whatever directory they were started in; the worker starts
a projector child that keeps exiting again less and less often."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from streams.children import CHILD_RAN_SECONDS, ChildProcess
from streams.runtime import child_process

SHADOW = "raise SystemExit('imported from the working directory: {}')\n"


def test_a_child_runs_talkstream_even_beside_a_models_py_or_a_streams_py(tmp_path: Path) -> None:
    """``talkstream dev`` run in a project directory that holds a ``models.py`` (or a
    ``streams/``) started children that imported it instead of talkstream's own, and failed."""
    for name in ("models", "streams"):
        (tmp_path / f"{name}.py").write_text(SHADOW.format(name))
    done = subprocess.run(
        child_process("--help"), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "projector" in done.stdout


def test_a_dev_childs_log_is_rotated_keeping_a_bounded_number_of_files(tmp_path: Path) -> None:
    """``talkstream dev`` wrote each child's output straight into ``DATA_DIR/logs/<name>.log``,
    which only grew (about 170 MB a day at 10 webhooks/s): it is now rotated."""
    import sys

    from streams.dev.supervisor import copy_to_log

    lines = 3000  # 100 bytes each: 300 kB, six files' worth of 50 kB
    script = f"for i in range({lines}): print(f'line {{i:05d}} ' + 'x' * 88)"
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    log = tmp_path / "worker.log"
    copier = copy_to_log(proc, log, max_bytes=50_000, backups=2)
    assert proc.wait(timeout=60) == 0
    copier.join(timeout=60)
    assert not copier.is_alive()

    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["worker.log", "worker.log.1", "worker.log.2"]
    assert all(p.stat().st_size <= 50_000 for p in tmp_path.iterdir())
    newest = log.read_text().splitlines()
    assert newest[-1] == f"line {lines - 1:05d} " + "x" * 88
    # nothing is lost between the files kept: the oldest kept continues into the next
    older = (tmp_path / "worker.log.1").read_text().splitlines()
    assert int(older[-1].split()[1]) + 1 == int(newest[0].split()[1])


def test_a_dev_child_writes_its_output_into_its_log(tmp_path: Path) -> None:
    import os
    import threading

    from streams.dev.supervisor import _spawn

    copiers: list[threading.Thread] = []
    proc = _spawn("help", ["--help"], dict(os.environ), tmp_path, copiers)
    assert proc.wait(timeout=120) == 0
    [copier] = copiers
    copier.join(timeout=60)
    assert "Usage:" in (tmp_path / "help.log").read_text()


EXITS = ["/bin/sh", "-c", "exit 3"]  # a child failing at its start


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _restarts(command: list[str], clock: _Clock, seconds: int) -> list[float]:
    """The worker's watch of its projector child, once a second for ``seconds`` (each child
    waited for before the watch that may see it exited): the times it was started again."""
    child = ChildProcess("projector", command=command, clock=clock)
    child.start()
    started: list[float] = []
    try:
        for _ in range(seconds):
            clock.now += 1.0
            before = child.pid
            assert child._child is not None
            child._child.wait(timeout=30)
            asyncio.run(child.watch())
            if child.pid != before:
                started.append(clock.now)
    finally:
        child.stop()
    return started


def test_a_projector_child_that_keeps_exiting_is_started_again_less_and_less_often() -> None:
    """A child that fails at its start (a bug, a setting it cannot use) was started again at
    every watch, once a second forever, an ERROR each time: now after 1 s, then 2 s, 4 s, ...
    a minute at most."""
    clock = _Clock()
    started = _restarts(EXITS, clock, 200)
    gaps = [round(b - a) for a, b in zip([1000.0, *started], started, strict=False)]
    # seen exited at the first watch, a second after each start; then its pause
    assert gaps == [2, 3, 5, 9, 17, 33, 61, 61], gaps


def test_a_projector_child_that_ran_a_while_is_started_again_at_once() -> None:
    """A crash after a minute or more of work: started again at the next watch, and its pause
    starts over (a child that then keeps exiting waits 1 s, 2 s, ... again)."""
    clock = _Clock()  # the child exits at once: the clock says how long it ran
    child = ChildProcess("projector", command=EXITS, clock=clock)
    child.start()
    try:
        for _ in range(3):  # three quick exits: 1 s, then 2 s, 4 s
            first = child.pid
            while child.pid == first:
                clock.now += 1.0
                assert child._child is not None
                child._child.wait(timeout=30)
                asyncio.run(child.watch())
        ran = child.pid
        clock.now += CHILD_RAN_SECONDS  # it ran a minute, then exited
        assert child._child is not None
        child._child.wait(timeout=30)
        asyncio.run(child.watch())
        assert child.pid != ran  # at once
        again = child.pid
        assert child._child is not None
        child._child.wait(timeout=30)
        clock.now += 1.0
        asyncio.run(child.watch())  # exited at once again: 1 s of pause first
        assert child.pid == again
        clock.now += 1.0
        asyncio.run(child.watch())
        assert child.pid != again
    finally:
        child.stop()

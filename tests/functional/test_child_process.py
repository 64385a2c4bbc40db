"""The processes talkstream starts itself (the dev supervisor's children, the worker's
projector) run talkstream's own code whatever directory they were started in."""

from __future__ import annotations

import subprocess
from pathlib import Path

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

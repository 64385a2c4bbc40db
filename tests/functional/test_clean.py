"""``make clean`` removes the data directory the settings name (TALKSTREAM_DATA_DIR, default
``.data``), and says so; it removed ``./.data`` whatever they said. It removes nothing that may
not be talkstream's: a directory holding other files, the checkout or a parent of it, one a
running ``talkstream dev`` holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams.dev.clean import Refused, clean, strangers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout's Makefile, with a ``.venv`` whose python is this one."""
    here = tmp_path / "checkout"
    (here / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", here / "Makefile")
    python = here / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return here


def state(data_dir: Path) -> Path:
    """What a dev run leaves in a data directory."""
    for folder in ("kafka/meta", "worker/talkstream/worker-1", "logs"):
        (data_dir / folder).mkdir(parents=True)
    for name in ("talkstream.sqlite3", "talkstream.sqlite3-wal", "talkstream.sqlite3.lock"):
        (data_dir / name).write_text("x")
    return data_dir


def make_clean(checkout: Path, data_dir: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALKSTREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    if data_dir is not None:
        env["TALKSTREAM_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        ["make", "--no-print-directory", "clean"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_clean_removes_the_configured_data_directory_not_the_default(
    checkout: Path, tmp_path: Path
) -> None:
    default = state(checkout / ".data")
    configured = state(tmp_path / "elsewhere")
    done = make_clean(checkout, configured)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == (
        f"make clean: removed {configured} (TALKSTREAM_DATA_DIR): kafka, logs, "
        "talkstream.sqlite3, talkstream.sqlite3-wal, talkstream.sqlite3.lock, worker\n"
    )
    assert not configured.exists()
    assert (default / "talkstream.sqlite3").exists()  # not the one configured: left alone

    done = make_clean(checkout, None)  # unset: .data here
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"make clean: removed {default} (the default: TALKSTREAM_DATA_DIR is not set): kafka"
    )
    assert not default.exists() and (checkout / "Makefile").exists()

    done = make_clean(checkout, None)
    assert (done.returncode, done.stdout) == (
        0,
        f"make clean: nothing to remove: {default} (the default: TALKSTREAM_DATA_DIR is not "
        "set) does not exist\n",
    )


def test_make_clean_removes_nothing_it_did_not_make(checkout: Path, tmp_path: Path) -> None:
    """A TALKSTREAM_DATA_DIR set to a folder holding other files (a typo, a shared folder) was
    never touched before (``rm -rf .data``); removing it whole would delete what is not
    talkstream's."""
    shared = state(tmp_path / "shared")
    (shared / "notes.txt").write_text("mine")
    (shared / "photos").mkdir()
    done = make_clean(checkout, shared)
    assert done.returncode == 2 and done.stdout == ""  # make's for a recipe that failed
    assert done.stderr.startswith(
        f"make clean: not removing {shared} (TALKSTREAM_DATA_DIR): it holds what talkstream did "
        "not put there (notes.txt, photos): remove it yourself, or point TALKSTREAM_DATA_DIR "
        "at talkstream's own folder\n"
    )
    assert sorted(p.name for p in shared.iterdir()) == [
        "kafka",
        "logs",
        "notes.txt",
        "photos",
        "talkstream.sqlite3",
        "talkstream.sqlite3-wal",
        "talkstream.sqlite3.lock",
        "worker",
    ]


@pytest.mark.parametrize("which", ["checkout", "parent"])
def test_make_clean_never_removes_the_checkout(checkout: Path, which: str) -> None:
    data_dir = checkout if which == "checkout" else checkout.parent
    done = make_clean(checkout, data_dir)
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"make clean: not removing {data_dir} (TALKSTREAM_DATA_DIR): it holds the current "
        f"directory ({checkout})\n"
    )
    assert (checkout / "Makefile").exists()


def test_make_clean_leaves_a_running_devs_directory(checkout: Path, tmp_path: Path) -> None:
    data_dir = state(tmp_path / "running")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDS_DATA, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        done = make_clean(checkout, data_dir)
        assert done.returncode == 2
        assert done.stderr.startswith(
            f"make clean: not removing {data_dir} (TALKSTREAM_DATA_DIR): a talkstream dev runs "
            f"on it (pid {holder.pid}): stop it first (Ctrl-C)\n"
        )
        assert (data_dir / "talkstream.sqlite3").exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
    done = make_clean(checkout, data_dir)  # stopped: its directory goes
    assert done.returncode == 0, done.stderr
    assert not data_dir.exists()


# a `talkstream dev` that holds its data directory until its stdin closes
HOLDS_DATA = """
import sys
from pathlib import Path
from streams.dev.datadir import hold_data_dir
with hold_data_dir(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_make_clean_leaves_a_directory_a_worker_started_by_hand_runs_on(
    checkout: Path, tmp_path: Path
) -> None:
    """A worker (and its projector) started by hand, not by ``make dev``, holds its state
    folder (``worker.lock``, ``projector.lock``): ``make clean`` removed the directory from
    under it, its table store and the projection it was writing."""
    data_dir = state(tmp_path / "running")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TALKSTREAM_DATA_DIR": str(data_dir)}
    env["TALKSTREAM_WORKER_NAME"] = "worker-1"
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDS_STATE, role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for role in ("worker", "projector")
    ]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        done = make_clean(checkout, data_dir)
        assert done.returncode == 2
        worker, projector = (holder.pid for holder in holders)
        assert done.stderr.startswith(
            f"make clean: not removing {data_dir} (TALKSTREAM_DATA_DIR): talkstream worker "
            f"(pid {worker}, worker/talkstream/worker-1), projector (pid {projector}, "
            "worker/talkstream/worker-1) run on it (its state folder's lock): stop them first\n"
        ), done.stderr
        assert holders[1].stdin is not None
        holders[1].stdin.close()  # the projector stops: the worker still runs
        assert holders[1].wait(timeout=10) == 0
        done = make_clean(checkout, data_dir)
        assert done.returncode == 2
        assert done.stderr.startswith(
            f"make clean: not removing {data_dir} (TALKSTREAM_DATA_DIR): a talkstream worker "
            f"(pid {worker}, worker/talkstream/worker-1) runs on it (its state folder's lock): "
            "stop it first\n"
        ), done.stderr
        assert (data_dir / "talkstream.sqlite3").exists()
    finally:
        for holder in holders:
            assert holder.stdin is not None
            holder.stdin.close()
            assert holder.wait(timeout=10) == 0
    # stopped, each left its lock file with its pid, held by no one: the directory goes
    assert (data_dir / "worker/talkstream/worker-1/worker.lock").read_text() == str(worker)
    done = make_clean(checkout, data_dir)
    assert done.returncode == 0, done.stderr
    assert not data_dir.exists()


# a worker (or a projector: argv[1]) started by hand, holding its state folder until its stdin
# closes
HOLDS_STATE = """
import sys
from streams.tabledir import hold_table_dir
from streams.settings import Settings
with hold_table_dir(Settings(), sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_make_clean_without_a_venv_says_so_and_removes_nothing(
    checkout: Path, tmp_path: Path
) -> None:
    shutil.rmtree(checkout / ".venv")
    data_dir = state(tmp_path / "data")
    done = make_clean(checkout, data_dir)
    assert done.returncode == 2
    assert done.stderr.startswith(
        "make clean: no .venv to read the settings with: make bootstrap first\n"
    )
    assert (data_dir / "talkstream.sqlite3").exists()


def test_the_home_directory_is_refused(tmp_path: Path) -> None:
    home = state(tmp_path / "home")
    with pytest.raises(Refused, match=r"it is the home directory$"):
        clean(home, named="TALKSTREAM_DATA_DIR", here=tmp_path / "co", home=home)
    assert (home / "talkstream.sqlite3").exists()


def test_every_projection_of_each_app_id_is_talkstreams(tmp_path: Path) -> None:
    data_dir = state(tmp_path / "data")
    for name in ("other-app.sqlite3", "other-app.sqlite3-shm", "other-app.sqlite3-journal"):
        (data_dir / name).write_text("x")
    (data_dir / "kafka-cluster").mkdir()
    assert strangers(data_dir) == []
    (data_dir / "projection.db").write_text("x")
    assert strangers(data_dir) == ["projection.db"]

"""The worker's executors child waits for the one of the worker's run before it: a worker
killed outright has its child stopped by the kernel, and that child ends its calls running
while the worker's next run starts another. Beside it at once, the new one took the same
member ids and told the running calls lost: each called twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from streams.children import PARENT_ENV
from streams.settings import Settings
from streams.tabledir import hold_table_dir
from tests.support import free_port


def started(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "executors"],
        env={
            **os.environ,
            "TALKSTREAM_DATA_DIR": str(tmp_path),
            # nothing listens: once past its hold, it stops on Kafka out of reach
            "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "TALKSTREAM_SECRET_KEYS": Fernet.generate_key().decode(),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def line_of(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    assert proc.stdout is not None
    ends = time.monotonic() + timeout
    seen = []
    while time.monotonic() < ends:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r}: {''.join(seen)}")


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    lock = hold_table_dir(Settings(), "executors")
    yield lock
    lock.close()


def test_the_workers_child_waits_for_the_executors_before_it(tmp_path: Path, held) -> None:  # type: ignore[no-untyped-def]
    child = started(tmp_path, **{PARENT_ENV: str(os.getpid())})
    try:
        line_of(child, "executors wait for the executors before them to stop")
        assert child.poll() is None  # waiting, not refused
        held.close()  # the one before it has stopped
        out = child.communicate(timeout=60)[0]
        assert child.returncode == 1  # on to Kafka, which is not there
        assert "another executors process runs on" not in out
    finally:
        child.kill()
        child.wait()


def test_talkstream_executors_beside_another_of_its_name_is_refused(tmp_path: Path, held) -> None:  # type: ignore[no-untyped-def]
    proc = started(tmp_path)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1
    assert "another executors process runs on" in out and "TALKSTREAM_WORKER_NAME" in out

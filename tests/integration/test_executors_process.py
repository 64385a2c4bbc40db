"""The executors in a process of their own: the worker's child (``EXECUTORS=process``), or
``talkstream executors`` beside a worker that runs none (``EXECUTORS=off``). Webhooks end as
they do with the executors in the worker; each process serves what it measures."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import System, http
from tests.support import free_port, seed_params, wait_until

pytestmark = pytest.mark.integration


def served(port: int) -> str:
    with contextlib.suppress(OSError):  # not serving yet
        code, body = http("GET", f"http://127.0.0.1:{port}/metrics")
        return str(body) if code == 200 else ""
    return ""


def series(text: str) -> set[str]:
    return {
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE ")
        and not line.split()[2].startswith(("python_", "process_"))
        and not line.split()[2].endswith("_created")  # (a counter's start, beside it)
    }


def published(system: System, *emails: str) -> None:
    ids = []
    for email in emails:
        status, body = system.post(seed_params(email))
        assert status == 202, body
        ids.append(body["request_id"])
    rows = system.wait_terminal(ids)
    assert {row.state for row in rows.values()} == {"published"}


def test_the_workers_executors_child_publishes_and_serves_what_it_measures(
    make_system: Any,
) -> None:
    """Its /readyz and /metrics are its own: the upstream series (calls, waits, targets) and
    the lag of its two groups; the worker's no longer has the upstream series (at 0 they read
    as executors that call nothing), and keeps its own."""
    port = free_port()
    system: System = make_system(executors="process", executors_http_port=str(port))
    system.wait_ready()
    published(system, "child-1@example.com", "child-2@example.com")
    generate = f"{system.app_id}-generate"
    wait_until(lambda: f'topic="{generate}"' in served(port), 60, what="the executors' lag")
    assert http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200
    text = served(port)
    assert series(text) == {
        "talkstream_consumer_lag",
        "talkstream_dead_letters_total",
        "talkstream_upstream_calls_total",
        "talkstream_upstream_wait_seconds",
        "talkstream_upstream_queue_depth",
        "talkstream_upstream_in_flight",
        "talkstream_upstream_rate",
        "talkstream_upstream_throttled_total",
        "talkstream_upstream_circuit",
        "talkstream_in_flight",
    }
    assert 'talkstream_upstream_calls_total{outcome="answered",upstream="openai"} 2.0' in text
    worker = series(str(http("GET", f"{system.worker_url()}/metrics")[1]))
    assert "talkstream_transitions_total" in worker
    assert not any(name.startswith("talkstream_upstream") for name in worker)


def test_executors_run_on_their_own_and_a_second_of_one_name_is_refused(
    make_system: Any,
) -> None:
    """``EXECUTORS=off``: the worker calls nothing, and ``talkstream executors`` does. A
    second one on the same ``WORKER_NAME`` would take the first's member ids in the groups (the
    two fencing each other out): it is refused before it joins, naming the setting."""
    system: System = make_system(executors="off", executors_http_port="0")
    system.wait_ready()
    system.spawn("executors", "executors")
    published(system, "alone@example.com")
    second = subprocess.run(
        [sys.executable, "-m", "streams", "executors"],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another executors process runs on" in second.stderr
    assert "TALKSTREAM_WORKER_NAME" in second.stderr

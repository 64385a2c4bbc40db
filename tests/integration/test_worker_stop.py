"""A worker's stop ends within its documented bound whatever its consumer groups are doing."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from streams.faust_transport import KAFKA_STOP_SECONDS
from tests.integration.conftest import System, described_group
from tests.integration.test_crash import projectors_holding
from tests.support import seed_params, wait_until

STOP_DRAIN_SECONDS = 5.0  # the setting's default, which these deployments keep
# README, Operations, "Stopping": STOP_DRAIN_SECONDS + 5 s "and a few seconds more to close"
# (about 15 s), and more on a busy 2-core host running the broker and another worker
STOP_BOUND_SECONDS = STOP_DRAIN_SECONDS + KAFKA_STOP_SECONDS + 10


def test_workers_stopped_while_executors_join_their_groups_end_within_their_bound(
    make_system: Any,
) -> None:
    """A deployment stopped (SIGTERM to both workers at once) while worker-b's executors'
    JoinGroups are pending (started beside worker, it joined their groups, which wait for
    worker's executors to rejoin: they hear of it at their next heartbeat, every 6 s with a
    60 s session, and stopping, never rejoin). Each ends within the stop's bound (README,
    "Stopping"), and the requests accepted meanwhile are done once worker is back. worker-b
    took 30 s and more: its consumers' stops waited for their JoinGroups' answers, which came
    once the group gave up on worker's members (the 60 s rebalance timeout), and a
    supervisor's grace period ended in a SIGKILL."""
    system: System = make_system(session_timeout_seconds="60")
    bootstrap = system.env["TALKSTREAM_KAFKA_BOOTSTRAP"]
    groups = [f"{system.app_id}-{executor}" for executor in ("generator", "publisher")]
    system.wait_ready()
    first = [system.post(seed_params(f"a{i}@example.com"))[1]["request_id"] for i in range(4)]
    system.wait_terminal(first)
    for group in groups:
        wait_until(lambda g=group: projectors_holding(bootstrap, g) == 1, 60, 0.5, what=group)
    system.start_worker("worker-b")

    def b_joining() -> bool:  # its generator joined: the group waits for worker's to rejoin
        state, members = described_group(bootstrap, groups[0])
        return state == "PreparingRebalance" and any(m[0].startswith("worker-b@") for m in members)

    wait_until(b_joining, 120, 0.05, what="worker-b's generator joining its group")
    workers = {name: system.procs.pop(name) for name in ("worker", "worker-b")}
    for worker in workers.values():
        worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for name, worker in workers.items():
        try:
            code = worker.wait(timeout=max(STOP_BOUND_SECONDS - (time.monotonic() - signalled), 0))
        except subprocess.TimeoutExpired:
            for other in workers.values():
                other.kill()
                other.wait()
            raise AssertionError(
                f"{name} was still stopping {STOP_BOUND_SECONDS:.0f}s after SIGTERM:\n"
                f"{system.log(name)}"
            ) from None
        assert code == 0, system.log(name)
    # nothing lost: what was accepted before is done, and so is what comes once worker is back
    system.start_worker("worker")
    later = [system.post(seed_params(f"b{i}@example.com"))[1]["request_id"] for i in range(4)]
    system.wait_terminal(first + later, timeout=150)

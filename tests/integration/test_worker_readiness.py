"""The worker's and its projector's ``/readyz`` tell the truth about Kafka: ready while idle
(an idle consumer long-polls: no records is not no Kafka), 503 saying Kafka is unreachable
while their broker is stopped, or hangs, and ready again once it is back. Each answer within
the two seconds a load balancer's probe waits. (Both said "ready" through an outage: the
worker's readiness looked at faust's rebalance and recovery only, and the projector on its
own was ready once serving.)"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from streams.dev.kafka import EmbeddedKafka
from streams.observability import KAFKA_SILENCE_SECONDS
from tests.integration.conftest import System, http
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration

READY = (200, {"ready": True, "status": "ready"})
PROBE_SECONDS = 2.0  # what the ingress's /readyz answers within (READY_TIMEOUT_SECONDS)


def readyz(url: str) -> tuple[int, Any]:
    started = time.monotonic()
    answer = http("GET", f"{url}/readyz", timeout=PROBE_SECONDS + 1)
    assert time.monotonic() - started < PROBE_SECONDS, f"{url}/readyz took too long"
    return answer


def listening(url: str) -> bool:
    try:
        http("GET", f"{url}/healthz", timeout=PROBE_SECONDS)
    except OSError:  # refused: not serving yet
        return False
    return True


@contextmanager
def stopped(broker: EmbeddedKafka) -> Iterator[str]:
    """The broker stopped (SIGTERM: a controlled shutdown), started again after."""
    assert broker.stop()
    try:
        yield "Kafka unreachable: no connection to a broker"
    finally:
        broker.start(timeout=120)


@contextmanager
def hung(broker: EmbeddedKafka) -> Iterator[str]:
    """The broker frozen (SIGSTOP): its connections stay open, nothing is answered."""
    pid = broker.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield "Kafka unreachable: no broker has answered for "
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("outage", [stopped, hung], ids=["stopped", "hung"])
def test_worker_and_projector_are_unready_while_kafka_is_out_of_reach(
    outage: Any, module_broker: EmbeddedKafka, tmp_path
) -> None:
    projector_port = free_port()
    system = System(module_broker, tmp_path, projector_http_port=str(projector_port)).start()
    urls = {"worker": system.worker_url(), "projector": f"http://127.0.0.1:{projector_port}"}
    try:
        system.wait_ready()
        for name, url in urls.items():  # the projector, the worker's child, may not listen yet
            wait_until(lambda u=url: listening(u) and readyz(u) == READY, 60, 0.2, what=name)
        # idle past the silence limit, probed as a load balancer would: ready every time
        idle_until = time.monotonic() + KAFKA_SILENCE_SECONDS + 3
        while time.monotonic() < idle_until:
            for name, url in urls.items():
                assert readyz(url) == READY, name
            time.sleep(0.5)  # the probes' pace, not a wait for anything

        with outage(module_broker) as says:
            for name, url in urls.items():

                def unready(u: str = url) -> Any:
                    status, body = readyz(u)
                    return body if status == 503 else None

                body = wait_until(unready, 60, 0.2, what=f"{name} /readyz 503")
                assert body["ready"] is False
                status = body["status"]
                if name == "worker" and system.executors_mode == "process":
                    # its own reason, or its executors child's, whichever consumers saw the
                    # silence first: the child's said as such (README, ``EXECUTORS``)
                    status = status.removeprefix("executors not ready: ")
                assert status.startswith(says), (name, body)
                assert http("GET", f"{url}/healthz", timeout=PROBE_SECONDS)[0] == 200, name

        for name, url in urls.items():
            wait_until(lambda u=url: readyz(u) == READY, 120, 0.2, what=f"{name} ready again")
    finally:
        system.stop()


def test_a_worker_is_not_ready_while_its_executors_child_is_not(make_system: Any) -> None:
    """With ``EXECUTORS=process`` the worker's commands are called by its executors child: the
    worker is ready only while the child is (its ``/readyz`` asked within the probe's time),
    saying why not meanwhile. It said ready while the child answered nothing (frozen here;
    starting, or started again after an exit), its commands taken by no one."""
    system: System = make_system(executors="process")
    worker, child = system.worker_url(), system.executors_url()
    assert child != worker
    system.wait_ready()
    # the child says whose it is: its worker's (its parent's) pid, which the worker checks
    ready_child = (200, {**READY[1], "parent": system.procs["worker"].pid})
    wait_until(lambda: listening(child) and readyz(child) == ready_child, 60, 0.2, what="child")
    assert readyz(worker) == READY
    pid = system.child_pid("executors")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # its server answers nothing; its Kafka sessions go on a while
    try:

        def unready() -> Any:
            status, body = readyz(worker)
            return body if status == 503 else None

        body = wait_until(unready, 30, 0.2, what="the worker's /readyz 503")
        assert body == {
            "ready": False,
            "status": "executors not ready: its /readyz does not answer (TimeoutError)",
        }
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: readyz(worker) == READY, 60, 0.2, what="the worker ready again")
    # the child's own reason, said as its own: stopped, it is started again by the worker,
    # which is not ready until the new one is
    os.kill(pid, signal.SIGKILL)
    said = set()

    def back() -> bool:
        status, body = readyz(worker)
        said.add(body["status"])
        return status == 200 and system.child_pid("executors") not in (None, pid)

    wait_until(back, 90, 0.1, what="the worker ready with a new executors child")
    assert "executors not ready: its /readyz does not answer (ClientConnectorError)" in said
    assert readyz(child) == ready_child

"""Run-wide hooks. Under pytest-xdist (``make test`` runs the unit and functional tiers on two
processes) each worker hands out ports of its own (``bench.system.PORT_SHARE``). (Each worker
has a session of its own, which leases the PostgreSQL cluster for itself: ``tests/postgres.py``.)"""

from __future__ import annotations

import os

import pytest

from bench.system import PORT_SHARE


def pytest_configure(config: pytest.Config) -> None:
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # the worker's own ports, for it and the processes it starts: one
        # worker's broker stopped for an outage must find its port free when started again
        index = int(worker["workerid"].removeprefix("gw"))
        os.environ[PORT_SHARE] = f"{index}/{worker['workercount']}"

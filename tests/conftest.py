"""Run-wide hooks. Under pytest-xdist (``make test`` runs the unit and functional tiers on two
processes) each worker has a session of its own, so none of them may stop the PostgreSQL
cluster that ``tests.postgres.postgres_server`` started while the other still uses it: the
controller, which runs no test, stops it at the end when it was not running at the start.
Each worker hands out ports of its own (``bench.system.PORT_SHARE``)."""

from __future__ import annotations

import os

import pytest

from bench.system import PORT_SHARE
from tests.postgres import postgres_running, stop_postgres

WAS_RUNNING = pytest.StashKey[bool]()


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _xdist_controller(config) and not os.environ.get("TALKSTREAM_TEST_POSTGRES_URL"):
        config.stash[WAS_RUNNING] = postgres_running()
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # the worker's own ports, for it and the processes it starts: one
        # worker's broker stopped for an outage must find its port free when started again
        index = int(worker["workerid"].removeprefix("gw"))
        os.environ[PORT_SHARE] = f"{index}/{worker['workercount']}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if not config.stash.get(WAS_RUNNING, True) and postgres_running():
        stop_postgres()

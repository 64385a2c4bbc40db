"""The projector waiting on its database says so: a database that does not answer (a server
that hangs, a network that drops everything) left the projector's writes waiting with no
error, no log line and its ``/readyz`` ready, for as long as it lasted."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from streams.agents import projector as projector_module
from streams.agents.projector import Projector, ProjectorConfig
from streams.observability import ready
from streams.projection.engine import make_engine
from streams.projection.store import ProjectionStore
from tests.functional.test_worker_http import until


class _HungDatabase(ProjectionStore):
    """A database that answers the schema's migration only once released."""

    def __init__(self) -> None:
        super().__init__(make_engine("sqlite://"), migrate_schema=False)
        self.released = threading.Event()

    def upgrade_schema(self) -> None:
        self.released.wait(30)
        super().upgrade_schema()


async def test_a_database_that_does_not_answer_is_said_until_it_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(projector_module, "DATABASE_SILENCE_SECONDS", 1.0, raising=False)
    store = _HungDatabase()
    config = ProjectorConfig(
        topic="t-lifecycle",
        group="t-projector",
        instance="t",
        consumer_options={"bootstrap_servers": "127.0.0.1:1"},  # never reached here
    )
    projector = Projector(config, store, dead_letters=None)  # type: ignore[arg-type]
    silent = "database not answering: projection schema migration has waited 1 s"
    with caplog.at_level(logging.INFO, logger="streams.agents.projector"):
        running = asyncio.create_task(projector.run())
        try:
            await until(lambda: projector.database_error is not None)
            assert ready(None, [projector]) == (False, silent)
            assert "projection schema migration has waited 1 s for the database" in caplog.text
            store.released.set()
            await until(lambda: projector.database_error is None)
            assert "projection schema migration answered after more than 1 s" in caplog.text
            assert store.is_current()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            store.released.set()
            store.close()

"""``python -m bench.replay`` on the session broker and PostgreSQL, small: every measure is
there, the rebuilds applied every event of the log and the re-derivation matched them all. No
speed is asserted (BENCHMARKS.md has the figures)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import markdown
from bench.replay import run_replay
from streams.dev.kafka import EmbeddedKafka
from tests.postgres import postgres_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def replay_databases(server: str) -> set[str]:
    admin = create_engine(make_url(server).set(database="postgres"))
    try:
        with admin.connect() as connection:
            names = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'replay_%'")
            )
            return {name for (name,) in names}
    finally:
        admin.dispose()


def test_the_replay_bench_rebuilds_and_verifies_the_whole_log(
    kafka: EmbeddedKafka,
    postgres_server: str,  # noqa: F811 (the fixture)
) -> None:
    before = replay_databases(postgres_server)
    result = run_replay(300, repeat=2, bootstrap=kafka.bootstrap, postgres_server=postgres_server)
    assert replay_databases(postgres_server) == before, "each run drops the database it made"

    events = 300 * 6  # received → admitted → generating → generated → publishing → published
    assert result["lifecycle_events"] == events
    assert result["read_only"]["events"] == events
    for database in ("sqlite", "sqlite_one_process", "postgresql"):
        assert result[database]["events"] == events, database
        assert result[database]["requests"] == 300, database
        assert len(result[database]["runs"]) == 2
    for verify in ("verify", "verify_one_process"):
        assert result[verify]["recorded"] == events
        assert result[verify]["matched"] == events
        assert result[verify]["differences"] == 0
    assert result["processes"] >= 1

    result["command"] = "python -m bench.replay --requests 300 --repeat 2"
    rendered = markdown.replay_section(result)
    assert f"into a fresh PostgreSQL database, {result['processes']} processes" in rendered
    assert f"`talkstream replay --verify`, {result['processes']} processes" in rendered
    assert f"into a fresh SQLite file, {result['processes']} processes" in rendered
    assert (
        "`talkstream replay --processes 1` into a fresh SQLite file (in one process) | 1,800 |"
        in rendered
    )
    assert f"Machine: {result['machine']['nproc']} CPUs" in rendered  # the rate is absolute

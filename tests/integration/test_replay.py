"""Audit replay on the real broker: requests run through the whole system, then the log
rebuilds the projection (SQLite and PostgreSQL), re-derives every decision, and serves the
documented consumer. Nothing a replay does reaches Kafka, OpenAI or Talkable."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from click.testing import CliRunner, Result

from models.events import DeadLetter, GapProbe
from streams.codecs import encode
from streams.dev.kafka import EmbeddedKafka
from streams.kafka_options import start_reading, stop_consumer
from streams.ops.commands import register
from streams.ops.replay import LogReader
from streams.projection.store import ProjectionStore
from streams.projection.tables import TransitionRow
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.conftest import System, create_topic, now_s, produce, read_topic
from tests.postgres import fresh_postgres_database, postgres_server  # noqa: F401  (fixture)
from tests.projection_support import Log, snapshot
from tests.support import seed_params, usage, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BAD_OPENAI_KEY = "sk-revoked-replay-4040"


def _group() -> click.Group:
    group = click.Group("talkstream")
    register(group)
    return group


def talkstream(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(_group(), list(args), env=env, catch_exceptions=False)


def topic_sizes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """How many records each topic holds (the sum of its partitions' end offsets)."""

    async def size(topic: str) -> int:
        async with LogReader(Settings(kafka_bootstrap=bootstrap), topic) as reader:
            return sum(end for _, end in reader.bounds.values())

    async def sizes() -> dict[str, int]:
        return {topic: await size(topic) for topic in topics}

    return asyncio.run(sizes())


def topic_sizes_by_partition(bootstrap: str, topic: str) -> list[int]:
    async def sizes() -> list[int]:
        async with LogReader(Settings(kafka_bootstrap=bootstrap), topic) as reader:
            return [end - first for first, end in reader.bounds.values()]

    return asyncio.run(sizes())


async def write_log(
    bootstrap: str, settings: Settings, messages: Sequence[Any], events: Sequence[Any]
) -> None:
    """The [requests] messages by person, then the [lifecycle] events by request id, each
    acknowledged before the next (in order within each partition)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(
                settings.topic("requests"), encode(message), key=message.person.encode()
            )
        for event in events:
            await producer.send_and_wait(
                settings.topic("lifecycle"), encode(event), key=event.request_id.encode()
            )
    finally:
        await producer.stop()


def post_all(system: System, bodies: list[dict[str, Any]]) -> list[str]:
    ids = []
    for body in bodies:
        status, answer = system.post(body)
        assert status == 202, answer
        ids.append(answer["request_id"])
    return ids


class Traffic:
    """What ran through the system: two phases, with a point in time between them."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.lifecycle = f"{system.app_id}-lifecycle"
        now = now_s()
        system.openai("POST", "/_control", {"unauthorized_keys": [BAD_OPENAI_KEY]})
        duplicate = seed_params("dup@example.com", usage_limit=usage(5, now=now))
        cut = seed_params("bob@example.com", site="other-site")
        cut["openai"]["max_tokens"] = "3"  # its text is cut at the cap, and published so
        self.first = post_all(
            system,
            [
                seed_params("ada@example.com", usage_limit=usage(2, now=now)),
                seed_params("ada@example.com", content="again", usage_limit=usage(2, now=now)),
                seed_params("ada@example.com", content="third", usage_limit=usage(2, now=now)),
                cut,
                seed_params("skip@example.com", trigger="no"),
                seed_params("revoked@example.com", openai_key=BAD_OPENAI_KEY),
                duplicate,
            ],
        )
        self.cut = self.first[3]
        system.post(duplicate)  # Talkable's retry: a rejected duplicate of the last one
        self.wait_projected(len(self.first) + 1)
        self.first_states = Counter(row.state for row in system.projection.requests())
        self.cut_ms = int(time.time() * 1000)
        wait_until(lambda: int(time.time() * 1000) > self.cut_ms, 5, 0.001, what="the clock")
        self.second = post_all(system, [seed_params("late@example.com")])
        self.wait_projected(len(self.first) + 2)

    def wait_projected(self, requests: int) -> None:
        """Every request terminal and the live projector caught up with the topic."""

        def caught_up() -> bool:
            rows = self.system.projection.requests()
            if len(rows) < requests or not all(row.terminal for row in rows):
                return False
            size = topic_sizes(self.system.kafka.bootstrap, [self.lifecycle])[self.lifecycle]
            return self.system.projection.counts()[1] == size

        wait_until(caught_up, 120, 0.2, what=f"{requests} terminal requests, projected")


@pytest.fixture(scope="module")
def traffic(system: System) -> Traffic:
    return Traffic(system)


def replay_into(system: System, url: str, *extra: str) -> Result:
    result = talkstream(system.env, "replay", "--database-url", url, *extra)
    assert result.exit_code == 0, result.output
    return result


def _two_partitions(kafka: EmbeddedKafka, prefix: str) -> tuple[Settings, Log]:
    """Settings of an app id of its own (``prefix`` and a random tail) whose topics have two
    partitions, created, and a log to write them."""
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap, app_id=f"{prefix}{uuid.uuid4().hex[:8]}", partitions=2
    )
    asyncio.run(ensure_topics(settings))
    return settings, Log(partitions=2)


def test_replay_rebuilds_the_live_projection_and_touches_nothing(
    traffic: Traffic, system: System, tmp_path: Path
):
    topics = [
        f"{system.app_id}-{t}"
        for t in ("requests", "generate", "completions", "lifecycle", "deadletter")
    ]
    before = topic_sizes(system.kafka.bootstrap, topics)
    calls = (len(system.openai("GET", "/_calls")), len(system.talkable("GET", "/_calls")))

    url = f"sqlite:///{tmp_path / 'replayed.sqlite3'}"
    result = replay_into(system, url)
    assert re.search(
        rf"replayed \d+ lifecycle events from {traffic.lifecycle} \(4 partitions\)", result.stdout
    )
    replayed = ProjectionStore.from_url(url)
    try:
        assert snapshot(replayed) == snapshot(system.projection)
        states = Counter(row.state for row in replayed.requests())
        assert states == {
            "published": 5,
            "limited": 1,
            "skipped": 1,
            "generation_failed": 1,
            "rejected_duplicate": 1,
        }
        # the live projection and the rebuild agree on every column: whose text was cut too
        assert [r.request_id for r in replayed.requests() if r.truncated] == [traffic.cut]
        # and where Talkable holds each published request's event (none is the campaign's)
        assert {r.request_id: r.event_number for r in replayed.requests() if r.event_number} == {
            r.request_id: f"generate_text_complete-{r.request_id}"
            for r in replayed.requests()
            if r.state == "published"
        }
    finally:
        replayed.close()

    assert topic_sizes(system.kafka.bootstrap, topics) == before  # nothing produced
    assert (len(system.openai("GET", "/_calls")), len(system.talkable("GET", "/_calls"))) == calls


def test_replaying_twice_gives_identical_tables(traffic: Traffic, system: System, tmp_path: Path):
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("one.sqlite3", "two.sqlite3"))
    replay_into(system, first, "--processes", "1")  # all in this process
    replay_into(system, second, "--processes", "3")  # three shares, two of them in helpers
    left = sorted(p.name for p in tmp_path.iterdir())
    assert {name.split(".")[0] for name in left} == {"one", "two"}, left  # no file beside them
    refused = talkstream(system.env, "replay", "--database-url", first)
    assert refused.exit_code == 1 and "already holds a projection" in refused.output
    misused = talkstream(system.env, "replay", "--database-url", first, "--processes", "0")
    assert misused.exit_code == 2 and "--processes" in misused.output
    replay_into(system, first, "--force")  # not empty before: rebuilt in this process
    a, b = ProjectionStore.from_url(first), ProjectionStore.from_url(second)
    try:
        assert snapshot(a) == snapshot(b) == snapshot(system.projection)
        assert snapshot(a)[1]  # not trivially equal
    finally:
        a.close()
        b.close()


def test_a_rebuild_another_process_writes_into_too_says_so_in_one_line(
    traffic: Traffic, system: System, tmp_path: Path
):
    """``replay --force`` into the projection a running worker's projector writes (which fills
    it again from the log once emptied under it): a row that process wrote first was a
    UniqueViolation traceback; now one line, saying what to do. The other writer here: a
    trigger that writes each transition's source just before the replay does."""
    path = tmp_path / "raced.sqlite3"
    url = f"sqlite:///{path}"
    ProjectionStore.from_url(url).close()  # migrated and empty
    columns = [c.name for c in TransitionRow.__table__.columns if c.name != "id"]
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(
            f"CREATE TRIGGER other_writer BEFORE INSERT ON transitions BEGIN "
            f"INSERT INTO transitions ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'NEW.{c}' for c in columns)}); END"
        )
        connection.commit()
    result = talkstream(system.env, "replay", "--database-url", url, "--processes", "1")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (  # after the progress line
        f"Error: another process wrote into {url} during the rebuild (a worker's projector?): "
        "stop every worker and projector writing to it, then run again"
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_request_in_two_shares_is_rebuilt_in_one_process(
    kafka: EmbeddedKafka, tmp_path: Path, database: str, request: pytest.FixtureRequest
):
    """A request whose events are in two partitions (the topic's partitions were added to while
    it was in flight): the shares rebuilt beside each other cannot be joined (the second write
    of its row is refused, by SQLite as by PostgreSQL); the replay starts again in one process
    and gives the tables the log gives."""
    settings, log = _two_partitions(kafka, "tsplit")
    app_id = settings.app_id
    for n in range(6):
        r = log.received(f"r-{n}", email=f"p{n}@example.com", limit=2)
        log.generated(r, at_ms=r.at_ms + 500)
        log.published(r, at_ms=r.at_ms + 700)
    moved = log.records[-1].event.request_id  # its last event, on the other partition

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            for s in log.records:
                partition = 1 - s.partition if s is log.records[-1] else s.partition
                await producer.send_and_wait(
                    settings.topic("lifecycle"), encode(s.event), partition=partition
                )
        finally:
            await producer.stop()

    asyncio.run(produce())
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app_id}
    if database == "sqlite":
        urls = {n: f"sqlite:///{tmp_path / f'{n}.sqlite3'}" for n in ("1", "2")}
    else:
        server = request.getfixturevalue("postgres_server")
        databases = contextlib.ExitStack()
        request.addfinalizer(databases.close)
        urls = {
            n: databases.enter_context(contextlib.contextmanager(fresh_postgres_database)(server))
            for n in ("1", "2")
        }
    outputs = {}
    for n, url in urls.items():
        result = talkstream(env, "replay", "--database-url", url, "--processes", n)
        assert result.exit_code == 0, result.output
        outputs[n] = result.stdout
    assert "rebuilt again in one process" in outputs["2"]
    assert "rebuilt again" not in outputs["1"]
    alone, beside = (ProjectionStore.from_url(url) for url in urls.values())
    try:
        ours, theirs = snapshot(beside), snapshot(alone)
        assert ours[1] == theirs[1]  # every transition, from both partitions
        # the moved request's row depends on the order its two partitions were read in (as the
        # live projector's would); the other requests' rows are the log's
        assert [r for r in ours[0] if r["request_id"] != moved] == [
            r for r in theirs[0] if r["request_id"] != moved
        ]
        assert beside.counts() == (6, len(log.records))
        assert len(beside.transitions(moved)) == 6  # from both partitions
    finally:
        alone.close()
        beside.close()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_replayed_projection_says_where_it_is_built_to_and_a_projector_goes_on_from_there(
    kafka: EmbeddedKafka, tmp_path: Path, processes: str
):
    """``replay`` wrote no ``projected_offsets`` (the live projector records them with each
    batch): the projection could not say up to which offsets it was built, and a projector
    started on it resumed each partition after the last event it held, before the records
    there that did not decode, and dead-lettered them again. A rebuild records the end of
    every partition it read (in one process, or in shares beside each other); a projector
    started on it letters nothing again and skips nothing written since."""
    from tests.integration.test_projector import (
        _caught_up,
        _on,
        _produce,
        _produce_poison,
        _project_until,
    )

    settings, log = _two_partitions(kafka, "tmarks")
    topic = settings.topic("lifecycle")
    for n in range(4):
        log.full(f"r-{n}", email=f"p{n}@example.com")
    assert {r.partition for r in log.records} == {0, 1}
    asyncio.run(_produce(kafka.bootstrap, _on(topic, log.records)))
    asyncio.run(_produce_poison(kafka.bootstrap, topic, partition=0, count=2))  # its last two
    ends = dict(enumerate(topic_sizes_by_partition(kafka.bootstrap, topic)))

    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": settings.app_id}
    url = f"sqlite:///{tmp_path / 'replayed.sqlite3'}"
    result = talkstream(env, "replay", "--database-url", url, "--processes", processes)
    assert result.exit_code == 0, result.output
    assert "2 records did not decode" in result.output
    store = ProjectionStore.from_url(url)
    try:
        with store.engine.connect() as connection:
            marks = connection.exec_driver_sql(
                "SELECT topic, partition, next_offset FROM projected_offsets"
            ).all()
        assert sorted(marks) == [(topic, p, end) for p, end in sorted(ends.items())]
        assert {p: store.next_offset(topic, p) for p in ends} == ends

        # what is written after the replay, behind the records that did not decode
        held = store.counts()[1]
        later = log.full("later", email="later@example.com")
        added = _on(topic, [r for r in log.records if r.event.request_id == later.request_id])
        asyncio.run(_produce(kafka.bootstrap, added))
        letters = asyncio.run(
            _project_until(
                kafka.bootstrap,
                topic,
                store,
                lambda p: store.counts()[1] >= held + len(added) and _caught_up(p),
            )
        )
        assert letters.sent == []  # the records that did not decode, not lettered again
        assert store.counts()[1] == held + len(added)
        assert store.request(later.request_id).state == "published"  # type: ignore[union-attr]
    finally:
        store.close()


def test_replay_into_postgresql_gives_the_same_tables(
    traffic: Traffic,
    system: System,
    postgres_server: str,  # noqa: F811
):
    for processes in ("1", "3"):  # in this process with a writer thread; three, side by side
        for url in fresh_postgres_database(postgres_server):
            replay_into(system, url, "--processes", processes)
            replayed = ProjectionStore.from_url(url)
            try:
                assert snapshot(replayed) == snapshot(system.projection)
            finally:
                replayed.close()


def test_replay_until_stops_at_a_point_in_time(traffic: Traffic, system: System, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cut.sqlite3'}"
    cut = str(traffic.cut_ms)  # epoch milliseconds; ISO-8601 works too
    result = replay_into(system, url, "--until", cut)
    assert "(Kafka record time)" in result.stdout
    replayed = ProjectionStore.from_url(url)
    try:
        ids = {row.request_id for row in replayed.requests()}
        assert set(traffic.first) <= ids
        assert not ids & set(traffic.second)
        assert Counter(row.state for row in replayed.requests()) == traffic.first_states
    finally:
        replayed.close()


def test_verify_re_derives_every_recorded_decision(traffic: Traffic, system: System):
    # a worker's GapProbe in the log (its nudge to its own ledger): verify passes over it
    probe = GapProbe(partition=1, expected=0, taken=0, at_ms=int(time.time() * 1000))
    produce(system.kafka.bootstrap, f"{system.app_id}-requests", None, encode(probe))
    counts = {}
    for processes in ("1", "3"):  # all here; three shares of the partitions re-derived beside
        result = talkstream(system.env, "replay", "--verify", "--processes", processes)
        assert result.exit_code == 0, result.output
        assert "no differences" in result.stdout
        assert "did not decode" not in result.stdout and "skipped" not in result.stdout
        found = re.search(
            r"re-derived (\d+) .* from (\d+) messages.*; (\d+) recorded", result.stdout
        )
        derived, messages, recorded = (int(n) for n in found.groups())
        assert derived == recorded > 0
        counts[processes] = (derived, messages, recorded)
    assert counts["1"] == counts["3"]


def test_audit_shows_a_real_requests_history_from_the_projection(traffic: Traffic, system: System):
    result = talkstream(system.env, "audit", "--request-id", traffic.first[5])  # revoked key
    assert result.exit_code == 0, result.output
    assert f"source: SQL projection sqlite:///{system.database}" in result.stdout
    assert "state generation_failed (terminal)" in result.stdout
    assert "AuthenticationError" in result.stdout or "401" in result.stdout


def documented_consumer_counts(bootstrap: str, topic: str) -> dict[str, int]:
    """What docs/consumers.md's example prints, run as it is, on ``topic``."""
    doc = (ROOT / "docs" / "consumers.md").read_text()
    code = doc.split("### Example: count the states in the log", 1)[1]
    code = code.split("```python\n", 1)[1].split("```", 1)[0]
    env = {
        **os.environ,
        "TALKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "TALKSTREAM_LIFECYCLE_TOPIC": topic,
    }
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    printed = dict(line.split() for line in run.stdout.splitlines())
    return {state: int(n) for state, n in printed.items()}


def test_the_documented_consumer_counts_what_the_projection_shows(traffic: Traffic, system: System):
    expected = Counter(t.state for t in system.projection.all_transitions())
    assert documented_consumer_counts(system.kafka.bootstrap, traffic.lifecycle) == expected


def test_the_documented_consumer_passes_over_a_record_that_is_not_a_lifecycle_event(
    kafka: EmbeddedKafka,
):
    """docs/consumers.md's example read every value as a lifecycle event: a record that is not
    one (not JSON, another JSON shape, no value), which the projector dead-letters and passes
    over, ended it with a KeyError (or a JSONDecodeError, a TypeError) and counted nothing.
    It passes over them, and counts the events around them."""
    from tests.integration.test_projector import _on, _produce

    settings, log = _two_partitions(kafka, "tconsumer")
    topic = settings.topic("lifecycle")
    log.full("r-before", email="ada@example.com")
    first = len(log.records)
    log.full("r-after", email="bob@example.com")
    records = _on(topic, log.records)
    asyncio.run(_produce(kafka.bootstrap, records[:first]))
    others = [
        b"not a lifecycle event",
        b"\xff\xfe",
        b"[1, 2]",
        b'"RequestReceived"',
        json.dumps({"request_id": "r-x", "kind": "request_received"}).encode(),
        None,
    ]
    for value in others:
        produce(kafka.bootstrap, topic, b"r-before", value)
    asyncio.run(_produce(kafka.bootstrap, records[first:]))
    expected = Counter(r.event.state.value for r in records)
    assert documented_consumer_counts(kafka.bootstrap, topic) == expected


def _forged(kafka: EmbeddedKafka, forge: Any) -> tuple[dict[str, str], list[Any]]:
    """A log whose [requests] are real decisions and whose [lifecycle] is what ``forge``
    makes of the events the rules derived (``forge(events, others)``: the four of the
    ``r-ok`` and ``r-limited`` webhooks, then those of six other people); the environment
    to verify it, and the events."""
    settings, log = _two_partitions(kafka, "tverify")
    app_id = settings.app_id
    r = log.received("r-ok", limit=1)
    log.generated(r, at_ms=r.at_ms + 500)
    log.published(r, at_ms=r.at_ms + 700)
    log.received("r-limited", limit=1, at_ms=r.at_ms + 1000)
    events = [s.event for s in log.records]
    for n in range(6):  # more people: their messages land on both partitions
        log.received(f"r-other-{n}", email=f"other{n}@example.com", at_ms=r.at_ms + 2000 + n)
    others = [s.event for s in log.records[len(events) :]]
    recorded = forge(events, others)

    asyncio.run(write_log(kafka.bootstrap, settings, log.messages, recorded))
    assert all(
        end > 0 for end in topic_sizes_by_partition(kafka.bootstrap, settings.topic("requests"))
    )
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app_id}
    return env, events


def _verified_alone_and_beside(env: dict[str, str]) -> str:
    """``--verify`` in one process and in two; the same report (but for the seconds it took)."""
    alone, beside = (talkstream(env, "replay", "--verify", "--processes", n) for n in ("1", "2"))
    assert alone.exit_code == beside.exit_code == 1
    assert re.sub(r"\(\d+\.\ds\)", "", alone.stdout) == re.sub(r"\(\d+\.\ds\)", "", beside.stdout)
    return beside.stdout


def test_verify_reports_every_decision_the_log_does_not_explain(
    kafka: EmbeddedKafka, tmp_path: Path
):
    """A forged log: one transition altered, one dropped, one invented, one repeated."""

    def forge(events: list[Any], others: list[Any]) -> list[Any]:
        altered = events[3].model_copy(update={"cause": "text generated (edited)"})
        forged = events[0].model_copy(update={"request_id": "r-ghost"})
        return [*events[:3], altered, *events[4:-1], events[0], forged, *others]  # one dropped

    env, events = _forged(kafka, forge)
    out = _verified_alone_and_beside(env)
    assert "3 differences:" in out and "1 repeated" in out
    assert (
        "changed    r-ok TextGenerated state=generated attempt=1: cause: derived='text "
        "generated' recorded='text generated (edited)'" in out
    )
    assert f"missing    r-limited {events[-1].type} state=limited" in out
    assert "unexpected r-ghost RequestReceived state=received" in out

    # the first difference printed, the others counted, every one in the file
    every = tmp_path / "differences.txt"
    capped = talkstream(env, "replay", "--verify", "--show", "1", "--differences-file", str(every))
    assert capped.exit_code == 1
    printed = capped.stdout.splitlines()
    assert (
        printed[-3] == f"3 differences: 1 missing, 1 unexpected, 1 changed (every one in {every})"
    )
    written = every.read_text().splitlines()
    assert len(written) == 3 and printed[-2] == f"  {written[0]}"
    assert printed[-1].startswith("  ... and 2 more differences (--show 0 prints every one")
    assert sorted(line.split()[0] for line in written) == ["changed", "missing", "unexpected"]


def test_verify_settles_in_its_helpers_a_log_that_only_lacks_or_repeats_events(
    kafka: EmbeddedKafka,
):
    """Every recorded event byte for byte a derived one (one dropped, one repeated): the
    helpers' matches by digest settle it, and report what one process reports."""

    def forge(events: list[Any], others: list[Any]) -> list[Any]:
        return [*events[:-1], events[2], *others[:-1]]

    env, events = _forged(kafka, forge)
    out = _verified_alone_and_beside(env)
    assert "2 differences:" in out and "1 repeated" in out
    assert f"missing    r-limited {events[-1].type} state=limited" in out
    assert "missing    r-other-5 " in out
    assert "changed" not in out and "unexpected" not in out


def test_a_reader_knows_its_partitions_offsets_at_start_and_fetches_none_before_it_seeks(
    kafka: EmbeddedKafka,
):
    """``start_reading`` (replay's and the console's readers) starts a consumer with its
    partitions' metadata: their offsets are answered at once, where a consumer started
    without it fails its first lookup and waits out its retry back-off (ten minutes here:
    this test then times out); and nothing is fetched until the reader assigns and seeks."""
    topic = f"reading-{uuid.uuid4().hex[:8]}"
    parts = [TopicPartition(topic, p) for p in range(3)]

    async def offsets_then_records() -> tuple[dict[TopicPartition, int], set[Any], int]:
        await create_topic(kafka.bootstrap, topic, 3)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(9):
                await producer.send_and_wait(topic, b"%d" % i, partition=i % 3)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=None, retry_backoff_ms=600_000
        )
        await start_reading(consumer, parts)
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(parts), timeout=60)
            paused = consumer.paused()
            consumer.assign(parts)
            for tp in parts:
                consumer.seek(tp, 0)
            read = 0
            while read < sum(ends.values()):
                fetched = await consumer.getmany(timeout_ms=1000)
                read += sum(map(len, fetched.values()))
            return ends, paused, read
        finally:
            await stop_consumer(consumer)

    ends, paused, read = asyncio.run(offsets_then_records())
    assert ends == {tp: 3 for tp in parts}
    assert paused == set(parts)  # nothing fetched before the seek
    assert read == 9


def test_redrive_of_an_app_without_a_dead_letter_topic_says_so_as_replay_does(
    kafka: EmbeddedKafka,
):
    """redrive said "0 dead letters examined, 0 to redrive" and exited 0 for an app whose
    topics do not exist (a mistyped TALKSTREAM_APP_ID), where replay named the missing topic."""
    app = f"nosuch{uuid.uuid4().hex[:6]}"
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app}

    redriven = CliRunner().invoke(_group(), ["redrive", "--dry-run"], env=env)
    replayed = CliRunner().invoke(_group(), ["replay", "--verify"], env=env)

    assert (redriven.exit_code, redriven.output) == (
        1,
        f"Error: topic {app}-deadletter does not exist on {kafka.bootstrap}\n",
    )
    assert replayed.exit_code == 1
    assert f"Error: topic {app}-requests does not exist on {kafka.bootstrap}" in replayed.output


def test_a_letter_redriven_after_one_not_selected_is_not_redriven_again(kafka: EmbeddedKafka):
    """A run moves the redrive group past the letters it redrove, but not past one its filters
    did not select: the letters it redrove after that one were offered again by every later
    run. Parked work is guarded (the projection, the attempt), but a message that did not
    decode went back to its topic at each run, and the copies dead-lettered again with it:
    under make dev, two poison records of [requests] behind a letter of [lifecycle] were 2,
    then 4, then 8 records sent back by three runs of `talkstream redrive --topic requests`.
    (Here the records decode now, as after a deploy that reads them: a record that still does
    not decode is not sent back at all, and a run moves past its letter too.)"""
    from tests.unit.domain_builders import Ledger, received

    app = f"again{uuid.uuid4().hex[:6]}"
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app}
    for topic in ("deadletter", "requests"):
        asyncio.run(create_topic(kafka.bootstrap, f"{app}-{topic}", 1))

    def letter(topic: str, offset: int, value: bytes) -> bytes:
        return encode(
            DeadLetter(
                topic=f"{app}-{topic}",
                partition=0,
                offset=offset,
                reason="does not decode: value: Invalid JSON",
                key="site:ada@example.com",
                value_b64=base64.b64encode(value).decode(),
                at_ms=now_s() * 1000,
            )
        )

    request = received("req-1")
    readable, event = encode(request), encode(Ledger().send(request).events[0])
    produce(kafka.bootstrap, f"{app}-deadletter", b"k", letter("lifecycle", 3, event))
    produce(kafka.bootstrap, f"{app}-deadletter", b"k", letter("requests", 7, readable))
    produce(kafka.bootstrap, f"{app}-deadletter", b"k", letter("requests", 8, b"poison"))

    first = talkstream(env, "redrive", "--topic", "requests")
    again = talkstream(env, "redrive", "--topic", "requests")

    assert f"redriven: {app}-requests@0:7  " in first.output
    assert f"does not decode, not redriven: {app}-requests@0:8 (does not decode: " in first.output
    assert "1 redriven, 1 not selected, 0 unreadable, 1 that do not decode" in first.output
    assert again.output == "1 dead letters examined, 0 redriven, 1 not selected, 0 unreadable\n"
    assert [value for *_, value in read_topic(kafka.bootstrap, f"{app}-requests")] == [readable]
    # the letter not selected is still offered; --from-beginning reconsiders the one redriven
    offered = talkstream(env, "redrive", "--dry-run").output
    assert f"would redrive: {app}-lifecycle@0:3  " in offered
    reconsidered = talkstream(
        env, "redrive", "--dry-run", "--topic", "requests", "--from-beginning"
    )
    assert f"would redrive: {app}-requests@0:7  " in reconsidered.output


def parked_letter(app: str, request_id: str, at_ms: int) -> bytes:
    """The letter the ledger writes for a publication Talkable refused (its key sealed in the
    command)."""
    from tests.unit.domain_builders import Ledger, generated, publication_failed, received

    ledger = Ledger()
    ledger.send(received(request_id))
    ledger.send(generated(request_id))
    [given_up] = ledger.send(publication_failed(request_id)).dead_letters
    return encode(
        DeadLetter(
            topic=f"{app}-completions",
            partition=-1,
            offset=-1,
            reason="Unauthorized: Talkable answered 401",
            key=request_id,
            value_b64=base64.b64encode(encode(given_up.command)).decode(),
            request_id=request_id,
            at_ms=at_ms,
        )
    )


def test_a_redrive_of_one_request_that_finds_no_letter_of_it_says_so_and_fails(
    kafka: EmbeddedKafka,
):
    """`redrive --request-id` with an id one character off said "1 dead letters examined,
    0 redriven, 1 not selected" and exited 0: the operator took the request for redriven. A
    run asked for one request that redrives nothing of it names the id, says why that can be,
    and exits 1; so does asking again for one an earlier run redrove."""
    app = f"typo{uuid.uuid4().hex[:6]}"
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app}
    for topic in ("deadletter", "requests"):
        asyncio.run(create_topic(kafka.bootstrap, f"{app}-{topic}", 1))
    produce(
        kafka.bootstrap, f"{app}-deadletter", b"k", parked_letter(app, "5d0c1e", now_s() * 1000)
    )
    why = (
        "none the filters select carries that id (the id the ingress answered? `talkstream "
        "audit --request-id {id}` says whether it is parked), or an earlier run redrove it "
        "(--from-beginning reconsiders those)"
    )

    mistyped = talkstream(env, "redrive", "--dry-run", "--request-id", "5d0c1f")
    assert mistyped.exit_code == 1
    assert mistyped.output.splitlines()[-1] == (
        "Error: no dead letter of request 5d0c1f to redrive: " + why.format(id="5d0c1f")
    )
    assert "1 dead letters examined, 0 to redrive, 1 not selected" in mistyped.output

    redriven = talkstream(env, "redrive", "--request-id", "5d0c1e")
    assert redriven.exit_code == 0, redriven.output
    assert "redriven: 5d0c1e → the ledger" in redriven.output
    again = talkstream(env, "redrive", "--request-id", "5d0c1e")
    assert again.exit_code == 1
    assert again.output.splitlines()[-1] == (
        "Error: no dead letter of request 5d0c1e to redrive: " + why.format(id="5d0c1e")
    )
    # what selects nothing without naming one request stays a report, not a failure
    assert talkstream(env, "redrive", "--site", "nosuch").exit_code == 0


def test_redrive_reads_a_site_typed_in_another_case_as_the_projection_spells_it(
    kafka: EmbeddedKafka, tmp_path: Path
):
    """`redrive --site ACME-STORE` selected none of acme-store's letters ("0 to redrive, 1 not
    selected") where the console's dead-letter page takes a site in any case."""
    from sqlalchemy import text

    from tests.unit.domain_builders import SITE

    app = f"case{uuid.uuid4().hex[:6]}"
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app}
    for topic in ("deadletter", "requests"):
        asyncio.run(create_topic(kafka.bootstrap, f"{app}-{topic}", 1))
    produce(kafka.bootstrap, f"{app}-deadletter", b"k", parked_letter(app, "p1", now_s() * 1000))
    url = f"sqlite:///{tmp_path / 'projection.sqlite3'}"
    store = ProjectionStore.from_url(url)
    with store.engine.begin() as connection:  # the request, parked, as the projector wrote it
        connection.execute(
            text(
                "INSERT INTO requests (request_id, site, person, state, terminal,"
                " received_at_ms, updated_at_ms, attempts)"
                " VALUES ('p1', :site, :person, 'publish_failed', true, 1, 1, 1)"
            ),
            {"site": SITE, "person": f"{SITE}:alice@example.com"},
        )
        # a site the projection has, with nothing parked: selected, none of its letters
        # (a site it has not is refused: test_projection_cli)
        connection.execute(
            text(
                "INSERT INTO requests (request_id, site, person, state, terminal,"
                " received_at_ms, updated_at_ms, attempts)"
                " VALUES ('o1', 'other', 'other:bob@example.com', 'published', true, 1, 1, 1)"
            )
        )
    store.close()

    typed = talkstream(env, "redrive", "--dry-run", "--site", SITE.upper(), "--database-url", url)
    assert typed.exit_code == 0, typed.output
    assert f"would redrive: p1 → the ledger  site={SITE}  " in typed.output
    assert "1 to redrive, 0 not selected" in typed.output
    other = talkstream(env, "redrive", "--dry-run", "--site", "other", "--database-url", url)
    assert other.exit_code == 0, other.output
    assert "0 to redrive, 1 not selected" in other.output


def test_a_request_parked_past_the_ledgers_retention_is_not_redriven_and_the_run_says_why(
    kafka: EmbeddedKafka,
):
    """The ledger forgets a parked request 30 days after it was parked (the fingerprints'
    retention), and a redrive of it then changes nothing: redrive said "redriven: ... → the
    ledger", sent it, and the projection kept showing it parked, with no word of why."""
    from models.state import Policy

    app = f"old{uuid.uuid4().hex[:6]}"
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app}
    for topic in ("deadletter", "requests"):
        asyncio.run(create_topic(kafka.bootstrap, f"{app}-{topic}", 1))
    retention_ms = Policy().fingerprint_retention_ms
    now_ms = now_s() * 1000

    produce(
        kafka.bootstrap,
        f"{app}-deadletter",
        b"old",
        parked_letter(app, "old", now_ms - retention_ms - 60_000),
    )
    produce(
        kafka.bootstrap, f"{app}-deadletter", b"new", parked_letter(app, "new", now_ms - 60_000)
    )

    preview = talkstream(env, "redrive", "--dry-run").output
    out = talkstream(env, "redrive").output

    for run in (preview, out):
        assert "old → the ledger" not in run
        assert "new → the ledger" in run
        [line] = [line for line in run.splitlines() if line.startswith("too old to redrive: old ")]
        assert "parked 30 days ago" in line
        assert "the ledger has forgotten it" in line
        assert "send the webhook again" in line
    assert "1 too old to redrive" in out
    # only the request the ledger still holds went to it
    sent = [value for *_, value in read_topic(kafka.bootstrap, f"{app}-requests")]
    assert len(sent) == 1 and b'"request_id":"new"' in sent[0]


def test_an_interrupted_replay_says_what_it_left_and_a_forced_one_rebuilds_it(
    kafka: EmbeddedKafka, tmp_path: Path
):
    """Ctrl-C in the middle of a rebuild (the terminal signals the whole process group): the
    command says what the database now holds and how to finish; what it holds is each
    partition's events from the first on, none skipped; `--force` rebuilds it whole."""
    from bench.replay import produce as produce_log
    from bench.replay import synthetic_log

    settings = Settings(kafka_bootstrap=kafka.bootstrap, app_id=f"tint{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(settings))
    _, lifecycle = synthetic_log(30_000, now_s())  # seconds of work, whatever the machine
    asyncio.run(produce_log(settings, [], lifecycle))
    path = tmp_path / "cut.sqlite3"
    url = f"sqlite:///{path}"
    env = {
        **os.environ,
        "TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "TALKSTREAM_APP_ID": settings.app_id,
    }

    # The file's one write lock is the test's from before the replay starts (SQLite writers
    # wait for it, 60 s here, SQLITE_WRITER_WAIT_SECONDS): the test lets the replay's
    # transactions in and takes the lock back at the first commit it sees, keeping it once
    # lifecycle events are in. Held, the replay writes no other batch and cannot end: the
    # SIGINT is sent then, pending before a writer of it has the lock again, however slowly
    # this process is scheduled meanwhile (a starved test once saw the first batch, and the
    # replay had read the 30,000 events to the end before its SIGINT). It runs free only from
    # a release to the next commit the test sees.
    gate = sqlite3.connect(path, timeout=60, isolation_level=None)
    gate.execute("PRAGMA journal_mode=WAL")
    gate.execute("BEGIN IMMEDIATE")

    def version() -> int:
        # changes on this connection once another one has committed
        return int(gate.execute("PRAGMA data_version").fetchone()[0])

    def projected() -> int:
        try:
            return int(gate.execute("SELECT count(*) FROM transitions").fetchone()[0])
        except sqlite3.OperationalError:  # no table yet: the replay's migration comes first
            return 0

    replay = subprocess.Popen(
        [sys.executable, "-m", "streams", "replay", "--database-url", url],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        held = 0
        while held == 0:
            seen = version()
            gate.execute("COMMIT")  # a transaction of the replay's may go in
            wait_until(
                lambda seen=seen: version() != seen, 120, 0.005, what="the replay's next commit"
            )
            gate.execute("BEGIN IMMEDIATE")
            held = projected()
        assert held < len(lifecycle), "the replay wrote everything before the test held it"
        os.killpg(replay.pid, signal.SIGINT)  # pending before any writer of it has the lock
        gate.execute("COMMIT")
        _, err = replay.communicate(timeout=120)
    finally:
        gate.close()
        if replay.poll() is None:
            os.killpg(replay.pid, signal.SIGKILL)
            replay.wait()
    assert replay.returncode == 1
    said = " ".join(err.split())
    assert (
        f"replay interrupted: {url} holds the projection of each partition's lifecycle events "
        "up to where it stopped; run `talkstream replay --force` to rebuild it whole"
    ) in said, err
    with contextlib.closing(sqlite3.connect(path)) as db:
        shares = db.execute(
            'SELECT partition, count(*), min("offset"), max("offset") FROM transitions'
            " GROUP BY partition"
        ).fetchall()
    assert 0 < sum(n for _, n, _, _ in shares) < len(lifecycle), "stopped in the middle"
    assert all((low, high) == (0, n - 1) for _, n, low, high in shares), shares

    refused = CliRunner().invoke(_group(), ["replay", "--database-url", url], env=env)
    assert refused.exit_code == 1 and "already holds a projection" in refused.output
    replay_again = talkstream(env, "replay", "--force", "--database-url", url)
    assert replay_again.exit_code == 0, replay_again.output
    store = ProjectionStore.from_url(url)
    try:
        assert store.counts() == (30_000, len(lifecycle))
    finally:
        store.close()


def test_a_request_the_ledger_named_by_an_earlier_ones_id_is_a_row_of_its_own(
    kafka: EmbeddedKafka, tmp_path: Path
):
    """The ledger forgets a person not heard of for 30 days; the same params then are a new
    request under the id the earlier one had (decided as never heard of). The projection
    folded its events into the earlier request's row: those with the earlier's identity
    (received, admitted, generating) were dropped as re-emissions, its failure moved the
    published request to ``generation_failed``; ``audit`` showed one request ending a month
    after it arrived, ``stats`` one request, and ``replay --verify`` three "changed"
    decisions. The live projector and a rebuild now give each request a row of its own (the
    ledger's re-emission of a transition still counted once), and ``--verify`` finds nothing."""
    from tests.integration.test_projector import _project_until, holds

    day = 86_400_000
    settings, log = _two_partitions(kafka, "tagain")
    app_id = settings.app_id
    first = log.full("same-id", limit=5)
    log.full("other-id", email="bob@example.com", at_ms=first.at_ms + 1000)
    again = log.received("same-id", at_ms=first.at_ms + 32 * day, limit=5, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)
    events = [s.event for s in log.records]
    assert [e.request_id for e in events].count("same-id") == 10  # 6 and 4: one id
    received_again = next(e for e in events[6:] if e.type == "RequestReceived")
    recorded = [*events, received_again]  # the ledger emitted it twice (a crash)

    asyncio.run(write_log(kafka.bootstrap, settings, log.messages, recorded))
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app_id}

    live_url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    live = ProjectionStore.from_url(live_url)
    asyncio.run(_project_until(kafka.bootstrap, settings.topic("lifecycle"), live, holds(live, 16)))
    rebuilt_url = f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}"
    assert talkstream(env, "replay", "--database-url", rebuilt_url).exit_code == 0
    rebuilt = ProjectionStore.from_url(rebuilt_url)
    try:
        assert snapshot(rebuilt) == snapshot(live)
        rows = [(r.occurrence, r.state, r.received_at_ms) for r in live.occurrences("same-id")]
        assert rows == [
            (0, "published", first.at_ms),
            (1, "generation_failed", again.at_ms),
        ]
        assert [t.state for t in live.transitions("same-id", 1)] == [
            "received",
            "admitted",
            "generating",
            "generation_failed",
        ]
        assert live.counts() == (3, 16)
    finally:
        rebuilt.close()
        live.close()

    audit = talkstream(env, "audit", "--request-id", "same-id", "--database-url", live_url)
    assert audit.exit_code == 0, audit.output
    blocks = audit.stdout.split("\nrequest same-id")
    assert len(blocks) == 3, audit.stdout  # the source line, then two requests
    assert "state published (terminal)" in blocks[1] and "(1.000 s after arrival)" in blocks[1]
    assert blocks[2].startswith(" (request 2 of this id: the same params after the ledger")
    assert "state generation_failed (terminal)" in blocks[2]
    assert "(0.500 s after arrival)" in blocks[2]
    stats = talkstream(env, "stats", "--json", "--database-url", live_url)
    [acme] = [s for s in json.loads(stats.stdout)["sites"] if s["site"] == "acme"]
    assert acme["requests"] == 3
    assert (acme["by_state"]["published"], acme["by_state"]["generation_failed"]) == (2, 1)

    for processes in ("1", "2"):
        verified = talkstream(env, "replay", "--verify", "--processes", processes)
        assert verified.exit_code == 0, verified.stdout
        assert "no differences" in verified.stdout


def test_the_documented_consumer_counts_a_request_named_by_an_earlier_ones_id(
    kafka: EmbeddedKafka, tmp_path: Path
):
    """docs/consumers.md said (``request_id``, ``type``, ``state``, ``attempt``) identifies a
    transition, and its example counted distinct ones: the same params a month on, the
    person forgotten by the ledger, are a request of their own under the earlier one's id,
    whose received, admitted and generating share that identity with the earlier request's.
    The example dropped them as re-emissions (2 requests received, it printed 1), where the
    projection keeps both (``occurrence``); the ledger's own re-emission still counts once."""
    day = 86_400_000
    settings, log = _two_partitions(kafka, "tnamesake")
    app_id = settings.app_id
    first = log.full("same-id", limit=5)
    again = log.received("same-id", at_ms=first.at_ms + 32 * day, limit=5, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)
    events = [s.event for s in log.records]
    received_again = next(e for e in events[6:] if e.type == "RequestReceived")
    asyncio.run(write_log(kafka.bootstrap, settings, log.messages, [*events, received_again]))

    url = f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}"
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app_id}
    assert talkstream(env, "replay", "--database-url", url).exit_code == 0
    rebuilt = ProjectionStore.from_url(url)
    try:
        expected = Counter(t.state for t in rebuilt.all_transitions())
    finally:
        rebuilt.close()
    assert expected["received"] == 2 and sum(expected.values()) == len(events)
    assert documented_consumer_counts(kafka.bootstrap, settings.topic("lifecycle")) == expected


def test_a_request_whose_earlier_namesakes_end_was_lost_is_a_row_of_its_own_and_verify_says_so(
    kafka: EmbeddedKafka, tmp_path: Path
):
    """The earlier request's last transition never reached [lifecycle] (Kafka refused it: it
    went to the dead letters). The projection folded the same params a month later, under the
    same id, into that request's row, as the earlier was not ended there. The live projector
    and a rebuild now give each a row (the earlier one left where its projected events put it),
    and ``replay --verify`` names the one transition the log lacks, and nothing else."""
    from tests.integration.test_projector import _project_until

    day = 86_400_000
    settings, log = _two_partitions(kafka, "tlost")
    app_id = settings.app_id
    first = log.full("lost-end", limit=5)
    lost = log.records.pop().event
    assert (lost.request_id, lost.type) == ("lost-end", "CompletionPublished")
    again = log.received("lost-end", at_ms=first.at_ms + 32 * day, limit=5, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)

    ends: dict[int, int] = {}  # each [lifecycle] partition's end

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            for message in log.messages:
                await producer.send_and_wait(
                    settings.topic("requests"), encode(message), key=message.person.encode()
                )
            for s in log.records:
                sent = await producer.send_and_wait(
                    settings.topic("lifecycle"), encode(s.event), key=s.event.request_id.encode()
                )
                ends[sent.partition] = sent.offset + 1
        finally:
            await producer.stop()

    def read_to_the_end(_: object) -> bool:
        topic = settings.topic("lifecycle")
        return all((live.next_offset(topic, p) or 0) >= end for p, end in ends.items())

    asyncio.run(produce())
    env = {"TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap, "TALKSTREAM_APP_ID": app_id}
    live_url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    live = ProjectionStore.from_url(live_url)
    asyncio.run(_project_until(kafka.bootstrap, settings.topic("lifecycle"), live, read_to_the_end))
    rebuilt_url = f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}"
    assert talkstream(env, "replay", "--database-url", rebuilt_url).exit_code == 0
    rebuilt = ProjectionStore.from_url(rebuilt_url)
    try:
        assert snapshot(rebuilt) == snapshot(live)
        rows = [(r.occurrence, r.state, r.received_at_ms) for r in live.occurrences("lost-end")]
        assert rows == [(0, "publishing", first.at_ms), (1, "generation_failed", again.at_ms)]
        assert live.counts() == (2, 9)
    finally:
        rebuilt.close()
        live.close()

    verified = talkstream(env, "replay", "--verify")
    assert verified.exit_code != 0, verified.stdout
    found = [line.split() for line in verified.stdout.splitlines() if "lost-end" in line]
    assert found == [["missing", "lost-end", "CompletionPublished", "state=published", "attempt=1"]]

"""The projection store's contract, the same cases on SQLite and on PostgreSQL (a real server:
``scripts/postgres.sh`` starts one when ``TALKSTREAM_TEST_POSTGRES_URL`` is not set)."""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from models.events import LifecycleEvent, PublicationAttemptFailed, RedriveRequested
from streams.codecs import decode
from streams.errors import ConfigError
from streams.ops.replay import _Applier, _conflict
from streams.projection import migrate
from streams.projection.engine import SQLITE_WRITER_WAIT_SECONDS
from streams.projection.rows import TRANSITION_COLUMNS, Sourced, Writes, fold, transition_row
from streams.projection.store import ProjectionBehind, ProjectionStore
from streams.projection.tables import Base
from tests.postgres import (  # noqa: F401  (fixtures)
    database_url,
    fresh_postgres_database,
    postgres_server,
)
from tests.projection_support import (
    LONG_DUPLICATE,
    LONG_ERROR,
    LONG_MODEL,
    LONG_PERSON,
    LONG_SITE,
    T0_MS,
    TOPIC,
    Log,
    mixed_log,
    snapshot,
    stored_requests,
    too_long_log,
)

V1_LIFECYCLE = Path(__file__).resolve().parents[1] / "fixtures" / "v1" / "lifecycle.json"


@pytest.fixture
def store(database_url: str):  # noqa: F811
    opened = ProjectionStore.from_url(database_url)
    yield opened
    opened.close()


def written_at(
    url: str, log: Log, revision: str, *, without: str, table: str = "requests"
) -> dict[str, dict[str, object]]:
    """The projection of ``log`` as a projector of ``revision`` wrote it (its tables, no
    ``without`` column in ``table``), and the rows of its requests as this version folds
    them."""
    engine = create_engine(url)
    try:
        migrate.migrate_to(engine, revision)
        requests: dict[str, dict[str, object]] = {}
        for record in log.records:
            fold(requests, record.event)
        with engine.begin() as connection:
            tables = MetaData()
            old = Table("requests", tables, autoload_with=connection)
            assert without not in Table(table, tables, autoload_with=connection).c
            connection.execute(
                old.insert(), [{c.name: r[c.name] for c in old.c} for r in requests.values()]
            )
            transitions = Table("transitions", tables, autoload_with=connection)
            connection.execute(
                transitions.insert(),
                [  # the columns its tables have
                    {
                        name: value
                        for name, value in zip(TRANSITION_COLUMNS, transition_row(r), strict=True)
                        if name in transitions.c
                    }
                    for r in log.records
                ],
            )
    finally:
        engine.dispose()
    return requests


def test_a_published_request_shows_its_state_times_model_and_tokens(store: ProjectionStore):
    log = Log()
    log.full("r1", at_ms=T0_MS, latency_ms=700, limit=3)
    assert store.apply(log.records) == 6

    row = store.request("r1")
    assert row is not None
    assert (row.site, row.person, row.state, row.terminal) == (
        "acme",
        "acme:ada@example.com",
        "published",
        True,
    )
    assert row.received_at_ms == row.admitted_at_ms == row.generating_at_ms == T0_MS
    assert row.generated_at_ms == row.publishing_at_ms == T0_MS + 700
    assert row.terminal_at_ms == T0_MS + 900
    assert (row.model, row.prompt_tokens, row.completion_tokens) == ("gpt-4o-mini-2024", 12, 30)
    assert row.generation_latency_ms == 700
    assert (row.window_start, row.window_count) == (T0_MS // 1000, 1)
    assert row.attempts == 1 and row.error_class is None
    assert [t.state for t in store.transitions("r1")] == [
        "received",
        "admitted",
        "generating",
        "generated",
        "publishing",
        "published",
    ]


def test_a_value_longer_than_its_column_is_cut_to_it_and_its_batch_is_projected(
    store: ProjectionStore,
):
    """PostgreSQL refused a row with a value longer than its ``VARCHAR(n)`` column
    (``StringDataRightTruncation``), and the projector retried the batch forever, holding up
    every request behind it; SQLite kept the value whole. Each is cut to its column, ending
    with "…", on both, and the same when the log is read again, or rebuilt from."""
    log = too_long_log()
    assert store.apply(log.records) == len(log.records)

    def cut(value: str, length: int) -> str:
        return value[: length - 1] + "\u2026"

    site, person = cut(LONG_SITE, 200), cut(LONG_PERSON, 600)
    published, failed, duplicate = (store.request(r) for r in ("long-pub", "long-fail", "long-dup"))
    assert published is not None and failed is not None and duplicate is not None
    assert (published.site, published.person, published.state) == (site, person, "published")
    assert published.model == cut(LONG_MODEL, 200)
    assert (failed.state, failed.error_class) == ("generation_failed", cut(LONG_ERROR, 200))
    assert failed.error_message == "401 invalid key"  # TEXT: whole
    assert duplicate.duplicate_of == cut(LONG_DUPLICATE, 200)
    [failure] = [t for t in store.transitions("long-fail") if t.error_class is not None]
    assert failure.error_class == cut(LONG_ERROR, 200)
    assert {r.person for r in store.requests_of(person)} == {person}
    with store.engine.connect() as connection:
        ended = connection.execute(text("SELECT site, state, requests FROM ended_minutes"))
        assert sorted(ended) == [
            (site, "generation_failed", 1),
            (site, "published", 1),
        ]
    # found again by the values it was written with; a rebuild (``replay``) writes the same
    _same_again_and_rebuilt(store, log, snapshot(store))


def test_a_text_cut_at_max_tokens_is_said_on_its_request_and_in_what_stats_reads(
    store: ProjectionStore,
):
    """``truncated`` was on TextGenerated (lifecycle schema 5) but not in the projection: no
    `audit`, `stats` or console page could say a published text was cut short. A text not cut,
    and one whose event was written before schema 5 (it does not say), are not."""
    log = Log()
    log.full("cut", at_ms=T0_MS, truncated=True)
    log.full("whole", email="bob@example.com", at_ms=T0_MS + 1000)
    old = [
        decode(LifecycleEvent, json.dumps(e).encode()) for e in json.loads(V1_LIFECYCLE.read_text())
    ]
    assert store.apply(log.records + [Sourced("v1-lifecycle", 0, n, e) for n, e in enumerate(old)])

    said = {r["request_id"]: r["truncated"] for r in stored_requests(store)}
    assert said == {"cut": True, "whole": False} | {e.request_id: False for e in old}
    assert (store.request("cut").truncated, store.request("whole").truncated) == (True, False)
    assert sorted(row.truncated for row in store.stats_rows()) == [False] * 3 + [True]


def test_a_published_request_says_the_number_talkable_holds_its_event_under(
    store: ProjectionStore,
):
    """An analytics team joins a request with Talkable's event on the site and the event
    number, which a campaign may give: it was in no column. A published request's row says
    the number its CompletionPublished carries (lifecycle schema 8); one not published, one
    whose publication was reported before schema 8, and every request of an event written at
    v1 say NULL; a rebuild (``replay``) writes the same."""
    log = mixed_log()  # pub-1 under the campaign's number; retry-1 reported before schema 8
    log.full("pub-4", email="fay@example.com", at_ms=T0_MS + 7000)
    assert store.apply(log.records) == len(log.records)

    said = {r["request_id"]: r["event_number"] for r in stored_requests(store)}
    assert said == {
        "pub-1": "order-42-complete",
        "pub-2": "generate_text_complete-pub-2",
        "pub-3": "generate_text_complete-pub-3",
        "pub-4": "generate_text_complete-pub-4",
        "retry-1": None,
        "fail-1": None,
        "lim-1": None,
        "skip-1": None,
        "pub-3~pub-3/d2": None,  # a rejected duplicate: nothing published
    }
    row = store.request("pub-1")
    assert row is not None and row.event_number == "order-42-complete"
    _same_again_and_rebuilt(store, log, snapshot(store))

    old = [
        decode(LifecycleEvent, json.dumps(e).encode()) for e in json.loads(V1_LIFECYCLE.read_text())
    ]
    assert store.apply([Sourced("v1-lifecycle", 0, n, e) for n, e in enumerate(old)])
    said = {r["request_id"]: r["event_number"] for r in stored_requests(store)}
    assert old and {said[e.request_id] for e in old} == {None}


def test_a_projection_at_0008_is_migrated_with_no_event_numbers_until_it_is_rebuilt(
    database_url: str,  # noqa: F811
):
    """Migration 0009 on a projection a version before it wrote: its rows stay as they were,
    with no event number (their events are not read again); a request the projector applies
    from then on has its number, and a rebuild from the log (``replay --force``) gives every
    published request its own."""
    log = mixed_log()
    requests = written_at(database_url, log, "0008", without="event_number")

    store = ProjectionStore.from_url(database_url)  # a projector of this version, at its start
    try:
        assert store.is_current()
        before = stored_requests(store)
        assert before == sorted(
            (r | {"event_number": None} for r in requests.values()),
            key=lambda r: r["request_id"],
        )
        log.full("pub-later", email="fay@example.com", at_ms=T0_MS + 9000, event_number="o-9")
        assert store.apply(log.records) == 6  # the projector goes on from where it was
        numbered = {r["request_id"]: r["event_number"] for r in stored_requests(store)}
        assert {rid: n for rid, n in numbered.items() if n is not None} == {"pub-later": "o-9"}
        store.reset()  # `replay --force`
        assert store.apply(log.records) == len(log.records)
        assert {r.request_id: r.event_number for r in store.requests() if r.event_number} == {
            "pub-1": "order-42-complete",
            "pub-2": "generate_text_complete-pub-2",
            "pub-3": "generate_text_complete-pub-3",
            "pub-later": "o-9",
        }
    finally:
        store.close()


def _failed_under_a_taken_number(log: Log) -> None:
    """``pub-again``: the campaign gives it pub-1's number, which Talkable holds pub-1's event
    under: its publication fails (DuplicateEventNumber), publish_failed."""
    again = log.received(
        "pub-again", email="fay@example.com", at_ms=T0_MS + 7000, event_number="order-42-complete"
    )
    log.generated(again, at_ms=T0_MS + 7500)
    log.send(
        PublicationAttemptFailed(
            request_id="pub-again", person=again.person, attempt=1, at_ms=T0_MS + 8000,
            error_class="DuplicateEventNumber",
            error_message="Talkable answered 400 Duplicate entity: ...",
        )
    )  # fmt: skip


# the Talkable event numbers of mixed_log's publications' transitions, and pub-again's
PUBLICATION_NUMBERS = [
    ("pub-1", "PublicationStarted", "order-42-complete"),
    ("pub-1", "CompletionPublished", "order-42-complete"),
    # attempted (the ledger derives it), its landing reported before schema 8 (no number)
    ("retry-1", "PublicationStarted", "generate_text_complete-retry-1"),
    ("pub-2", "PublicationStarted", "generate_text_complete-pub-2"),
    ("pub-2", "CompletionPublished", "generate_text_complete-pub-2"),
    ("pub-3", "PublicationStarted", "generate_text_complete-pub-3"),
    ("pub-3", "CompletionPublished", "generate_text_complete-pub-3"),
    ("pub-again", "PublicationStarted", "order-42-complete"),
    ("pub-again", "PublicationFailed", "order-42-complete"),
]


def test_each_publication_transition_says_the_talkable_event_it_attempted_or_landed_under(
    store: ProjectionStore,
):
    """An analytics team could not join a failed publication with the Talkable event it
    attempted: no column said its number (``requests.event_number`` is where a published text
    landed). A PublicationStarted or PublicationFailed transition says the number its attempt
    writes under (lifecycle schema 9), a CompletionPublished the one it landed under (schema
    8): ``transitions.event_number`` (migration 0010). No other transition says one, nor does
    an event written at v1; the request's row keeps only where a text landed; a rebuild
    (``replay``) writes the same."""
    log = mixed_log()
    _failed_under_a_taken_number(log)
    assert store.apply(log.records) == len(log.records)

    numbered = [(t.request_id, t.type, t.event_number) for t in store.all_transitions()]
    assert sorted(n for n in numbered if n[2] is not None) == sorted(PUBLICATION_NUMBERS)
    steps = store.transitions("pub-again")  # (audit's read of them)
    assert [(t.type, t.event_number) for t in steps if t.event_number] == [
        ("PublicationStarted", "order-42-complete"),
        ("PublicationFailed", "order-42-complete"),
    ]
    with store.engine.connect() as connection:  # the join: site, number, why it failed
        failed = connection.execute(
            text(
                "SELECT r.site, t.event_number, t.error_class FROM transitions t"
                " JOIN requests r ON r.request_id = t.request_id AND r.occurrence = t.occurrence"
                " WHERE t.type = 'PublicationFailed'"
            )
        ).all()
    assert [tuple(row) for row in failed] == [("acme", "order-42-complete", "DuplicateEventNumber")]
    row = store.request("pub-again")
    assert row is not None and (row.state, row.event_number) == ("publish_failed", None)
    _same_again_and_rebuilt(store, log, snapshot(store))

    old = [
        decode(LifecycleEvent, json.dumps(e).encode()) for e in json.loads(V1_LIFECYCLE.read_text())
    ]
    assert store.apply([Sourced("v1-lifecycle", 0, n, e) for n, e in enumerate(old)])
    said = {t.event_number for t in store.all_transitions() if t.topic == "v1-lifecycle"}
    assert old and said == {None}


def test_a_projection_at_0009_is_migrated_with_no_transition_numbers_until_it_is_rebuilt(
    database_url: str,  # noqa: F811
):
    """Migration 0010 on a projection a version before it wrote: its transitions stay as they
    were, with no event number (their events are not read again); the transitions the
    projector applies from then on have theirs, and a rebuild from the log (``replay
    --force``) gives every publication's its own."""
    log = mixed_log()
    written_at(database_url, log, "0009", without="event_number", table="transitions")

    store = ProjectionStore.from_url(database_url)  # a projector of this version, at its start
    try:
        assert store.is_current()
        assert {t.event_number for t in store.all_transitions()} == {None}
        _failed_under_a_taken_number(log)
        assert store.apply(log.records) == 6  # the projector goes on from where it was
        numbered = [(t.request_id, t.type, t.event_number) for t in store.all_transitions()]
        assert [n for n in numbered if n[2] is not None] == PUBLICATION_NUMBERS[-2:]
        store.reset()  # `replay --force`
        assert store.apply(log.records) == len(log.records)
        numbered = [(t.request_id, t.type, t.event_number) for t in store.all_transitions()]
        assert sorted(n for n in numbered if n[2] is not None) == sorted(PUBLICATION_NUMBERS)
    finally:
        store.close()


def test_what_an_event_leaves_empty_is_stored_as_null(store: ProjectionStore):
    """On SQLite the store binds None through an adapter of its own (a NULL otherwise costs
    sqlite3 five times an integer); what lands is SQL NULL, as on PostgreSQL."""
    log = Log()
    log.full("r1", at_ms=T0_MS)
    assert store.apply(log.records) == 6

    if store.engine.dialect.name == "sqlite":
        assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    with store.engine.connect() as connection:

        def count(sql: str) -> int:
            return int(connection.scalar(text(sql)) or 0)

        assert count("SELECT count(*) FROM transitions WHERE error_class IS NULL") == 6
        assert count("SELECT count(*) FROM transitions WHERE previous_state IS NULL") == 1
        # the two calls' times (TextGenerated's and, lifecycle schema 13, CompletionPublished's)
        assert count("SELECT count(*) FROM transitions WHERE latency_ms IS NOT NULL") == 2
        empty = "duplicate_of IS NULL AND error_message IS NULL AND window_start IS NULL"
        assert count(f"SELECT count(*) FROM requests WHERE {empty}") == 1


def test_a_retry_and_a_failure_keep_their_attempts_causes_and_errors(store: ProjectionStore):
    store.apply(mixed_log().records)

    retried = store.request("retry-1")
    assert retried.state == "published" and retried.attempts == 2
    assert retried.generating_at_ms == T0_MS + 1000  # the first attempt's start
    steps = [(t.state, t.attempt, t.error_class) for t in store.transitions("retry-1")]
    assert ("generating", 2, None) in steps

    failed = store.request("fail-1")
    assert (failed.state, failed.terminal, failed.error_class) == (
        "generation_failed",
        True,
        "AuthenticationError",
    )
    assert failed.error_message == "401 invalid key"
    last = store.transitions("fail-1")[-1]
    assert (last.state, last.error_class, last.latency_ms) == (
        "generation_failed",
        "AuthenticationError",
        40,
    )

    limited = store.request("lim-1")
    assert limited.state == "limited" and limited.window_count == 2
    assert "2 of 2 used" in store.transitions("lim-1")[-1].cause
    duplicate = store.request("pub-3~pub-3/d2")
    assert duplicate.state == "rejected_duplicate" and duplicate.duplicate_of == "pub-3"


def test_applying_the_same_events_again_in_any_batches_changes_nothing(store: ProjectionStore):
    records = mixed_log().records
    assert store.apply(records) == len(records)
    before = snapshot(store)

    assert store.apply(records) == 0
    for start in range(0, len(records), 7):  # redelivery in other batch boundaries
        assert store.apply(records[start : start + 7]) == 0
    assert snapshot(store) == before


def test_a_transition_the_ledger_emitted_twice_is_projected_once(store: ProjectionStore):
    log = Log()
    log.full("r1")
    again = log.records[2]  # a re-emission after a crash: the same event at a later offset
    store.apply([*log.records, Sourced(again.topic, again.partition, 999, again.event)])
    states = [t.state for t in store.transitions("r1")]
    assert states.count("generating") == 1
    assert store.request("r1").state == "published"


def test_an_earlier_step_read_after_the_request_ended_leaves_it_ended(store: ProjectionStore):
    """An earlier version's ledger batch, decided again after Kafka gave up on an output,
    sent it after the outputs Kafka took of the same batch's later records: a request's
    TextGenerated and PublicationStarted can follow its CompletionPublished in a topic it
    wrote (the ledger now keeps them in order: tests/unit/test_ledger_order.py). The request
    stayed ``publishing`` (not terminal: every wait for it timed out); it is ``published``,
    the transitions all kept. A redrive's first event leaves the terminal state, and moves on."""
    log = Log()
    log.full("r1", at_ms=T0_MS, latency_ms=700)
    received, admitted, started, generated, publishing, published = log.records
    order = [received, admitted, started, published, generated, publishing]
    assert store.apply([Sourced(TOPIC, 9, o, r.event) for o, r in enumerate(order)]) == 6
    row = store.request("r1")
    assert row is not None and (row.state, row.terminal) == ("published", True)
    assert row.generated_at_ms == row.publishing_at_ms == T0_MS + 700
    assert row.terminal_at_ms == T0_MS + 900 and row.generation_latency_ms == 700
    assert len(store.transitions("r1")) == 6

    failed = log.received("r2", email="bob@example.com", at_ms=T0_MS)
    log.failed(failed, at_ms=T0_MS + 100)  # a refused key: generation_failed, parked
    log.send(RedriveRequested(request_id="r2", person=failed.person, at_ms=T0_MS + 5000,
                              stage="generating", attempt=1))  # fmt: skip
    assert store.apply(log.records[6:]) == 6  # 4, then admitted and started again
    row = store.request("r2")
    assert row is not None and (row.state, row.terminal, row.attempts) == ("generating", False, 2)


def test_the_projector_resumes_past_what_it_applied_or_read_to(store: ProjectionStore):
    """Where a partition resumes: one past its highest row's offset, or the offset recorded
    with a batch read from it (all of whose records may have been dead-lettered), whichever is
    further; a database that holds nothing of the topic says so (the projector then fills it
    from the earliest offsets)."""
    assert not store.holds(TOPIC)
    assert store.next_offset(TOPIC, 0) is None
    log = Log(partitions=2)
    log.full("r1", at_ms=T0_MS)
    [partition] = {r.partition for r in log.records}
    other = 1 - partition
    highest = max(r.offset for r in log.records)

    store.apply(log.records, read={(TOPIC, partition): highest + 1})
    assert store.holds(TOPIC) and not store.holds("another-lifecycle")
    assert store.next_offset(TOPIC, partition) == highest + 1
    assert store.next_offset(TOPIC, other) is None

    # two poison records read from the other partition: nothing applied, and not read again
    assert store.apply([], read={(TOPIC, other): 2}) == 0
    assert store.next_offset(TOPIC, other) == 2
    assert store.counts()[1] == len(log.records)

    # a replay's rows (no offsets recorded) count too, and the further of the two wins
    store.apply([], read={(TOPIC, partition): 1})
    assert store.next_offset(TOPIC, partition) == highest + 1
    store.apply([], read={(TOPIC, partition): highest + 9})
    assert store.next_offset(TOPIC, partition) == highest + 9


def test_a_recorded_offset_never_goes_back_and_a_database_behind_it_is_found(
    store: ProjectionStore,
):
    """A projector that lost its partition during a batch may commit after the new owner: the
    further mark stands. A database holding less than the projector recorded (a backup restored
    under it, an emptied one) is said, and the batch is not applied."""
    log = Log(partitions=1)
    log.full("r1", at_ms=T0_MS)
    store.apply([], read={(TOPIC, 0): 40})
    store.apply([], read={(TOPIC, 0): 30})  # the previous owner's batch, committed last
    assert store.next_offset(TOPIC, 0) == 40

    with pytest.raises(ProjectionBehind) as behind:
        store.apply(log.records, read={(TOPIC, 0): 60}, recorded={(TOPIC, 0): 50, (TOPIC, 1): 5})
    assert behind.value.marks == {(TOPIC, 0): 40, (TOPIC, 1): None}
    assert store.counts() == (0, 0) and store.next_offset(TOPIC, 0) == 40

    assert store.apply(log.records, read={(TOPIC, 0): 60}, recorded={(TOPIC, 0): 40}) == 6
    assert store.next_offset(TOPIC, 0) == 60


def test_partitions_interleaved_differently_give_the_same_tables(database_url: str):  # noqa: F811
    records = mixed_log().records
    shuffled = sorted(records, key=lambda s: (s.offset, s.partition))  # per-partition order kept
    random.Random(7).shuffle(partitions := sorted({s.partition for s in records}))
    shuffled.sort(key=lambda s: partitions.index(s.partition))
    a = ProjectionStore.from_url(database_url)
    try:
        a.apply(records)
        first = snapshot(a)
        a.reset()
        for start in range(0, len(shuffled), 5):
            a.apply(shuffled[start : start + 5])
        assert snapshot(a) == first
    finally:
        a.close()


async def test_a_replay_into_an_empty_store_looks_up_only_what_it_wrote(database_url: str):  # noqa: F811
    """``rebuilt`` (a replay into an empty store) skips the lookups of rows that cannot exist
    yet: the same tables as the full path, in any batches, re-emissions included; also through
    ``rebuild``'s applier (into PostgreSQL a batch is written from a thread while the next is
    read; into SQLite inline)."""
    log = mixed_log()
    again = log.records[2]  # re-emitted later, in another batch
    records = [*log.records, Sourced(again.topic, again.partition, 999, again.event)]
    batches = {
        size: [records[i : i + size] for i in range(0, len(records), size)]
        for size in (1, 4, len(records))
    }
    store = ProjectionStore.from_url(database_url)
    try:
        store.apply(records)
        expected = snapshot(store)
        for size, applier_used in itertools.product(batches, (False, True)):
            store.reset()
            rebuilt: set[str] = set()
            if applier_used:
                async with _Applier(store, rebuilt) as applier:
                    for batch in batches[size]:
                        await applier.apply(batch)
                applied = applier.applied
                assert (applier._writer is None) == (store.engine.dialect.name == "sqlite")
            else:
                applied = sum(store.apply(batch, rebuilt) for batch in batches[size])
            assert applied == len(records) - 1  # the re-emission is projected once
            assert snapshot(store) == expected
            assert rebuilt == {s.event.request_id for s in records}
    finally:
        store.close()


async def test_a_rebuild_that_fails_waits_for_its_write_and_loses_no_error(database_url: str):  # noqa: F811
    """A write that fails is raised at the next batch; an error while a write is under way waits
    for it to end (the store is closed after), and no writer thread is left behind."""
    records = mixed_log().records
    store = ProjectionStore.from_url(database_url)
    try:
        with pytest.raises(AttributeError):
            async with _Applier(store, set()) as applier:
                await applier.apply([None])  # type: ignore[list-item]  # not an event
                await applier.apply(records)
        assert snapshot(store) == ([], [], [])
        release, written = threading.Event(), []
        if store.in_process:
            release.set()  # SQLite's batches are applied inline

        def held_apply(batch: list[Sourced], rebuilt: set[str] | None = None, **read: Any) -> int:
            release.wait(30)
            written.append(ProjectionStore.apply(store, batch, rebuilt, **read))
            return written[-1]

        store.apply = held_apply  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="the topic went away"):
            async with _Applier(store, set()) as applier:
                await applier.apply(records)
                release.set()  # the write starts now, the error leaves the block at once
                raise RuntimeError("the topic went away")
        assert written == [len(records)]  # written to its end before the exit
        assert not [t for t in threading.enumerate() if t.name.startswith("replay-writer")]
    finally:
        store.close()


def test_shares_written_side_by_side_into_one_sqlite_file_give_the_whole_logs_tables(tmp_path):
    """SQLite: a replay's processes each write a share of the partitions into the one file,
    through connections of their own, a writer waiting for the other's transaction rather than
    failing: the tables of the whole log applied in one store. A batch holding a request the
    file has already (its events in two shares) is refused whole, as a conflict of the shares."""
    records = mixed_log().records
    ours = [s for s in records if s.partition < 2]
    theirs = [s for s in records if s.partition >= 2]
    assert ours and theirs
    url = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    whole = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'whole.sqlite3'}")
    target = ProjectionStore.from_url(url)
    helper = ProjectionStore.from_url(url, migrate_schema=False)  # as a replay's helper opens it
    holder = sqlite3.connect(tmp_path / "target.sqlite3", isolation_level=None)
    try:
        whole.apply(records)
        with target.engine.connect() as connection:
            waits = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert waits == SQLITE_WRITER_WAIT_SECONDS * 1000
        target.apply(ours, set())
        holder.execute("BEGIN IMMEDIATE")  # another writer's batch under way
        with ThreadPoolExecutor(1) as pool:
            writing = pool.submit(helper.apply, theirs, set())
            done, _ = wait([writing], timeout=0.3)
            assert not done  # it waits for the lock: neither written nor failed
            holder.execute("COMMIT")
            assert writing.result(timeout=30) == len(theirs)
        assert snapshot(target) == snapshot(whole)
        # an event of a request the other share wrote, read from another partition
        moved = ours[-1]._replace(partition=max(s.partition for s in records) + 1, offset=0)
        with pytest.raises(IntegrityError) as refused:
            helper.apply([moved], set())
        assert _conflict(refused.value)
        assert snapshot(target) == snapshot(whole)  # nothing of the batch written
    finally:
        holder.close()
        for store in (whole, target, helper):
            store.close()


def test_a_reader_in_another_process_never_loses_the_projectors_later_writes(tmp_path):
    """SQLite, WAL mode: the migration lock once closed a descriptor of the database file in
    the projector's process, which drops SQLite's own locks there; a reader's close in another
    process then took itself for the last connection and deleted the WAL the projector went on
    writing to (its later commits vanished: found with `talkstream dev` and `audit`)."""
    path = tmp_path / "projection.sqlite3"
    store = ProjectionStore.from_url(f"sqlite:///{path}")
    records = mixed_log().records
    half = len(records) // 2
    peek = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute('select count(*) from transitions').fetchone()[0]); c.close()"
    )

    def seen_elsewhere() -> int:
        run = subprocess.run(
            [sys.executable, "-c", peek, str(path)], capture_output=True, text=True, check=True
        )
        return int(run.stdout)

    try:
        store.apply(records[:half])
        assert seen_elsewhere() == half
        store.apply(records[half:])
        assert seen_elsewhere() == len(records)
    finally:
        store.close()
    assert seen_elsewhere() == len(records)


def test_a_fresh_database_is_migrated_to_head_and_matches_the_models(store: ProjectionStore):
    with store.engine.connect() as connection:
        assert migrate.current(connection) == migrate.head()
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": migrate.VERSION_TABLE}
        )
        assert compare_metadata(context, Base.metadata) == []
    assert store.is_current()


class Fault(Exception):
    """Injected into a migration."""


def test_a_migration_that_fails_halfway_leaves_nothing_and_runs_again(
    database_url: str,  # noqa: F811
):
    """SQLite through pysqlite committed each CREATE TABLE by itself (the driver opens a
    transaction before a DML statement only): a first migration that failed after its first
    table (a crash, a full disk) left that table, and the history table, without a history
    row, which every start refused from then on as "tables but no migration history"; a reader
    meanwhile (the console, ``talkstream stats``) saw tables appear one by one. Now all of it
    or nothing, as on PostgreSQL."""
    engine = create_engine(database_url)
    made: list[str] = []

    def fail_at_the_second_table(_conn, _cursor, statement: str, *_args) -> None:
        words = statement.split()
        if words[:2] == ["CREATE", "TABLE"] and words[2] != migrate.VERSION_TABLE:
            made.append(words[2])
            if len(made) == 2:
                raise Fault(f"injected before {words[2]}")

    event.listen(engine, "before_cursor_execute", fail_at_the_second_table)
    try:
        with pytest.raises(Fault):
            migrate.upgrade(engine)
        event.remove(engine, "before_cursor_execute", fail_at_the_second_table)
        assert len(made) == 2  # the first table was made before the fault
        reader = create_engine(database_url)  # another connection: what a reader sees
        try:
            assert inspect(reader).get_table_names() == []
        finally:
            reader.dispose()

        migrate.upgrade(engine)  # run again: not refused, all of it made

        with engine.connect() as connection:
            assert migrate.current(connection) == migrate.head()
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": migrate.VERSION_TABLE}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_each_migration_run_is_logged_on_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Alembic logs "Running upgrade 0001 -> 0002, <docstring>": the migrations' docstrings
    of several lines made records of several lines in every log that migrated (a worker's
    projector, ``talkstream migrate``), up and down."""
    engine = create_engine(f"sqlite:///{tmp_path / 'projection.sqlite3'}")
    try:
        with caplog.at_level(logging.INFO, logger="alembic"):
            migrate.upgrade(engine)
            migrate.migrate_to(engine, "0001")
    finally:
        engine.dispose()
    ran = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Running ")]
    assert len(ran) == 2 * (len(migrate.revisions()) - 1) + 1, ran
    assert [m for m in ran if "\n" in m] == []
    assert (
        "Running upgrade 0001 -> 0002, Waits and arrival: how long each step waited for its "
        "upstream target, and when the webhook arrived (``received_at_ms`` is the event time "
        "the ledger judged it at)."
    ) in ran


def test_a_projection_at_0005_is_migrated_with_its_rows_and_then_says_which_texts_are_cut(
    database_url: str,  # noqa: F811
):
    """Migration 0006 on a projection a version before it wrote: its rows stay as they were,
    none of them cut (their events are not read again); what the projector applies from then on
    says it, and a rebuild from the log (``replay --force``) says it of every text."""
    log = mixed_log()  # pub-2's text was cut
    requests = written_at(database_url, log, "0005", without="truncated")

    store = ProjectionStore.from_url(database_url)  # a projector of this version, at its start
    try:
        assert store.is_current()
        before = stored_requests(store)
        assert before == sorted(
            # and no event number (migration 0009), as no projection before it had one
            (r | {"truncated": False, "event_number": None} for r in requests.values()),
            key=lambda r: r["request_id"],
        )
        log.full("cut-later", email="fay@example.com", at_ms=T0_MS + 9000, truncated=True)
        assert store.apply(log.records) == 6  # the projector goes on from where it was
        cut = {r["request_id"] for r in stored_requests(store) if r["truncated"]}
        assert cut == {"cut-later"}
        store.reset()  # `replay --force`
        assert store.apply(log.records) == len(log.records)
        assert {r.request_id for r in store.requests() if r.truncated} == {"pub-2", "cut-later"}
    finally:
        store.close()


@pytest.fixture
def postgres_store(postgres_server: str):  # noqa: F811
    for url in fresh_postgres_database(postgres_server):
        opened = ProjectionStore.from_url(url)
        yield opened
        opened.close()


def test_a_copy_declares_each_column_as_the_database_has_it(postgres_store: ProjectionStore):
    """On PostgreSQL new rows go in with ``COPY``, each column's values formatted for the type
    the statement declares: those must be the types the migrated tables have (SQLite inserts
    with executemany, and has no COPY)."""
    from psycopg.postgres import types

    with postgres_store.engine.connect() as connection:
        writes = Writes.of(connection)
        assert set(writes.copy_types) == {writes.insert_transition, writes.insert_request}
        for sql, declared in writes.copy_types.items():
            table, columns = re.fullmatch(r"COPY (\w+) \((.*)\) FROM STDIN", sql).groups()
            names = [c.strip().strip('"') for c in columns.split(",")]
            found = dict(
                connection.execute(
                    text(
                        "SELECT attname, atttypid::int FROM pg_attribute"
                        " WHERE attrelid = CAST(:table AS regclass) AND attnum > 0"
                    ),
                    {"table": table},
                ).all()
            )
            assert [types.get(name).oid for name in declared] == [found[n] for n in names], sql


def test_processes_opening_a_fresh_database_at_once_all_get_the_schema(
    database_url: str,  # noqa: F811
):
    def open_and_write(n: int) -> int:
        s = ProjectionStore.from_url(database_url)
        try:
            log = Log()
            log.received(f"r{n}", trigger="false")  # received, skipped
            return s.apply([Sourced(f"t{n}", 0, r.offset, r.event) for r in log.records])
        finally:
            s.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(open_and_write, range(4))) == [2, 2, 2, 2]


def test_a_database_made_before_migrations_is_refused_with_advice(
    database_url: str,  # noqa: F811
):
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    try:
        with pytest.raises(ConfigError, match=r"talkstream replay --database-url .* --force"):
            ProjectionStore(engine)
        store = ProjectionStore(engine, migrate_schema=False)
        store.reset()  # what `replay --force` does: start from the migrations
        assert store.is_current() and store.is_empty()
        assert migrate.VERSION_TABLE in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _other_application(engine) -> None:
    """Another application's tables and Alembic history in the projection's database."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO customers VALUES (7)"))
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        # two heads (a branched history), one of them a revision id we also have
        connection.execute(text("INSERT INTO alembic_version VALUES ('0002'), ('f00d')"))


def _theirs(engine) -> tuple[list[int], list[str]]:
    with engine.connect() as connection:
        customers = list(connection.scalars(text("SELECT id FROM customers")))
        heads = connection.scalars(text("SELECT version_num FROM alembic_version"))
        return customers, sorted(heads)


def test_the_projection_shares_a_database_with_another_application(
    database_url: str,  # noqa: F811
):
    """Their tables and their Alembic history (even one naming a revision we also have) are
    theirs: the projection migrates beside them, counts as empty until it has transitions,
    and `replay --force` empties only the projection."""
    engine = create_engine(database_url)
    try:
        _other_application(engine)
        store = ProjectionStore(engine, migrate_schema=False)
        assert store.is_empty()  # their tables are not a projection
        store = ProjectionStore(engine)
        assert store.is_current() and store.is_empty()
        log = Log()
        log.full("r1", at_ms=T0_MS, limit=3)
        store.apply(log.records)
        assert not store.is_empty()
        store.reset()
        assert store.is_current() and store.is_empty()
        assert _theirs(engine) == ([7], ["0002", "f00d"])
    finally:
        engine.dispose()


def test_a_projection_with_its_history_in_alembic_version_moves_it_to_its_own_table(
    database_url: str,  # noqa: F811
):
    """Projections made before kept their history in Alembic's default table."""
    engine = create_engine(database_url)
    try:
        store = ProjectionStore(engine)
        log = Log()
        log.full("r1", at_ms=T0_MS, limit=3)
        store.apply(log.records)
        with engine.begin() as connection:  # the history as an earlier version kept it
            connection.execute(text(f"DROP TABLE {migrate.VERSION_TABLE}"))
            connection.execute(
                text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
                )
            )
            connection.execute(text(f"INSERT INTO alembic_version VALUES ('{migrate.head()}')"))
        assert not store.is_current()
        store = ProjectionStore(engine)
        assert store.is_current() and store.request("r1") is not None
        tables = inspect(engine).get_table_names()
        assert migrate.VERSION_TABLE in tables and "alembic_version" not in tables
    finally:
        engine.dispose()


def _statistics_rows(store: ProjectionStore) -> int | None:
    """How many requests the SQLite file's statistics say there are (None: none gathered)."""
    with store.engine.connect() as connection:
        if not connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).first():
            return None
        stats = connection.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'requests'")
        return max(int(stat.split()[0]) for (stat,) in stats)


def test_sqlite_statistics_are_gathered_again_each_time_the_requests_have_doubled(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """SQLite gathers no statistics by itself (the projector's file had none, ever), and keeps
    those of a table a fraction of its size until they are gathered again."""
    import streams.projection.store as store_module

    monkeypatch.setattr(store_module, "STATISTICS_FIRST_ROWS", 10)
    store = ProjectionStore.from_url(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    log = Log()
    people = iter(range(1000))

    def grow(count: int) -> None:
        for i in itertools.islice(people, count):
            log.received(f"r{i:03d}", email=f"p{i}@example.com", at_ms=T0_MS + i)
        store.apply(log.records[len(applied) :])
        applied[:] = log.records

    applied: list[Sourced] = []
    grow(9)
    assert not store.refresh_statistics() and _statistics_rows(store) is None
    grow(1)
    assert store.refresh_statistics() and _statistics_rows(store) == 10
    assert not store.refresh_statistics()  # nothing grew: one-row reads, no ANALYZE
    grow(9)
    assert not store.refresh_statistics() and _statistics_rows(store) == 10
    grow(1)
    assert store.refresh_statistics() and _statistics_rows(store) == 20
    store.close()


def test_statistics_are_gathered_on_demand_and_left_to_postgresql_otherwise(
    store: ProjectionStore,
):
    """A rebuild gathers them (``gather_statistics``) on both; between rebuilds PostgreSQL's
    autovacuum gathers its own and the projector leaves it alone."""
    store.apply(mixed_log().records)
    store.gather_statistics()
    with store.engine.connect() as connection:
        if store.in_process:
            assert _statistics_rows(store) == store.counts()[0]
        else:
            analyzed = connection.execute(
                text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'requests'")
            ).scalar()
            assert analyzed is not None
            assert not store.refresh_statistics()


DAY_MS = 86_400_000


def _same_again_and_rebuilt(store: ProjectionStore, log: Log, live: object) -> None:
    """The same log applied again, in batches of any size, adds nothing; a rebuild into the
    emptied store, in batches (ids it wrote looked up, no others), gives the same tables."""
    for size in (1, 3, 7):
        for at in range(0, len(log.records), size):
            assert store.apply(log.records[at : at + size]) == 0
    assert snapshot(store) == live
    for size in (1, 4, len(log.records)):
        store.reset()
        rebuilt: set[str] = set()
        for at in range(0, len(log.records), size):
            store.apply(log.records[at : at + size], rebuilt)
        assert snapshot(store) == live, size


def _taken_again() -> Log:
    """A published request; a month later, the person forgotten by the ledger (nothing heard
    for 30 days), the same params again: decided as never heard of, named by the same id, and
    failed. Then the ledger emits the second's RequestReceived again (a crash)."""
    log = Log()
    log.full("same-id", at_ms=T0_MS, limit=2)
    again = log.received("same-id", at_ms=T0_MS + 32 * DAY_MS, limit=2, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)
    received = log.records[6]
    assert (received.event.type, received.event.at_ms) == ("RequestReceived", again.at_ms)
    offset = log._next[received.partition]
    log.records.append(Sourced(TOPIC, received.partition, offset, received.event))
    return log


def test_a_request_of_an_id_the_ledger_took_again_is_a_row_of_its_own(database_url: str):  # noqa: F811
    """Its transitions that had the earlier request's identity were taken for re-emissions
    and dropped; the others moved the earlier (published) request to their state."""
    log = _taken_again()
    store = ProjectionStore.from_url(database_url)
    try:
        assert store.apply(log.records) == 10  # the re-emission once
        first, again = store.occurrences("same-id")
        assert (first.occurrence, first.state, first.terminal_at_ms) == (
            0,
            "published",
            T0_MS + 1000,
        )
        assert (first.model, first.prompt_tokens, first.error_class) == (
            "gpt-4o-mini-2024",
            12,
            None,
        )
        assert (again.occurrence, again.state, again.received_at_ms) == (
            1,
            "generation_failed",
            T0_MS + 32 * DAY_MS,
        )
        assert (again.model, again.prompt_tokens, again.error_class) == (
            "gpt-4o-mini",  # as requested: no text, no tokens
            None,
            "AuthenticationError",
        )
        latest = store.request("same-id")  # the latest
        assert latest is not None and (latest.occurrence, latest.state) == (1, again.state)
        assert [t.state for t in store.transitions("same-id", 0)][-1] == "published"
        assert [t.state for t in store.transitions("same-id", 1)] == [
            "received",
            "admitted",
            "generating",
            "generation_failed",
        ]
        assert len(store.transitions("same-id")) == 10
        assert store.states_of(["same-id"]) == {"same-id": "generation_failed"}
        live = snapshot(store)
        assert [(state, n) for _, _, state, n, _ in live[2]] == [
            ("published", 1),
            ("generation_failed", 1),
        ]

        _same_again_and_rebuilt(store, log, live)
    finally:
        store.close()


def test_a_request_of_an_id_whose_earlier_ones_end_never_reached_the_projection_is_its_own(
    database_url: str,  # noqa: F811
):
    """The earlier request's last event was dead-lettered (Kafka refused it), so its row stays
    ``publishing``. The ledger names no request by the id of one in flight: a RequestReceived of
    the id judged at another time is another request, ended or not as the projection sees the
    earlier. Its events were folded into the earlier row (its received, admitted, generating
    dropped as re-emissions, its failure ending the earlier request ``generation_failed``). The
    ledger's re-emission of a RequestReceived (the same time) is still the same request, and a
    request whose RequestReceived is read after its later events is still one row."""
    log = Log()
    first = log.full("lost-end", at_ms=T0_MS, limit=2)
    published = log.records.pop()  # its CompletionPublished: dead-lettered, never projected
    assert (published.event.type, published.event.request_id) == (
        "CompletionPublished",
        "lost-end",
    )
    again = log.received("lost-end", at_ms=T0_MS + 32 * DAY_MS, limit=2, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)
    received = next(s for s in log.records[5:] if s.event.type == "RequestReceived")
    assert received.event.at_ms == again.at_ms
    offset = log._next[received.partition]
    log._next[received.partition] = offset + 1
    log.records.append(Sourced(TOPIC, received.partition, offset, received.event))  # a crash
    # a request whose RequestReceived is read after its later events (partitions added while it
    # was in flight): its row starts at another time than the RequestReceived's
    late = Log(partitions=1, _next={0: 100})
    r = late.full("read-late", email="bob@example.com", at_ms=T0_MS + 5000, latency_ms=900)
    head, tail = late.records[:3], late.records[3:]
    log.records += [Sourced(TOPIC, 9, s.offset, s.event) for s in tail] + head

    store = ProjectionStore.from_url(database_url)
    try:
        assert store.apply(log.records) == 5 + 4 + 6  # the re-emission once
        earlier, later = store.occurrences("lost-end")
        assert (earlier.occurrence, earlier.state, earlier.terminal) == (0, "publishing", False)
        assert (earlier.received_at_ms, earlier.prompt_tokens) == (first.at_ms, 12)
        assert (later.occurrence, later.state, later.received_at_ms) == (
            1,
            "generation_failed",
            again.at_ms,
        )
        assert [t.state for t in store.transitions("lost-end", 1)] == [
            "received",
            "admitted",
            "generating",
            "generation_failed",
        ]
        [one] = store.occurrences("read-late")
        assert (one.occurrence, one.received_at_ms) == (0, r.at_ms)
        assert len(store.transitions("read-late", 0)) == 6
        live = snapshot(store)

        _same_again_and_rebuilt(store, log, live)
    finally:
        store.close()

"""The overview's counts a minute (``ended_minutes``, migration 0007) against the requests they
sum: kept by ``ProjectionStore.apply`` (the live projector's batches, a replay's into an empty
store) and filled by the migration from the rows a projection had, the overview read from them
shows what it shows read from the requests alone, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from sqlalchemy import event

from models.events import (
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    RedriveRequested,
    RequestReceived,
)
from models.lifecycle import State
from streams.console.queries import ConsoleQueries
from streams.projection import migrate
from streams.projection.engine import make_engine
from streams.projection.store import ProjectionStore
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)
from tests.projection_support import T0_MS, Log, ended_minutes

MINUTE = 60_000


def history(seed: int = 41) -> Log:
    """Two hours of requests on five sites, each ending where its steps take it: published
    (a text made in one minute and published in the next), limited, skipped, duplicates, failed
    to generate or to publish; some failures redriven minutes later (their request ends again,
    in another minute and state, the generated ones with tokens now), one redrive still in
    flight (it ended once: its time stays)."""
    rng = random.Random(seed)
    log = Log()
    parked: list[tuple[RequestReceived, Literal["generating", "publishing"], int]] = []
    for i in range(240):
        at = T0_MS + i * 30_000 + rng.randrange(30_000)
        site = f"site-{rng.randrange(5)}"
        email = f"p{rng.randrange(6)}@example.com"
        kind = rng.random()
        if kind < 0.05:
            log.received(f"skip-{i}", site=site, email=email, at_ms=at, trigger="false")
            continue
        r = log.received(f"r-{i}", site=site, email=email, at_ms=at, limit=3)
        if kind < 0.15:
            log.received(  # the same webhook again: a duplicate, or its own request
                r.request_id, site=site, email=email, at_ms=at + 100, delivery="d2", limit=3
            )
        latency = rng.randrange(200, 90_000)  # some across a minute's end
        if kind < 0.7:
            log.generated(r, at_ms=at + latency, latency_ms=latency)
            log.published(r, at_ms=at + latency + rng.randrange(50, 40_000))
        elif kind < 0.85:
            log.failed(r, at_ms=at + latency)  # not retriable: generation_failed
            parked.append((r, "generating", at + latency))
        else:
            log.generated(r, at_ms=at + latency, latency_ms=latency)
            log.send(
                PublicationAttemptFailed(
                    request_id=r.request_id,
                    person=r.person,
                    attempt=1,
                    at_ms=at + latency + 500,
                    error_class="Unauthorized",
                    error_message="Talkable answered 401: invalid API key",
                )
            )
            parked.append((r, "publishing", at + latency + 500))
    for n, (r, stage, ended) in enumerate(parked[::2]):
        later = ended + rng.randrange(MINUTE, 20 * MINUTE)
        log.send(
            RedriveRequested(
                request_id=r.request_id,
                person=r.person,
                at_ms=later,
                reason="fixed",
                stage=stage,
                attempt=1,
            )
        )
        if n == 0:
            continue  # still in flight: publishing or generating again
        if stage == "generating":
            log.generated(r, at_ms=later + 700, attempt=2)
        log.send(
            PublicationAttemptSucceeded(
                request_id=r.request_id,
                person=r.person,
                attempt=2 if stage == "publishing" else 1,
                at_ms=later + 1_500,
                redrive=stage == "publishing",
            )
        )
    return log


def windows(rng: random.Random) -> list[tuple[int, int]]:
    """The console's windows at a few odd times, and spans that begin and end mid-minute,
    in one minute, or on a minute's edge."""
    found = []
    for now in (T0_MS + 47 * MINUTE + 12_345, T0_MS + 3 * 60 * MINUTE + 59_999):
        found += [(now - minutes * MINUTE, now) for minutes in (15, 60, 360, 1440)]
    found += [
        (T0_MS, T0_MS + 120 * MINUTE),
        (T0_MS + 10 * MINUTE + 1, T0_MS + 11 * MINUTE - 1),
        (T0_MS + 10 * MINUTE + 5, T0_MS + 10 * MINUTE + 50_000),
        (T0_MS + 59_999, T0_MS + 2 * MINUTE + 1),
    ]
    for _ in range(20):
        since = T0_MS + rng.randrange(150 * MINUTE)
        found.append((since, since + rng.randrange(1, 90 * MINUTE)))
    return found


def assert_overviews_agree(url: str) -> None:
    engine = make_engine(url)
    queries = ConsoleQueries(engine)
    read: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: read.append(a[2]))
    for since, until in windows(random.Random(7)):
        from_minutes = queries.overview(since, until, minutes=True)
        assert from_minutes == queries.overview(since, until), (since, until)
    engine.dispose()
    assert any("ended_minutes" in statement for statement in read)


def test_the_overview_from_minutes_shows_what_the_requests_say(
    tmp_path: Path,
    database_url: str,  # noqa: F811
) -> None:
    log = history()
    states = {r.event.request_id: r.event.state for r in log.records}
    assert {State.PUBLISHED, State.LIMITED, State.SKIPPED, State.GENERATION_FAILED} <= set(
        states.values()
    )
    assert {State.PUBLISH_FAILED, State.REJECTED_DUPLICATE} <= set(states.values())
    assert State.PUBLISHING in states.values() or State.GENERATING in states.values()
    store = ProjectionStore.from_url(database_url)
    # the live projector's batches, of every size: a request ends, and ends again, in one
    # batch and across them
    rng = random.Random(3)
    at = 0
    while at < len(log.records):
        size = rng.choice([1, 2, 7, 50, 400])
        store.apply(log.records[at : at + size])
        at += size
    store.apply(log.records[: len(log.records) // 2])  # a redelivery changes nothing
    live = ended_minutes(store)
    assert live and sum(row[3] for row in live) > 200
    assert_overviews_agree(database_url)

    # a replay into the emptied store (only its own requests looked up), in batches
    store.reset()
    rebuilt: set[str] = set()
    for at in range(0, len(log.records), 333):
        store.apply(log.records[at : at + 333], rebuilt)
    assert ended_minutes(store) == live
    assert_overviews_agree(database_url)

    # a projection made before the counts: the migration fills them from its requests
    migrate.migrate_to(store.engine, "0006")
    store.upgrade_schema()
    assert ended_minutes(store) == live
    assert_overviews_agree(database_url)
    store.close()


def test_a_minute_its_requests_all_moved_out_of_keeps_no_row(
    database_url: str,  # noqa: F811
) -> None:
    """A publication refused in one minute and redriven to published in the next moves its
    request between the minutes' rows: the row it left stayed, requests 0, where a replay
    of the same log in one batch (or the migration's fill) has none, and a consumer counting
    the minutes something failed in counted it. The row is deleted as it empties."""
    log = Log()
    log.redriven("moved", lands=True, limit=3)
    store = ProjectionStore.from_url(database_url)
    for record in log.records:  # the live projector's batches: one a record
        store.apply([record])
    published = [(T0_MS // MINUTE + 1, "acme", "published", 1, 42)]
    assert ended_minutes(store) == published
    store.reset()
    store.apply(log.records, set())  # a replay's one batch
    assert ended_minutes(store) == published
    store.close()

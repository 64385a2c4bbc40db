"""A made-up projection of many requests for ``python -m bench.console``: fifty sites (one
big), the terminal states in a realistic mix with their errors, a day of arrivals, each request's
transitions, bulk-loaded (COPY on PostgreSQL, executemany on SQLite) into a migrated schema,
and the overview's counts a minute (``ended_minutes``) summed from them at the end."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

from streams.projection.tables import RequestRow, TransitionRow

SITES = 50
DAY_MS = 86_400_000
CHUNK = 20_000

# the generated rows follow the tables' column order (the transitions' surrogate id left out)
REQUEST_COLUMNS = [c.name for c in RequestRow.__table__.columns]
TRANSITION_COLUMNS = [c.name for c in TransitionRow.__table__.columns if c.name != "id"]

# what ProjectionStore.apply would have kept in ended_minutes for the rows loaded around it
ENDED_MINUTES = (
    "INSERT INTO ended_minutes (minute, site, state, requests, tokens)"
    " SELECT terminal_at_ms / 60000, site, state, count(*),"
    " sum(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))"
    " FROM requests WHERE terminal_at_ms IS NOT NULL"
    " GROUP BY terminal_at_ms / 60000, site, state"
)

# terminal states in the mix, by share
MIX = [
    ("published", 0.80),
    ("limited", 0.08),
    ("skipped", 0.04),
    ("rejected_duplicate", 0.03),
    ("generation_failed", 0.03),
    ("publish_failed", 0.019),
    ("generating", 0.001),
]
PATHS: dict[str, list[tuple[str, str, str | None]]] = {
    "published": [
        ("RequestReceived", "received", None),
        ("RequestAdmitted", "admitted", "received"),
        ("GenerationStarted", "generating", "admitted"),
        ("TextGenerated", "generated", "generating"),
        ("PublicationStarted", "publishing", "generated"),
        ("CompletionPublished", "published", "publishing"),
    ],
    "limited": [
        ("RequestReceived", "received", None),
        ("UsageLimited", "limited", "received"),
    ],
    "skipped": [
        ("RequestReceived", "received", None),
        ("RequestSkipped", "skipped", "received"),
    ],
    "rejected_duplicate": [
        ("RequestReceived", "received", None),
        ("DuplicateRejected", "rejected_duplicate", "received"),
    ],
    "generation_failed": [
        ("RequestReceived", "received", None),
        ("RequestAdmitted", "admitted", "received"),
        ("GenerationStarted", "generating", "admitted"),
        ("GenerationFailed", "generation_failed", "generating"),
    ],
    "publish_failed": [
        ("RequestReceived", "received", None),
        ("RequestAdmitted", "admitted", "received"),
        ("GenerationStarted", "generating", "admitted"),
        ("TextGenerated", "generated", "generating"),
        ("PublicationStarted", "publishing", "generated"),
        ("PublicationFailed", "publish_failed", "publishing"),
    ],
    "generating": [
        ("RequestReceived", "received", None),
        ("RequestAdmitted", "admitted", "received"),
        ("GenerationStarted", "generating", "admitted"),
    ],
}
ERRORS = {
    "generation_failed": ("InsufficientQuota", "OpenAI answered 429: insufficient_quota"),
    "publish_failed": ("Unauthorized", "Talkable answered 401: invalid or missing API key"),
}


def site_of(rng: random.Random) -> str:
    # one big site, the rest spread: like a campaign launch beside everyday traffic
    return "site-00" if rng.random() < 0.3 else f"site-{rng.randrange(1, SITES):02d}"


def generate(count: int, end_ms: int, seed: int = 15) -> Iterator[tuple[list[Any], list[Any]]]:
    """Chunks of (request rows, transition rows), oldest first, over the 7 days to ``end_ms``."""
    rng = random.Random(seed)
    states = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    span = 7 * DAY_MS
    offsets = [0] * 8
    requests: list[Any] = []
    transitions: list[Any] = []
    for i in range(count):
        request_id = f"{rng.getrandbits(128):032x}"
        site = site_of(rng)
        person = f"{site}:p{rng.randrange(40_000)}@example.com"
        state = rng.choices(states, weights)[0]
        arrived = end_ms - span + i * span // count
        # a tenth of the webhooks carry a Liquid-rendered current_time from before they arrived
        received = arrived - (rng.randrange(1, 60_000) if rng.random() < 0.1 else 0)
        latency = rng.randrange(400, 3000)
        path = PATHS[state]
        steps = [arrived + (latency * k // max(len(path) - 1, 1)) for k in range(len(path))]
        terminal = state != "generating"
        error = ERRORS.get(state)
        generated = state in ("published", "publish_failed")
        requests.append(
            (
                request_id,
                site,
                person,
                state,
                terminal,
                received,
                arrived,
                received if len(path) > 2 else None,
                received if len(path) > 2 else None,
                steps[3] if generated else None,
                steps[4] if generated else None,
                steps[-1] if terminal else None,
                steps[-1],
                "published to Talkable" if state == "published" else state,
                None,
                "gpt-4o-mini-2024-07-18" if generated else None,
                40 if generated else None,
                60 if generated else None,
                latency // 2 if generated else None,
                rng.randrange(0, 50) if generated else None,
                rng.randrange(0, 30) if generated else None,
                1,
                error[0] if error else None,
                error[1] if error else None,
                received // 1000 - received // 1000 % 3600,
                rng.randrange(1, 4),
                generated and i % 20 == 0,  # a text in 20 cut at max_tokens (drawing no number)
                0,  # the first request of its id
                f"generate_text_complete-{request_id}" if state == "published" else None,
            )
        )
        partition = i % 8
        for k, (kind, step, previous) in enumerate(path):
            judged = k < 3 and kind != "TextGenerated"
            transitions.append(
                (
                    request_id,
                    kind,
                    step,
                    previous,
                    received if judged else steps[k],
                    "webhook accepted" if k == 0 else step,
                    0 if k < 2 else 1,
                    error[0] if error and k == len(path) - 1 else None,
                    error[1] if error and k == len(path) - 1 else None,
                    latency // 2 if kind == "TextGenerated" else None,
                    None,
                    None,
                    None,
                    arrived if k == 0 else None,
                    "bench-lifecycle",
                    partition,
                    offsets[partition],
                    0,  # of the first request of its id
                    # the Talkable event number a publication attempts, or landed under
                    f"generate_text_complete-{request_id}" if k >= 4 and generated else None,
                )
            )
            offsets[partition] += 1
        if len(requests) >= CHUNK:
            yield requests, transitions
            requests, transitions = [], []
    if requests:
        yield requests, transitions


def fill(engine: Engine, count: int, end_ms: int) -> float:
    """Bulk-load ``count`` requests; returns the seconds it took."""
    started = time.monotonic()
    backend = engine.dialect.name
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()
        if backend == "sqlite":
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA journal_mode=MEMORY")
        for requests, transitions in generate(count, end_ms):
            if backend == "postgresql":
                _copy(cursor, "requests", REQUEST_COLUMNS, requests)
                _copy(cursor, "transitions", TRANSITION_COLUMNS, transitions)
            else:
                _insert(cursor, "requests", REQUEST_COLUMNS, requests)
                _insert(cursor, "transitions", TRANSITION_COLUMNS, transitions)
            raw.commit()
        # the overview's counts a minute, as migration 0007 fills them from rows loaded before
        cursor.execute(ENDED_MINUTES)
        raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return time.monotonic() - started


def _insert(cursor: Any, table: str, columns: list[str], rows: list[Any]) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def _copy(cursor: Any, table: str, columns: list[str], rows: list[Any]) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)

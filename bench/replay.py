"""Replay and verify, measured: lifecycle events a second into SQLite and PostgreSQL.

    python -m bench.replay --requests 20000          (6 lifecycle events each: 120,000)

Writes a consistent log straight to Kafka: the pure ledger (``models.ledger.handle``) decides
each request (received → admitted → generating → generated → publishing → published), and its
[requests] messages and [lifecycle] events are produced as the live system would have: the
publications name the Talkable event number they attempt and the one they landed under (as
the publisher reports it), so the events and the rows carry them as live ones do. Then it
times ``talkstream replay`` (``streams.ops.replay.rebuild``) into a fresh SQLite file (in one
process and with its default processes) and a fresh PostgreSQL database, and
``replay --verify`` (the same two ways), each on the whole log. Results go to
``bench/results/replay-latest.json`` (``talkstream bench --render`` shows them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.machine import describe, source_tree
from bench.report import RESULTS_DIR
from bench.system import PROJECT_ROOT, Broker
from models.events import (
    ChatRequest,
    Decidable,
    GenerationAttemptSucceeded,
    PublicationAttemptSucceeded,
    RequestReceived,
    RequestSpec,
    SealedSecrets,
)
from models.ledger import PersonState, Policy, handle
from models.params import UsageLimit, completion_event_number, person_key
from streams.codecs import encode
from streams.kafka_options import client_options
from streams.ops.helpers import default_processes
from streams.ops.replay import LogReader, rebuild
from streams.ops.verify import verify
from streams.projection.store import ProjectionStore
from streams.settings import Settings
from streams.topics import ensure_topics

PARTITIONS = 8
POSTGRES = PROJECT_ROOT / "scripts" / "postgres.sh"


def synthetic_log(requests: int, now_s: int) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """([requests] records as (person, value), [lifecycle] values) of ``requests`` webhooks,
    each decided by the ledger from received to published."""
    policy, requests_log, lifecycle = Policy(), [], []
    for i in range(requests):
        person, messages = webhook(i, now_s)
        state: PersonState | None = None
        for message in messages:
            outcome = handle(state, message, policy, now_s * 1000)
            state = outcome.state
            requests_log.append((person, encode(message)))
            lifecycle += [encode(event) for event in outcome.events]
    return requests_log, lifecycle


def webhook(i: int, now_s: int) -> tuple[str, list[Decidable]]:
    """The ``i``-th synthetic person and the [requests] messages of one webhook of theirs,
    received to published."""
    site, email = f"site{i % 50}", f"p{i}@replay.example.com"
    person = person_key(site, email)
    received = RequestReceived(
        request_id=f"r{i:08d}",
        delivery_id=f"d{i:08d}",
        person=person,
        at_ms=now_s * 1000 + i,
        spec=RequestSpec(
            site=site,
            email=email,
            chat=ChatRequest(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"a verse for customer {i}"}],
                max_tokens=60,
            ),
            usage_limit=UsageLimit(
                amount=3,
                duration_in_seconds=3600,
                start_time=now_s,
                current_time=now_s,
                current_usage_amount=0,
            ),
        ),
        secrets=SealedSecrets(talkable_api_key="gAAAA-t", openai_api_key="gAAAA-o"),
    )
    generated = GenerationAttemptSucceeded(
        request_id=received.request_id,
        person=person,
        attempt=1,
        at_ms=now_s * 1000 + i + 900,
        text=f"Roses for customer {i}",
        model="gpt-4o-mini",
        prompt_tokens=9,
        completion_tokens=12,
        latency_ms=850,
    )
    published = PublicationAttemptSucceeded(  # as the publisher reports it (schema 8 on)
        request_id=received.request_id,
        person=person,
        attempt=1,
        at_ms=now_s * 1000 + i + 950,
        landed_event_number=completion_event_number(None, received.request_id),
    )
    return person, [received, generated, published]


async def produce(
    settings: Settings, requests_log: list[tuple[str, bytes]], lifecycle: list[bytes]
) -> None:
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=20)
    await producer.start()
    try:
        deliveries = [
            await producer.send(settings.topic("requests"), key=person.encode(), value=value)
            for person, value in requests_log
        ]
        deliveries += [
            await producer.send(
                settings.topic("lifecycle"),
                key=json.loads(value)["request_id"].encode(),
                value=value,
            )
            for value in lifecycle
        ]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


@contextlib.contextmanager
def fresh_postgres(server: str | None = None) -> Iterator[str]:
    """A fresh database on ``server`` (default: the project's own cluster, started if need be),
    dropped afterwards: each run made one of the log's size, and they piled up on the server."""
    if server is None:
        started = subprocess.run([POSTGRES, "start"], capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL could not be started:\n{started.stderr}")
        server = started.stdout.strip().splitlines()[-1]
    name = f"replay_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def timed_postgres(settings: Settings, server: str | None = None) -> dict[str, Any]:
    with fresh_postgres(server) as url:
        return timed_rebuild(settings, url)


def timed_read(settings: Settings) -> dict[str, Any]:
    """The baseline: [lifecycle] read through the same reader, nothing decoded or written
    (how fast this machine's broker and client hand the records over)."""

    async def read() -> tuple[int, float]:
        started, count = time.monotonic(), 0
        async with LogReader(settings, settings.topic("lifecycle")) as reader:
            async for batch in reader.batches():
                count += len(batch)
        return count, time.monotonic() - started

    count, seconds = asyncio.run(read())
    return {
        "events": count,
        "seconds": round(seconds, 2),
        "events_per_second": round(count / seconds) if seconds else None,
    }


def timed_rebuild(settings: Settings, url: str, processes: int | None = None) -> dict[str, Any]:
    store = ProjectionStore.from_url(url)
    try:
        summary = asyncio.run(
            rebuild(settings, settings.topic("lifecycle"), store, processes=processes)
        )
    finally:
        store.close()
    return {
        "events": summary.applied,
        "seconds": round(summary.seconds, 2),
        "events_per_second": round(summary.applied / summary.seconds) if summary.seconds else None,
        "requests": summary.requests,
    }


def timed_verify(settings: Settings, processes: int | None = None) -> dict[str, Any]:
    checked = asyncio.run(
        verify(
            settings,
            settings.topic("requests"),
            settings.topic("lifecycle"),
            Policy(),
            processes=processes,
        )
    )
    return {
        "recorded": checked.recorded,
        "matched": checked.matched,
        "differences": len(checked.differences),
        "seconds": round(checked.seconds, 2),
        "events_per_second": round(checked.recorded / checked.seconds) if checked.seconds else None,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, and every run's rate beside it (this machine is shared:
    one run alone says little)."""
    ranked = sorted(runs, key=lambda run: run["events_per_second"] or 0)
    return {**ranked[len(ranked) // 2], "runs": [run["events_per_second"] for run in runs]}


def run_replay(
    requests: int,
    with_postgres: bool = True,
    repeat: int = 3,
    *,
    bootstrap: str | None = None,
    postgres_server: str | None = None,
) -> dict[str, Any]:
    """Write the log, then time each measure ``repeat`` times. ``bootstrap``: a running Kafka
    (default: an embedded broker of its own); ``postgres_server``: a running PostgreSQL."""
    root = Path(tempfile.mkdtemp(prefix="talkstream-replay-"))
    broker = Broker(root, bootstrap, Settings().kafka_version)
    broker.start()
    try:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap,
            app_id=f"replay{uuid.uuid4().hex[:8]}",
            partitions=PARTITIONS,
        )
        asyncio.run(ensure_topics(settings))
        started = time.monotonic()
        requests_log, lifecycle = synthetic_log(requests, int(time.time()))
        asyncio.run(produce(settings, requests_log, lifecycle))
        written_s = time.monotonic() - started
        result: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tree": source_tree(PROJECT_ROOT),
            "machine": describe(broker.describe),
            "requests": requests,
            "lifecycle_events": len(lifecycle),
            "requests_messages": len(requests_log),
            "log_written_s": round(written_s, 1),
            "repeat": repeat,
            "processes": default_processes(),
        }

        def sqlite(name: str, processes: int | None = None) -> dict[str, Any]:
            return timed_rebuild(settings, f"sqlite:///{root / f'{name}.sqlite3'}", processes)

        # each with its default processes (one per core) and, beside it, all in one process
        measures: dict[str, Callable[[int], dict[str, Any]]] = {
            "read_only": lambda _: timed_read(settings),
            "sqlite_one_process": lambda i: sqlite(f"alone{i}", 1),
            "sqlite": lambda i: sqlite(f"replay{i}"),
        }
        if with_postgres:
            measures["postgresql"] = lambda _: timed_postgres(settings, postgres_server)
        measures["verify_one_process"] = lambda _: timed_verify(settings, 1)
        measures["verify"] = lambda _: timed_verify(settings)
        for name, measure in measures.items():  # each a fresh database
            result[name] = median_of([measure(i) for i in range(repeat)])
        return result
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="6 lifecycle events each")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median counts")
    args = parser.parse_args()
    result = run_replay(args.requests, with_postgres=not args.no_postgres, repeat=args.repeat)
    result["command"] = (
        f"python -m bench.replay --requests {args.requests} --repeat {args.repeat}"
        + (" --no-postgres" if args.no_postgres else "")
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "replay-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

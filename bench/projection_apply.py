"""What a replay's writes cost in SQLite, with NULLs bound through sqlite3's adaptation
protocol (the baseline) and through the adapter the store registers, side by side.

    python -m bench.projection_apply --requests 20000 --rounds 3

The lifecycle events of ``--requests`` webhooks (``bench.replay``'s synthetic log, received
to published: six each) are decoded once; each run applies them to a fresh SQLite file as
``talkstream replay`` does (``ProjectionStore.apply`` in batches of ``APPLY_BATCH``, into an
empty store), and is timed in this process's CPU seconds, which a shared machine's other
tenants disturb less than wall time. The two ways alternate (A B B A per round); every run is
listed (``bench/PROFILE.md``, sixteenth round).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench.replay import synthetic_log
from models.events import LifecycleEvent
from streams.codecs import decode
from streams.ops.replay import APPLY_BATCH
from streams.projection.rows import Sourced
from streams.projection.store import ProjectionStore

NULL_ADAPTER = (type(None), sqlite3.PrepareProtocol)


def events_of(requests: int) -> list[Sourced]:
    _, lifecycle = synthetic_log(requests, int(time.time()))
    return [
        Sourced("lifecycle", 0, offset, decode(LifecycleEvent, value))
        for offset, value in enumerate(lifecycle)
    ]


def timed_apply(events: list[Sourced], where: Path, *, adapter: bool) -> float:
    """CPU seconds to apply ``events`` to a fresh SQLite file at ``where``."""
    store = ProjectionStore.from_url(f"sqlite:///{where}")  # registers the adapter
    registered = sqlite3.adapters.pop(NULL_ADAPTER)
    try:
        if adapter:
            sqlite3.adapters[NULL_ADAPTER] = registered
        rebuilt: set[str] = set()
        started = time.process_time()
        applied = sum(
            store.apply(events[i : i + APPLY_BATCH], rebuilt)
            for i in range(0, len(events), APPLY_BATCH)
        )
        seconds = time.process_time() - started
    finally:
        sqlite3.adapters[NULL_ADAPTER] = registered
        store.close()
    assert applied == len(events), f"applied {applied} of {len(events)}"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.projection_apply", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=20_000, help="6 lifecycle events each")
    parser.add_argument("--rounds", type=int, default=3, help="each runs A B B A")
    args = parser.parse_args()
    events = events_of(args.requests)
    runs: dict[str, list[float]] = {"protocol": [], "adapter": []}
    with tempfile.TemporaryDirectory(prefix="talkstream-apply-") as root:
        for n in range(args.rounds):
            for i, way in enumerate(("protocol", "adapter", "adapter", "protocol")):
                where = Path(root) / f"apply-{n}-{i}.sqlite3"
                runs[way].append(timed_apply(events, where, adapter=way == "adapter"))
                print(f"round {n + 1} {way:<8} {runs[way][-1]:.2f} s CPU", flush=True)
    print(f"\n{len(events):,} lifecycle events applied to a fresh SQLite file, CPU seconds:")
    print("| NULLs bound | runs | median | events/s of CPU |")
    print("|---|---|---|---|")
    for way, label in (("protocol", "through the protocol"), ("adapter", "by the adapter")):
        median = statistics.median(runs[way])
        listed = ", ".join(f"{s:.2f}" for s in runs[way])
        print(f"| {label} | {listed} | {median:.2f} | {len(events) / median:,.0f} |")


if __name__ == "__main__":
    main()

"""A Talkable outage of minutes, measured: every event lands, and how many POSTs it cost.

    python -m bench.outage --seconds 600 --events 60      (about the outage plus a minute)

Starts a broker, the stand-ins, a worker and an ingress (as ``talkstream bench`` does), makes
the Talkable stand-in answer 503 to every call for ``--seconds``, sends ``--events`` webhooks
at the start of it, and waits until every request is terminal. Writes
``bench/results/outage-latest.json``; ``talkstream bench --render`` shows it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load
from bench.observe import LifecycleWatch
from bench.report import RESULTS_DIR
from bench.system import Broker, Deployment, http_json
from streams.settings import Settings
from streams.topics import ensure_topics

PARTITIONS = 4


def run_outage(seconds: float, events: int, circuit_max_open: float | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="talkstream-outage-"))
    broker = Broker(root, None, Settings().kafka_version)
    broker.start()
    try:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap,
            app_id=f"outage{uuid.uuid4().hex[:8]}",
            partitions=PARTITIONS,
        )
        system = Deployment(root, settings, workers=1)
        if circuit_max_open is not None:
            system.env["TALKSTREAM_CIRCUIT_MAX_OPEN_SECONDS"] = str(circuit_max_open)
        asyncio.run(ensure_topics(settings))
        system.start()
        try:
            return asyncio.run(_measure(system, seconds, events))
        finally:
            system.stop()
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _measure(system: Deployment, seconds: float, events: int) -> dict[str, Any]:
    watch = LifecycleWatch(system.kafka_options, system.topic("lifecycle"), PARTITIONS)
    await watch.start()
    try:
        back_at = time.time() + seconds
        http_json("POST", f"{system.talkable_root}/_control", {"down_until": back_at})
        now = int(time.time())
        bodies = load.encode_all(
            [
                load.webhook("outage", i, site="outage-site", email=f"p{i}@outage.example.com",
                             now=now, limit=10)
                for i in range(events)
            ]
        )  # fmt: skip
        shots = await load.blast(system.ingress_url, bodies, 8, lambda _: None)
        ids = [s.request_id for s in shots if s.status == 202 and s.request_id]
        missing = await watch.wait_terminal(ids, seconds + 600, lambda _: None)
        done_at = time.time()
        states = watch.states(ids)
    finally:
        await watch.stop()
    calls = http_json("GET", f"{system.talkable_root}/_calls", timeout=30)
    posts = [c for c in calls if str(c.get("path", "")).endswith("/origins/event")]
    landed = [c for c in posts if c.get("status") in (200, 201)]
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "outage_seconds": seconds,
        "events": events,
        "accepted": len(ids),
        "states": dict(states),
        "lost": len(missing),
        "posts": len(posts),
        "posts_per_event": round(len(posts) / max(len(ids), 1), 2),
        "posts_by_status": dict(Counter(str(c.get("status")) for c in posts)),
        "all_landed_s_after_recovery": round(done_at - back_at, 1),
        "first_landed_s_after_recovery": round(
            min((c["at"] for c in landed), default=back_at) - back_at, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long Talkable is down")
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--circuit-max-open", type=float, default=None)
    args = parser.parse_args()
    result = run_outage(args.seconds, args.events, args.circuit_max_open)
    result["command"] = "python -m bench.outage " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "outage-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What an upstream call costs the executor's scheduler when it knows many targets, side by side.

    python -m bench.known_targets --known 20 1000 10000

A scheduler keeps every target it has called (an OpenAI key, a Talkable site: what it learned
of the target's limits) while only a few have queued work at a time: a deployment for many
sites. For each ``--known`` figure, that many targets are called once and answered (idle,
remembered); then ``--calls`` calls for ``--busy`` targets go through the same scheduler, each
answered a millisecond later, and the process's CPU time per call is printed. The first figure
is the baseline: a scheduler that knows only its busy targets.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from streams.upstream.limits import Limits
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Job, Outcome, Scheduler


async def cpu_per_call(known: int, busy: int, calls: int) -> float:
    """CPU microseconds per call through a scheduler that knows ``known`` targets."""
    scheduler = Scheduler(
        "bench",
        max_in_flight=1024,
        max_wait_s=600,
        refusal_s=60,
        pacer_config=PacerConfig(),
    )
    dispatcher = asyncio.create_task(scheduler.run())
    reported, expected, all_reported = 0, 0, asyncio.Event()

    async def call() -> tuple[str, Limits | None]:
        await asyncio.sleep(0.001)
        return "ok", None

    async def report(_: Outcome[Any]) -> None:
        nonlocal reported
        reported += 1
        if reported == expected:
            all_reported.set()

    def submit(target: str, key: str) -> None:
        job = Job(key=key, attempt=1, scope="model", cost=0, issued_s=scheduler.now(),
                  call=call, report=report)  # fmt: skip
        scheduler.submit(target, job)

    def expect(count: int) -> None:
        nonlocal reported, expected
        reported, expected = 0, count
        all_reported.clear()

    try:
        expect(max(known, busy))
        for i in range(expected):
            submit(f"target{i}", f"first{i}")
        await all_reported.wait()
        expect(calls)
        started = time.process_time()
        for i in range(calls):
            submit(f"target{i % busy}", f"call{i}")
            await asyncio.sleep(0)  # as the executor hands over one record at a time
        await all_reported.wait()
        return (time.process_time() - started) / calls * 1e6
    finally:
        dispatcher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--known", type=int, nargs="+", default=[20, 1_000, 10_000])
    parser.add_argument("--busy", type=int, default=20, help="targets with calls to make")
    parser.add_argument("--calls", type=int, default=5_000)
    args = parser.parse_args()
    if args.busy < 1 or args.calls < 1 or min(args.known) < 0:
        parser.error("--busy and --calls must be at least 1, --known at least 0")
    for known in args.known:
        cost = asyncio.run(cpu_per_call(known, args.busy, args.calls))
        print(f"{max(known, args.busy):>7,} targets known, {args.busy} busy: "
              f"{cost:,.1f} µs of CPU per call")  # fmt: skip


if __name__ == "__main__":
    main()

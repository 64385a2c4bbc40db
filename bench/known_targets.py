"""What an upstream call costs the executor's scheduler when it knows many targets, side by side.

    python -m bench.known_targets --known 20 1000 10000

A scheduler keeps every target it has called (an OpenAI key, a Talkable site: what it learned
of the target's limits) while only a few have queued work at a time: a deployment for many
sites. For each ``--known`` figure, that many targets are called once and answered (idle,
remembered); then ``--calls`` calls for ``--busy`` targets go through the same scheduler, each
answered a millisecond later, and the process's CPU time per call is printed. The first figure
is the baseline: a scheduler that knows only its busy targets.

    python -m bench.known_targets --known 20 --throttled 0 1000

``--scrape``: instead, what one /metrics look at the scheduler costs at each ``--known``.

    python -m bench.known_targets --scrape --known 100 1000 10000

``--throttled``: that many more targets each have a command queued that their pacer holds (a
429 that said to wait an hour): many sites at their rate limit at once. The first figure is
the baseline: none.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from streams.errors import UpstreamError
from streams.observability import MAX_TARGETS
from streams.upstream.limits import Limits
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Job, Outcome, Scheduler


async def cpu_per_call(known: int, busy: int, calls: int, throttled: int = 0) -> float:
    """CPU microseconds per call through a scheduler that knows ``known`` targets, while
    ``throttled`` others wait out a 429."""
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

    held, all_held = 0, asyncio.Event()

    async def throttle() -> tuple[str, Limits | None]:
        nonlocal held
        held += 1
        if held == throttled:
            all_held.set()
        raise UpstreamError("429", reason="RateLimited", status=429, retriable=True,
                            throttle=True, limits=Limits(retry_after_s=3600.0))  # fmt: skip

    async def report(_: Outcome[Any]) -> None:
        nonlocal reported
        reported += 1
        if reported == expected:
            all_reported.set()

    def submit(target: str, key: str, work: Any = call) -> None:
        job = Job(key=key, attempt=1, scope="model", cost=0, issued_s=scheduler.now(),
                  call=work, report=report)  # fmt: skip
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
        for i in range(throttled):  # asked once, told to wait: queued again, held
            submit(f"held{i}", f"held{i}", throttle)
        if throttled:
            await all_held.wait()
        expect(calls)
        started = time.process_time()
        for i in range(calls):
            submit(f"target{i % busy}", f"call{i}")
            await asyncio.sleep(0)  # as the executor hands over one record at a time
        await all_reported.wait()
        return (time.process_time() - started) / calls * 1e6
    finally:
        dispatcher.cancel()


async def scrape_ms(known: int, count: int = MAX_TARGETS, looks: int = 20) -> tuple[float, float]:
    """CPU milliseconds of one /metrics look at a scheduler that knows ``known`` idle targets:
    every target described and sorted (how the collector did it, the baseline), and
    ``Scheduler.busiest`` (how it does it); both must find the same busiest targets."""
    scheduler = Scheduler("bench", max_in_flight=1024, max_wait_s=600, refusal_s=60,
                          pacer_config=PacerConfig())  # fmt: skip
    dispatcher = asyncio.create_task(scheduler.run())
    left, done = known, asyncio.Event()

    async def call() -> tuple[str, Limits | None]:
        return "ok", None

    async def report(_: Outcome[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    try:
        for i in range(known):
            scheduler.submit(f"target{i}", Job(key=f"k{i}", attempt=1, scope="model", cost=0,
                             issued_s=scheduler.now(), call=call, report=report))  # fmt: skip
        await done.wait()
        started = time.process_time()
        for _ in range(looks):
            every = sorted(scheduler.snapshot(), key=_load, reverse=True)
        described = (time.process_time() - started) / looks * 1e3
        started = time.process_time()
        for _ in range(looks):
            top, _rest = scheduler.busiest(count)
        busiest = (time.process_time() - started) / looks * 1e3
        assert top == every[:count]
        return described, busiest
    finally:
        dispatcher.cancel()


def _load(described: dict[str, Any]) -> tuple[int, int]:
    return described["queued"] + described["in_flight"], described["throttled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--known", type=int, nargs="+", default=[20, 1_000, 10_000])
    parser.add_argument("--busy", type=int, default=20, help="targets with calls to make")
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--throttled", type=int, nargs="+", default=[0],
                        help="more targets, each waiting out a 429")  # fmt: skip
    parser.add_argument("--scrape", action="store_true",
                        help="instead: what one /metrics look costs at each --known")  # fmt: skip
    args = parser.parse_args()
    if args.scrape:
        for known in args.known:
            described, busiest = asyncio.run(scrape_ms(known))
            print(f"{known:>7,} targets known: a /metrics look {described:,.2f} ms describing "
                  f"every target, {busiest:,.2f} ms with the busiest {MAX_TARGETS}")  # fmt: skip
        return
    if args.busy < 1 or args.calls < 1 or min(args.known) < 0 or min(args.throttled) < 0:
        parser.error("--busy and --calls must be at least 1, --known and --throttled at least 0")
    for known in args.known:
        for throttled in args.throttled:
            cost = asyncio.run(cpu_per_call(known, args.busy, args.calls, throttled))
            print(f"{max(known, args.busy):>7,} targets known, {args.busy} busy, "
                  f"{throttled:,} throttled: {cost:,.1f} µs of CPU per call")  # fmt: skip


if __name__ == "__main__":
    main()

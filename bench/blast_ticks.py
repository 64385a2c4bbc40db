"""What the worker's once-a-second looks cost its loop with a blast in flight, side by side.

    python -m bench.blast_ticks --in-flight 100000

A blast queued behind one rate-limited key leaves ``--in-flight`` requests waiting, each
with a deadline in the ledger and a command in its target's queue. Every second:

- the ledger's timer asks its deadline index what fell due. Until the eleventh round of
  ``bench/PROFILE.md`` the index looked at every flight each time (``ScannedIndex`` here, the
  baseline); now the flights sit in a heap by when they fall due
  (``streams.agents.deadlines.DeadlineIndex``). Deadlines are spread over 15 minutes, and a
  tenth of the flights are re-decided between ticks;
- each executor's scheduler looks for commands that waited longer than the maximum wait. It
  swept every queued command (``Scheduler._settle`` on each queue, still what a refusal
  does: the baseline); now it takes the oldest issued first, until one has not waited too
  long (``Scheduler._time_out``). Commands were issued over the last 15 minutes.

Each pair gets the same work in the same order, and only the looks are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from types import SimpleNamespace
from typing import Any, cast

from models.ledger import PersonState
from models.lifecycle import State
from streams.agents.deadlines import DeadlineIndex
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Job, Scheduler

STAGES = {"generating": 900_000, "publishing": 900_000}
GRACE_MS = 30_000
Flights = dict[str, tuple[int, int, str]]  # request id -> (deadline, attempt, stage)


class ScannedIndex:
    """The index as it was: each tick looked at every flight (and pruned its signals to the
    ones still in flight)."""

    def __init__(self, stages: dict[str, int], grace_ms: int) -> None:
        self.due: dict[str, Flights] = {}
        self.signalled: set[tuple[str, int]] = set()
        self.stages, self.grace_ms = stages, grace_ms
        self.rebalanced_at: int | None = None

    def effective(self, deadline: int, stage: str) -> int:
        span = self.stages[stage]
        if self.rebalanced_at is None or deadline - span >= self.rebalanced_at:
            return deadline
        return min(deadline, self.rebalanced_at + self.grace_ms)

    def track(self, person: str, flights: Flights) -> None:
        if flights:
            self.due[person] = flights
        else:
            self.due.pop(person, None)

    def overdue(self, now: int) -> set[tuple[str, str, int, str]]:
        found, live = set(), set()
        for person, flights in self.due.items():
            for rid, (deadline, attempt, stage) in flights.items():
                live.add((rid, attempt))
                if self.effective(deadline, stage) <= now and (rid, attempt) not in self.signalled:
                    self.signalled.add((rid, attempt))
                    found.add((person, rid, attempt, stage))
        self.signalled &= live
        return found


def state_with(flights: Flights) -> PersonState:
    """A person's state as far as the index reads it: the flights."""
    inflight = {
        rid: SimpleNamespace(deadline_ms=deadline, attempt=attempt, state=State(stage))
        for rid, (deadline, attempt, stage) in flights.items()
    }
    return cast(PersonState, SimpleNamespace(inflight=inflight))


def deadline_ticks(in_flight: int, ticks: int, seed: int) -> tuple[float, float, int, int]:
    """(scan ms per tick, heap ms per tick, flights the scan signalled, the heap signalled);
    each index gets the same decisions in the same order, and only the ticks are timed."""
    rng, now = random.Random(seed), 1_700_000_000_000
    people = [f"site{i % 50}:p{i}@example.com" for i in range(in_flight)]
    flights = {p: {f"r{i}": (now + rng.randrange(900_000), 1, "generating")}
               for i, p in enumerate(people)}  # fmt: skip
    scan, heap = ScannedIndex(STAGES, GRACE_MS), DeadlineIndex(STAGES, GRACE_MS)
    for person, own in flights.items():
        scan.track(person, own)
        heap.track(person, state_with(own))
    scan_s = heap_s = 0.0
    scan_found = heap_found = 0
    for _ in range(ticks):
        for person in rng.sample(people, in_flight // 10):  # re-decided: a new attempt
            [(rid, (_, attempt, stage))] = flights[person].items()
            flights[person] = {rid: (now + 900_000, attempt + 1, stage)}
            scan.track(person, flights[person])
            heap.track(person, state_with(flights[person]))
        now += 1000
        started = time.perf_counter()
        scan_found += len(scan.overdue(now))
        scan_s += time.perf_counter() - started
        started = time.perf_counter()
        heap_found += len(heap.overdue(now))
        heap_s += time.perf_counter() - started
    return scan_s * 1000 / ticks, heap_s * 1000 / ticks, scan_found, heap_found


def scheduler_looks(queued: int, looks: int) -> tuple[float, float, int, int]:
    """(sweep ms per look, heap ms per look, commands the sweep timed out, the heap did):
    two schedulers with the same queue, of which nothing may start."""
    return asyncio.run(_scheduler_looks(queued, looks))


async def _scheduler_looks(queued: int, looks: int) -> tuple[float, float, int, int]:
    now = [1_000_000.0]
    ended = [0, 0]

    async def never() -> tuple[Any, None]:
        raise AssertionError("nothing starts: no slot")

    def scheduler() -> Scheduler:
        return Scheduler(
            "blast",
            max_in_flight=0,
            max_wait_s=900.0,
            refusal_s=60.0,
            pacer_config=PacerConfig(),
            clock=lambda: now[0],
        )

    def report(which: int) -> Any:
        async def counted(_: Any) -> None:
            ended[which] += 1

        return counted

    swept, looked = scheduler(), scheduler()
    for which, s in enumerate((swept, looked)):
        for i in range(queued):  # issued over the last 15 minutes, oldest first
            issued = now[0] - 900.0 + 900.0 * i / queued
            s.submit("key", Job(f"r{i}", 1, "model", 0.0, issued, never, report(which)))
    sweep_s = heap_s = 0.0
    for _ in range(looks):
        now[0] += 1.0
        started = time.perf_counter()
        for target in list(swept._waiting):
            swept._settle(target, now[0])
        sweep_s += time.perf_counter() - started
        started = time.perf_counter()
        looked._time_out(now[0])
        heap_s += time.perf_counter() - started
        await asyncio.sleep(0)  # the reports
    await asyncio.sleep(0)
    return sweep_s * 1000 / looks, heap_s * 1000 / looks, ended[0], ended[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=30, help="looks, a second apart")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.in_flight < 10 or args.ticks < 1 or args.runs < 1:
        parser.error("--in-flight must be at least 10, --ticks and --runs at least 1")
    print(f"{args.in_flight:,} requests in flight, {args.ticks} looks a second apart")
    for number in range(1, args.runs + 1):
        scan_ms, heap_ms, scanned, found = deadline_ticks(args.in_flight, args.ticks, number)
        print(
            f"run {number}: deadlines: every flight scanned {scan_ms:,.2f} ms a look, "
            f"heap {heap_ms:,.3f} ms (fell due: {scanned:,} and {found:,})"
        )
        sweep_ms, heap_ms, swept, found = scheduler_looks(args.in_flight, args.ticks)
        print(
            f"run {number}: long waits: every command swept {sweep_ms:,.2f} ms a look, "
            f"oldest first {heap_ms:,.3f} ms (timed out: {swept:,} and {found:,})"
        )


if __name__ == "__main__":
    main()

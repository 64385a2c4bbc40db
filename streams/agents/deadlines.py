"""The ledger's deadline index: what this process knows to be in flight, by person, and which
deadlines it signalled (``DeadlineExpired`` to the person's partition, which the ledger then
decides in stream context). The ledger tracks each decision here; after a start or a rebalance
it rebuilds the index from its recovered table (``streams.agents.ledger.TableScan``).
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, NamedTuple

from models.events import DeadlineExpired
from models.ledger import PersonState


class DeadlineIndex:
    """What this process knows to be in flight, by person, and which deadlines it signalled.

    A worker that died took its calls with it; whoever takes its executors' partitions reads
    their marks and tells the ledger at once what it lost (``streams.agents.lost``), and
    a live worker that gives partitions up finishes its running calls and hands its queued
    commands over: a rebalance alone loses nothing, so work keeps its whole deadline through
    one. With ``grace_ms`` (``REBALANCE_GRACE_SECONDS``, off by default), work issued before
    the rebalance completed is given only that much more: a safety net for what no mark
    holds (more calls running at a hand-over than a mark lists; those it lists, a worker that
    dies after giving partitions up has told lost by their owner once it left the group),
    at the price of calling again, after each rebalance, every call slower than the grace and
    every command queued longer, an attempt of each spent.

    The timer asks every second; the flights sit in a heap by when they fall due, so a tick
    costs what is due, not what is in flight (a blast queued behind one rate-limited key can
    be a hundred thousand flights: scanning them all took the loop ~90 ms a tick). An entry
    that a newer decision replaced stays in the heap until it surfaces, and is then dropped;
    the heap is rebuilt from the flights when stale entries outnumber live ones, and when a
    rebalance changes when older flights fall due.
    """

    def __init__(
        self, stage_deadline_ms: dict[str, int] | None = None, grace_ms: int | None = None
    ) -> None:
        self._due: dict[str, dict[str, Flight]] = {}
        self._heap: list[tuple[int, str, str, Flight]] = []  # (falls due, person, request, flight)
        self._live = 0  # flights in _due
        self._signalled: set[tuple[str, int]] = set()
        self._cleared = False
        self._ended: list[tuple[str, str, int]] = []  # attempts that left since the last tick
        self._stage_deadline_ms = stage_deadline_ms or {}
        self._grace_ms = grace_ms
        self._rebalanced_at: int | None = None

    def rebalanced(self, now: int) -> None:
        if self._grace_ms is None:
            return  # work keeps its deadline
        self._rebalanced_at = now
        self._rebuild()

    def _effective(self, deadline: int, stage: str) -> int:
        rebalanced, span = self._rebalanced_at, self._stage_deadline_ms.get(stage)
        if rebalanced is None or span is None or deadline - span >= rebalanced:
            return deadline  # issued after the last rebalance (or no rebalance seen)
        assert self._grace_ms is not None  # no rebalance is noted without it
        return min(deadline, rebalanced + self._grace_ms)

    def clear(self) -> None:
        """Forget every flight (a scan of the recovered table tracks them again); the signals
        of those it does not track again are dropped at the next tick."""
        self._due.clear()
        self._heap.clear()
        self._live = 0
        self._cleared = True

    def track(self, person: str, state: PersonState) -> None:
        before = self._due.get(person, {})
        now = {
            rid: Flight(f.deadline_ms, f.attempt, f.state.value)
            for rid, f in state.inflight.items()
        }
        for rid, flight in now.items():
            if before.get(rid) != flight:
                self._push(person, rid, flight)
        for rid, flight in before.items():  # a signal goes at the next tick, if still ended
            ended = rid not in now or now[rid].attempt != flight.attempt
            if ended and (rid, flight.attempt) in self._signalled:
                self._ended.append((person, rid, flight.attempt))
        self._live += len(now) - len(before)
        if now:
            self._due[person] = now
        else:
            self._due.pop(person, None)
        if len(self._heap) > 2 * self._live + 1024:
            self._rebuild()

    def overdue(self, now: int) -> list[DeadlineExpired]:
        self._forget_ended()
        found, heap = [], self._heap
        while heap and heap[0][0] <= now:
            _, person, request_id, flight = heapq.heappop(heap)
            if self._due.get(person, {}).get(request_id) != flight:
                continue  # replaced by a newer decision, or ended
            if (request_id, flight.attempt) in self._signalled:
                continue
            self._signalled.add((request_id, flight.attempt))
            found.append(
                DeadlineExpired(
                    request_id=request_id,
                    person=person,
                    attempt=flight.attempt,
                    stage=flight.stage,
                    at_ms=now,
                )
            )
        return found

    def delivered(self, expired: DeadlineExpired, delivery: asyncio.Future[Any]) -> None:
        """A signal the producer gave up on (Kafka without a leader for that long) is not in
        the log: it goes again at the next tick, if its attempt is still in flight."""
        if not delivery.cancelled() and delivery.exception() is None:
            return
        self._signalled.discard((expired.request_id, expired.attempt))
        flight = self._due.get(expired.person, {}).get(expired.request_id)
        if flight is not None and flight.attempt == expired.attempt:
            self._push(expired.person, expired.request_id, flight)

    def _forget_ended(self) -> None:
        """The signals of attempts no longer in flight (until then a signalled attempt is not
        signalled again, even if it ended and came back)."""
        if self._cleared:  # only the flights the scan tracked again keep theirs
            self._cleared = False
            self._signalled &= {
                (rid, f.attempt) for flights in self._due.values() for rid, f in flights.items()
            }
        for person, rid, attempt in self._ended:
            flight = self._due.get(person, {}).get(rid)
            if flight is None or flight.attempt != attempt:
                self._signalled.discard((rid, attempt))
        self._ended.clear()

    def _push(self, person: str, request_id: str, flight: Flight) -> None:
        due_at = self._effective(flight.deadline_ms, flight.stage)
        heapq.heappush(self._heap, (due_at, person, request_id, flight))

    def _rebuild(self) -> None:
        self._heap = [
            (self._effective(f.deadline_ms, f.stage), person, rid, f)
            for person, flights in self._due.items()
            for rid, f in flights.items()
        ]
        heapq.heapify(self._heap)


class Flight(NamedTuple):
    """One request's attempt in flight, as the deadline index keeps it."""

    deadline_ms: int
    attempt: int
    stage: str

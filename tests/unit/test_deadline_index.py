"""The deadline timer's index: overdue work is signalled once per attempt, and after a
rebalance (when faust may have dropped executors' buffered commands) older work is given a
short grace instead of the rest of its deadline; the index is rebuilt from the table once a
recovery completes, and never by reading the whole table now and then."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import LeaderNotAvailableError
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.blast_ticks import ScannedIndex, deadline_ticks, state_with
from bench.table_scan import every_state_decoded, in_flight_decoded, table_of
from models.events import DeadlineExpired
from models.ledger import PersonState, Policy
from streams.agents.deadlines import DeadlineIndex
from streams.agents.ledger import NOTHING_IN_FLIGHT, OFFSET_MARK, TableScan
from streams.agents.ledger import Ledger as StreamsLedger
from streams.codecs import decode, encode
from streams.observability import WorkerMetrics
from streams.runtime import Topics
from tests.unit.domain_builders import (
    PERSON,
    T0,
    Ledger,
    generated,
    publication_failed,
    published,
    received,
)

POLICY = Policy(generation_deadline_ms=120_000, publish_deadline_ms=60_000, max_wait_ms=0)
STAGES = {"generating": 120_000, "publishing": 60_000}
ISSUED = T0 * 1000


def index_with(
    *request_ids: str, issued: int = ISSUED, grace_ms: int | None = 30_000
) -> DeadlineIndex:
    ledger = Ledger(policy=POLICY, now_ms=issued)
    for request_id in request_ids:
        ledger.send(received(request_id))
    index = DeadlineIndex(STAGES, grace_ms=grace_ms)
    assert ledger.state is not None
    index.track(PERSON, ledger.state)
    return index


def test_overdue_work_is_signalled_once_per_attempt() -> None:
    index = index_with("req-1")
    assert index.overdue(ISSUED + 119_999) == []
    [expired] = index.overdue(ISSUED + 120_000)
    assert (expired.request_id, expired.attempt, expired.stage) == ("req-1", 1, "generating")
    assert index.overdue(ISSUED + 130_000) == []  # not again while the attempt is the same


async def test_a_signal_the_producer_gave_up_on_goes_again_at_the_next_tick() -> None:
    """Kafka without a leader for the producer's request timeout: the DeadlineExpired was
    never written, and the request would wait for a signal already counted as sent."""
    index = index_with("req-1", "req-2")
    signals = index.overdue(ISSUED + 120_000)
    assert len(signals) == 2
    loop = asyncio.get_running_loop()
    lost, landed = loop.create_future(), loop.create_future()
    lost.set_exception(LeaderNotAvailableError())
    landed.set_result(None)
    index.delivered(signals[0], lost)
    index.delivered(signals[1], landed)

    [again] = index.overdue(ISSUED + 121_000)
    assert again == signals[0].model_copy(update={"at_ms": ISSUED + 121_000})
    assert index.overdue(ISSUED + 122_000) == []  # then once, as any signal


def test_after_a_rebalance_older_work_gets_only_the_grace() -> None:
    index = index_with("req-1")
    index.rebalanced(ISSUED + 10_000)
    assert index.overdue(ISSUED + 39_999) == []
    [expired] = index.overdue(ISSUED + 40_000)  # rebalance + 30 s, not issue + 120 s
    assert expired.request_id == "req-1"


def test_without_a_grace_a_rebalance_changes_no_deadline() -> None:
    """The default: a rebalance loses no work (a dead worker's is told lost by whoever takes
    its executors' partitions), so a call still running, or a command still queued behind its
    target's limits, is not called again for it."""
    index = index_with("req-1", grace_ms=None)
    index.rebalanced(ISSUED + 10_000)
    assert index.overdue(ISSUED + 119_999) == []
    [expired] = index.overdue(ISSUED + 120_000)
    assert expired.request_id == "req-1"


def test_work_issued_after_the_rebalance_keeps_its_whole_deadline() -> None:
    index = index_with("req-1", issued=ISSUED + 20_000)
    index.rebalanced(ISSUED + 10_000)
    assert index.overdue(ISSUED + 100_000) == []
    assert len(index.overdue(ISSUED + 140_000)) == 1


# --- the scan of the recovered table ---------------------------------------------------------


class CountedTable(dict[bytes, bytes]):
    """A table that counts how often it is read whole."""

    scans = 0

    def items(self):  # type: ignore[override]
        self.scans += 1
        return super().items()


def stored_states() -> dict[str, PersonState]:
    """A person with a generation in flight, one whose request ended, one parked."""
    in_flight = Ledger(policy=POLICY, now_ms=ISSUED)
    in_flight.send(received("req-1"))
    done = Ledger(policy=POLICY, now_ms=ISSUED)
    for message in (received("req-2"), generated("req-2"), published("req-2")):
        done.send(message)
    parked = Ledger(policy=POLICY, now_ms=ISSUED)
    for message in (received("req-3"), generated("req-3"), publication_failed("req-3")):
        parked.send(message)
    states = {"acme:ann": in_flight.state, "acme:bob": done.state, "acme:cat": parked.state}
    assert all(state is not None for state in states.values())
    return states  # type: ignore[return-value]


def scanned_ledger(table: dict[bytes, bytes]) -> StreamsLedger:
    async def unused(*_: object, **__: object) -> None:
        raise AssertionError("not read here")

    return StreamsLedger(
        table,
        POLICY,
        Topics(requests=Sent(), generate=None, completions=None, lifecycle=None, deadletter=None),
        unused,  # type: ignore[arg-type]
        30_000,
        None,  # type: ignore[arg-type]
        WorkerMetrics(),
        FixedClock(ISSUED),
    )


class Sent:
    def __init__(self) -> None:
        self.values: list[DeadlineExpired] = []

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.values.append(decode(DeadlineExpired, value))
        delivered = asyncio.get_running_loop().create_future()  # acknowledged
        delivered.set_result(None)
        return delivered


class FixedClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


def test_the_scan_decodes_only_the_people_with_work_in_flight() -> None:
    states = stored_states()
    raw = {person: encode(state) for person, state in states.items()}
    assert NOTHING_IN_FLIGHT not in raw["acme:ann"]
    assert NOTHING_IN_FLIGHT in raw["acme:bob"] and NOTHING_IN_FLIGHT in raw["acme:cat"]
    table = {person.encode(): value for person, value in raw.items()}
    table[OFFSET_MARK + b"0"] = b"12"
    index = DeadlineIndex(STAGES, grace_ms=30_000)
    TableScan(table, index).run()
    [expired] = index.overdue(ISSUED + 120_000)
    assert (expired.person, expired.request_id) == ("acme:ann", "req-1")


async def test_the_timer_reads_the_whole_table_only_after_a_recovery() -> None:
    states = stored_states()
    table = CountedTable({b"acme:ann": encode(states["acme:ann"])})
    ledger = scanned_ledger(table)
    for _ in range(40):  # forty ticks: one scan, at the first
        await ledger.check_deadlines()
    assert table.scans == 1
    ledger.recovered()
    await ledger.check_deadlines()
    await ledger.check_deadlines()
    assert table.scans == 2


async def test_a_recovery_keeps_the_deadlines_of_the_batch_being_decided() -> None:
    """A batch waiting for its outputs' acknowledgements has tracked states the table does
    not hold yet; a scan in that moment must not forget them."""
    states = stored_states()
    ledger = scanned_ledger({})
    ledger._deciding.states[b"acme:ann"] = (states["acme:ann"], None)
    ledger.recovered()
    clock = ledger._clock
    assert isinstance(clock, FixedClock)
    clock.now = ISSUED + 120_000
    await ledger.check_deadlines()
    sent = ledger._topics.requests
    assert [(e.person, e.request_id) for e in sent.values] == [("acme:ann", "req-1")]


async def test_work_another_worker_issued_during_the_rebalance_gets_only_the_grace() -> None:
    """This worker's partitions are revoked when a rebalance begins; the worker that owned a
    partition keeps issuing work until it dies (which the rebalance then waits out). Its last
    work, in flight in the recovered table and lost with its calls, is re-issued the grace
    after the rebalance completed, not at the end of its whole (long) deadline."""
    states = stored_states()
    ledger = scanned_ledger({b"acme:ann": encode(states["acme:ann"])})  # issued at ISSUED
    clock = ledger._clock
    assert isinstance(clock, FixedClock)
    clock.now = ISSUED - 1_000
    ledger.rebalanced()  # revoked: the rebalance begins before the other worker's last work
    clock.now = ISSUED + 5_000
    ledger.recovered()  # complete: the other worker has been dead a while
    sent = ledger._topics.requests
    clock.now = ISSUED + 34_999
    await ledger.check_deadlines()
    assert sent.values == []
    clock.now = ISSUED + 35_000  # the rebalance's end + 30 s, not the issue + 120 s
    await ledger.check_deadlines()
    assert [(e.person, e.request_id) for e in sent.values] == [("acme:ann", "req-1")]


def test_the_scan_benchmark_compares_scans_that_find_the_same_work() -> None:
    table = table_of(200, 0.05, T0)
    assert len(table) == 200
    assert every_state_decoded(table) == in_flight_decoded(table) == 10


# --- the heap against the scan it replaced (bench.blast_ticks times the two) -------------


PEOPLE = ["acme:ann", "beta:bob"]
flights_of_a_person = st.dictionaries(
    st.sampled_from(["req-1", "req-2"]),
    st.tuples(
        st.integers(ISSUED, ISSUED + 200_000).map(lambda ms: ms - ms % 10_000),
        st.integers(1, 2),
        st.sampled_from(["generating", "publishing"]),
    ),
    max_size=2,
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("track"), st.sampled_from(PEOPLE), flights_of_a_person),
        st.tuples(st.just("tick"), st.sampled_from([0, 10_000, 40_000])),
        st.tuples(st.just("rebalanced"), st.sampled_from([0, 10_000, 40_000])),
        st.tuples(
            st.just("rescan"), st.fixed_dictionaries({p: flights_of_a_person for p in PEOPLE})
        ),
    ),
    max_size=40,
)


# an attempt signalled, replaced, seen gone by a tick, then back: it is signalled again
SIGNALLED_REPLACED_AND_BACK = [
    ("track", "acme:ann", {"req-1": (ISSUED, 1, "generating")}),
    ("tick", 0),
    ("track", "acme:ann", {"req-1": (ISSUED + 100_000, 2, "generating")}),
    ("tick", 0),
    ("track", "acme:ann", {"req-1": (ISSUED, 1, "generating")}),
    ("tick", 0),
]


@settings(max_examples=1000, deadline=None)
@given(steps)
@example(SIGNALLED_REPLACED_AND_BACK)
def test_the_heap_signals_what_a_scan_of_every_flight_would(ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of decisions, ticks, rebalances and rescans of the recovered table: each
    tick signals the same flights as the scan did (the order within a tick aside). Time only
    moves forward, and a person's request ids are their own."""
    heap, scan = DeadlineIndex(STAGES, grace_ms=30_000), ScannedIndex(STAGES, 30_000)
    now = ISSUED

    def track(person: str, flights: dict[str, tuple[int, int, str]]) -> None:
        own = {f"{person}/{rid}": flight for rid, flight in flights.items()}
        heap.track(person, state_with(own))
        scan.track(person, own)

    for op in ops:
        if op[0] == "track":
            track(op[1], op[2])
        elif op[0] == "tick":
            now += op[1]
            found = {(e.person, e.request_id, e.attempt, e.stage) for e in heap.overdue(now)}
            assert found == scan.overdue(now)
        elif op[0] == "rebalanced":
            now += op[1]
            heap.rebalanced(now)
            scan.rebalanced_at = now
        else:  # everything forgotten, and the recovered table (as it is now) tracked again
            heap.clear()
            scan.due = {}
            for person, flights in op[1].items():
                track(person, flights)


def test_decisions_that_replace_flights_leave_no_pile_of_stale_entries() -> None:
    """One person's request re-decided a hundred thousand times (each a new deadline): the
    heap keeps the one flight and what was replaced since the last compaction."""
    index = DeadlineIndex(STAGES, grace_ms=30_000)
    for i in range(100_000):
        index.track(PERSON, state_with({"req-1": (ISSUED + 120_000 + i, 1, "generating")}))
    assert len(index._heap) <= 2 * 1 + 1024
    [expired] = index.overdue(ISSUED + 120_000 + 100_000)
    assert expired.request_id == "req-1"


def test_a_second_rebalance_moves_older_work_to_its_own_grace() -> None:
    index = index_with("req-1")
    index.rebalanced(ISSUED + 10_000)
    index.rebalanced(ISSUED + 20_000)  # a flight that fell due at +40 s now falls due at +50 s
    assert index.overdue(ISSUED + 49_999) == []
    [expired] = index.overdue(ISSUED + 50_000)
    assert expired.request_id == "req-1"


def test_the_tick_benchmark_compares_indexes_that_find_the_same_flights() -> None:
    scan_ms, heap_ms, scanned, found = deadline_ticks(300, 60, seed=1)
    assert scanned == found > 0 and scan_ms > 0 and heap_ms > 0

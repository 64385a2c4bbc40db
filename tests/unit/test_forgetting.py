"""People the ledger has not heard of for the fingerprints' retention leave its table
(``models.state.forgettable_at``, ``streams.agents.forgetting``): a soak of ten new people a
second grew the table and its changelog by every person ever seen, for good."""

from __future__ import annotations

import asyncio

from aiokafka.partitioner import DefaultPartitioner

from models.events import RequestReceived
from models.ledger import PersonState, Policy, handle
from models.params import UsageLimit
from models.state import InFlight, Seen, forgettable_at
from models.usage import Window
from streams.agents.forgetting import MARGIN_MS, Forgetting
from streams.agents.ledger import Ledger
from streams.codecs import encode
from streams.observability import WorkerMetrics
from streams.runtime import DeadLetters, Topics
from tests.unit.domain_builders import T0, received
from tests.unit.test_gaps import TOPIC, Event, Rec, Sent, Stream

POLICY = Policy(generation_deadline_ms=120_000, publish_deadline_ms=60_000, max_wait_ms=0)
RETENTION = POLICY.fingerprint_retention_ms
LIFETIME = UsageLimit(
    amount=1,
    duration_in_seconds=10 * 365 * 24 * 3600,
    start_time=T0,
    current_time=T0,
    current_usage_amount=0,
)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


def webhook(person: str, request_id: str, at_ms: int, trigger: str | None) -> RequestReceived:
    return received(request_id, at_ms=at_ms, trigger=trigger).model_copy(update={"person": person})


def ledger(table: dict[bytes, bytes], clock: Clock, partitions: int | None = None) -> Ledger:
    metrics = WorkerMetrics()
    topics = Topics(
        requests=Sent(), generate=Sent(), completions=Sent(), lifecycle=Sent(), deadletter=None
    )
    return Ledger(
        table,
        POLICY,
        topics,
        _no_gaps,
        30_000,
        DeadLetters(Sent(), metrics.dead_letters, clock),
        metrics,
        clock,
        **({} if partitions is None else {"partitions": partitions}),
    )


async def _no_gaps(topic: str, partition: int, start: int, end: int) -> list[Rec]:
    raise AssertionError("no gap here")


def event(partition: int, offset: int, message: RequestReceived) -> Event:
    key = message.person.encode()
    return Event(Rec(TOPIC, partition, offset), key, encode(message))


def test_a_person_not_heard_of_for_the_retention_leaves_the_table_one_in_flight_stays() -> None:
    table: dict[bytes, bytes] = {}
    clock = Clock(T0 * 1000)
    the_ledger = ledger(table, clock)
    quiet = webhook("s:quiet@x.io", "r-quiet", T0 * 1000, trigger="false")  # skipped: done
    busy = webhook("s:busy@x.io", "r-busy", T0 * 1000, trigger=None)  # admitted: in flight
    asyncio.run(the_ledger.consume(Stream([event(3, 0, quiet), event(3, 1, busy)])))
    assert {b"s:quiet@x.io", b"s:busy@x.io"} <= table.keys()

    # the rules forget the quiet one at the retention; the table keeps it a margin more
    clock.now = T0 * 1000 + RETENTION + MARGIN_MS - 1
    later = webhook("s:later@x.io", "r-later", clock.now, trigger="false")
    asyncio.run(the_ledger.consume(Stream([event(3, 2, later)])))
    assert b"s:quiet@x.io" in table

    clock.now += 1
    again = webhook("s:later@x.io", "r-later-2", clock.now, trigger="false")
    elsewhere = webhook("s:other@x.io", "r-other", clock.now, trigger="false")
    asyncio.run(the_ledger.consume(Stream([event(5, 0, elsewhere)])))  # another partition
    assert b"s:quiet@x.io" in table  # deleted in its own partition's stream only
    asyncio.run(the_ledger.consume(Stream([event(3, 3, again)])))
    assert b"s:quiet@x.io" not in table
    assert b"s:busy@x.io" in table  # a request in flight: never forgotten
    assert b"s:later@x.io" in table


def test_a_recovered_table_is_scanned_for_people_to_forget_in_their_own_partition() -> None:
    """After a restart the ledger has stored nothing yet: the people it recovered are found
    by the scan that also rebuilds the deadlines, each in the partition its key maps to."""
    old = PersonState(
        window=Window(start=T0, count=1),
        seen={"r-old": Seen(at_ms=T0 * 1000, delivery_id="d-old")},
    )
    person = b"s:old@x.io"
    table = {person: encode(old)}
    clock = Clock(T0 * 1000 + RETENTION + MARGIN_MS)
    the_ledger = ledger(table, clock, partitions=8)
    asyncio.run(the_ledger.check_deadlines())  # the scan after recovery
    partition = DefaultPartitioner()(person, list(range(8)), list(range(8)))
    other = (partition + 1) % 8
    for p, offset in ((other, 0), (partition, 0)):
        message = webhook(f"s:p{p}@x.io", f"r-{p}", clock.now, trigger="false")
        asyncio.run(the_ledger.consume(Stream([event(p, offset, message)])))
        assert (person in table) is (p == other)


def test_the_rules_judge_a_person_not_heard_of_for_the_retention_as_never_heard_of() -> None:
    """So a replay, which keeps every state, decides as the ledger that deleted it: a window
    of ten years, full, is seeded again from the snapshot Talkable renders."""
    first = received("r-1", at_ms=T0 * 1000, usage_limit=LIFETIME)
    state = handle(None, first, POLICY, T0 * 1000).state
    state = state.model_copy(update={"inflight": {}})  # its text published since
    later_ms = T0 * 1000 + RETENTION
    limit = LIFETIME.model_copy(update={"current_time": later_ms // 1000})
    webhook_later = received("r-2", at_ms=later_ms, usage_limit=limit)
    assert handle(state, webhook_later, POLICY, later_ms) == handle(
        None, webhook_later, POLICY, later_ms
    )
    within = received("r-2", at_ms=later_ms - 1, usage_limit=limit)
    assert handle(state, within, POLICY, later_ms).events[-1].type == "UsageLimited"


def test_a_request_in_flight_or_parked_keeps_its_person() -> None:
    flight = handle(None, received("r-1"), POLICY, T0 * 1000).state
    assert flight.inflight and forgettable_at(flight, POLICY) is None
    parked_at = T0 * 1000 + 5_000
    ended: InFlight = next(iter(flight.inflight.values()))
    parked = flight.model_copy(
        update={
            "inflight": {},
            "parked": {"r-1": parked_at},
            "parked_flights": {"r-1": ended},
        }
    )
    assert forgettable_at(parked, POLICY) == parked_at + RETENTION


def test_the_scan_reads_the_same_time_from_stored_bytes_as_from_the_state() -> None:
    states = [
        PersonState(),
        PersonState(window=Window(start=T0 + 50, count=2)),
        PersonState(
            window=Window(start=T0, count=1),
            seen={
                "a": Seen(at_ms=T0 * 1000 + 7, delivery_id="d", answered=("e", "f")),
                "b": Seen(at_ms=T0 * 1000 + 99_000, delivery_id="g"),
            },
        ),
        handle(None, received("r-1"), POLICY, T0 * 1000).state,  # in flight
    ]
    for state in states:
        from_state = Forgetting(POLICY)
        from_state.track(0, b"p", state)
        from_bytes = Forgetting(POLICY, partition_of=lambda _: 0)  # the scan's: by due time
        from_bytes.track_raw(b"p", encode(state))
        at = forgettable_at(state, POLICY)
        expected = [] if at is None else [b"p"]
        ripe = (at or 0) + MARGIN_MS
        assert from_state.due(0, ripe - 1) == from_bytes.due(0, ripe - 1) == []
        assert from_state.due(0, ripe) == from_bytes.due(0, ripe) == expected

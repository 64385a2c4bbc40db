"""What the group commits of a batch the ledger did not store: the real ledger, faust's stream
acknowledging each batch when the ledger asks for the next (``streams.faust_transport.Stream``),
and the worker's real consumer (``streams.faust_transport.Consumer``) saying what faust commits.

A batch of which Kafka gave up on an output or a changelog write is decided again, and faust is
told it is done all the same. It committed past it: the first batch of a partition with no
offset mark yet, whose worker then stopped or died before deciding it again, left its next
owner nothing to read it back from (it starts from the commit): its requests were never decided
and the person's usage count was short."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faust.types import TP, Message

from models.ledger import PersonState
from models.params import person_key
from streams.codecs import decode, encode
from streams.faust_transport import App
from tests.unit.domain_builders import PERSON, SITE, received
from tests.unit.test_gaps import TOPIC, Event, GivesUp, Quiet, Rec
from tests.unit.test_ledger_changelog import Changelog, Table

PARTITION = TP(TOPIC, 3)


class Faust:
    """faust under the ledger of a worker: its stream of [requests] acknowledges a batch (in
    the worker's consumer) when the ledger asks for the next; ``commit`` is a commit of faust's
    (every ``commit_interval``, at a rebalance, at a stop): what the group holds of partition 3
    from then on, None when nothing was ever committed."""

    def __init__(self, *partitions: TP) -> None:
        app = App("t-ledger-commits", broker="talkstream://127.0.0.1:1", autodiscover=False)
        app.topics._acking_topics.add(TOPIC)
        self.consumer = app.consumer
        self.consumer.assignment = lambda: set(partitions or [PARTITION])  # type: ignore[method-assign]
        self.committed: dict[TP, int] = {}

    def wire(self, quiet: Quiet) -> None:
        """The ledger holds and releases faust's commits as ``streams.agents.ledger`` wires it."""
        consumer = self.consumer
        quiet.ledger._hold = lambda topic, partition: consumer.hold_commits(TP(topic, partition))
        quiet.ledger._release = lambda topic, p: consumer.release_commits(TP(topic, p))

    async def take_events(self, *batches: list[Event]) -> AsyncIterator[list[Event]]:
        for batch in batches:
            yield batch
            for event in batch:
                rec = event.message
                tp = TP(rec.topic, rec.partition)
                message = Message(
                    rec.topic, rec.partition, rec.offset, 0.0, 0, None, b"k", b"v", None, tp=tp
                )
                assert self.consumer.ack(message)

    def commit(self, tp: TP = PARTITION) -> int | None:
        offsets = self.consumer._filter_committable_offsets([tp])
        if tp in offsets:
            self.consumer._committed_offset[tp] = self.committed[tp] = offsets[tp]
        return self.committed.get(tp)


class Batches:
    """The ledger's stream: these batches (faust's ``take_events``)."""

    def __init__(self, batches: AsyncIterator[list[Event]]) -> None:
        self.batches = batches

    def take_events(self, _max: int, within: float) -> AsyncIterator[list[Event]]:
        return self.batches


def events(quiet: Quiet, *offsets: int) -> list[Event]:
    return [Event(r, r.key, r.value) for r in map(quiet.record, offsets)]


def inflight(table: dict[bytes, bytes]) -> set[str]:
    """The requests the person's state holds (each has its slot in the usage window)."""
    raw = table.get(PERSON.encode())
    return set() if raw is None else set(decode(PersonState, raw).inflight)


def worker(gives_up: str) -> tuple[Quiet, Changelog]:
    """A ledger on partition 3, which has no offset mark, and its changelog; Kafka gives up on
    the first batch's changelog write, or on its first command."""
    changelog = Changelog()
    if gives_up == "changelog":
        changelog.at_wait = changelog.give_up
        quiet = Quiet(table=Table(changelog))
    else:
        changelog.at_wait = changelog.take
        quiet = Quiet(table=Table(changelog), generate=GivesUp(0))
    quiet.ledger._written = changelog.written
    return quiet, changelog


@pytest.mark.parametrize("gives_up", ["changelog", "output"])
async def test_a_first_batch_not_stored_is_decided_by_the_next_owner_after_a_crash(
    gives_up: str,
) -> None:
    """The ledger's first batch of partition 3 (50, 51: no offset mark yet) is not stored: Kafka
    gave up on its changelog write, or on one of its outputs. faust is told it is done when
    the ledger asks for more, commits, and the worker dies before it decides the batch again.
    The next owner recovers the table from the changelog (no mark, no state) and starts from
    the group's commit, or from the partition's first offset when there is none. It decides
    50 and 51 with 52: the person's state holds all three (faust committed 52 before, and the
    next owner never decided 50 and 51: two requests never ending, a usage window two short)."""
    faust = Faust()
    quiet, changelog = worker(gives_up)
    faust.wire(quiet)
    await quiet.ledger.consume(Batches(faust.take_events(events(quiet, 50, 51))))
    assert inflight(quiet.ledger._table) == (
        {"req-50", "req-51"} if gives_up == "changelog" else set()
    )
    committed = faust.commit()  # then the worker dies (or stops: faust commits then too)

    start = 50 if committed is None else committed  # consumer_auto_offset_reset="earliest"
    kept = Changelog()  # the partition's changelog as Kafka has it, recovered into its table
    kept.at_wait = kept.take
    recovered = Table(kept)
    recovered.update((key, value) for key, value in changelog.taken if value is not None)
    next_owner = Quiet(table=recovered)
    next_owner.ledger._written = kept.written
    await next_owner.deliver(*range(start, 53))
    assert (committed, inflight(recovered)) == (None, {"req-50", "req-51", "req-52"})


@pytest.mark.parametrize("gives_up", ["changelog", "output"])
async def test_faust_commits_a_batch_not_stored_once_it_is_decided_again(gives_up: str) -> None:
    """The same worker lives on: 52 arrives, the ledger reads 50 and 51 back, decides them
    again with it and stores the batch, and faust then commits all three."""
    faust = Faust()
    quiet, changelog = worker(gives_up)
    faust.wire(quiet)
    first, second = events(quiet, 50, 51), events(quiet, 52)
    seen: list[int | None] = []

    async def batches() -> AsyncIterator[list[Event]]:
        async for batch in faust.take_events(first, second):
            seen.append(faust.commit())
            if batch is second:  # Kafka takes the changelog's writes again
                changelog.at_wait = changelog.take
            yield batch

    await quiet.ledger.consume(Batches(batches()))
    assert seen == [None, None]  # nothing acknowledged, then the batch not stored
    assert faust.commit() == 53
    assert inflight(quiet.ledger._table) == {"req-50", "req-51", "req-52"}
    assert quiet.told == [(TOPIC, 3, 50, 51)]


class TwoPartitions(Quiet):
    """A ledger of partitions 3 (this person) and 4 (another one), whose read-back of partition
    3 fails once: Kafka cannot be reached."""

    OTHER = person_key(SITE, "bob@example.com")

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.failures = 1
        super().__init__(table)
        self.webhooks4 = {
            offset: encode(
                received(f"req-4-{offset}", delivery_id=f"e-{offset}").model_copy(
                    update={"person": self.OTHER}
                )
            )
            for offset in range(10, 13)
        }

    async def read_range(self, topic: str, partition: int, start: int, end: int) -> list[Rec]:
        if partition == 3 and self.failures:
            self.failures -= 1
            raise ConnectionError("Kafka cannot be reached")
        if partition == 4:
            return [self.record4(o) for o in range(start, end)]
        return await super().read_range(topic, partition, start, end)

    def record4(self, offset: int) -> Rec:
        return Rec(TOPIC, 4, offset, self.OTHER.encode(), self.webhooks4[offset])


async def test_a_partition_a_batch_did_not_reach_is_decided_again_from_its_first_offset() -> None:
    """A batch of 55 of partition 3 (a gap before it, 51..54, cannot be read back: Kafka out of
    reach) and 10 of partition 4, new to the ledger (no offset mark): it is not decided in
    full. Partition 4 expected nothing, so its next message (11) found no gap, and 10 was never
    decided, by this worker or (faust committed past it) any other. It now expects 10 again,
    and faust commits neither partition until a batch of each is stored."""
    table: dict[bytes, bytes] = {}
    quiet = TwoPartitions(table)
    other = TP(TOPIC, 4)
    faust = Faust(PARTITION, other)
    faust.wire(quiet)
    record10, record11 = quiet.record4(10), quiet.record4(11)
    seen: list[tuple[int | None, int | None]] = []

    async def batches() -> AsyncIterator[list[Event]]:
        batches = (
            events(quiet, 50),
            [*events(quiet, 55), Event(record10, record10.key, record10.value)],
            [Event(record11, record11.key, record11.value)],
        )
        async for batch in faust.take_events(*batches):
            seen.append((faust.commit(), faust.commit(other)))
            yield batch

    await quiet.ledger.consume(Batches(batches()))
    assert seen == [(None, None), (51, None), (51, None)]
    assert (faust.commit(), faust.commit(other)) == (51, 12)  # 4 decided again, 3 not yet
    other_state = decode(PersonState, table[TwoPartitions.OTHER.encode()])
    assert set(other_state.inflight) == {"req-4-10", "req-4-11"}

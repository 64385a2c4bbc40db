"""A batch's offsets are marked only once Kafka took the changelog writes it made: the real
ledger, with a fake changelog partition that holds each write until Kafka takes it or gives up
on it. Marked too soon, a worker that lost the partition (or stopped) before Kafka took them
left its next owner the person's earlier state behind a mark, or a commit, past the batch."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiokafka.errors import NotLeaderForPartitionError
from cryptography.fernet import Fernet

from models.events import DeadLetter, GenerateText, LifecycleEvent
from streams.agents.ledger import OFFSET_MARK, stored
from streams.app import build
from streams.codecs import decode
from streams.settings import Settings
from streams.topics import LEDGER_TABLE
from tests.unit.domain_builders import PERSON
from tests.unit.test_gaps import TOPIC, Event, Quiet

MARK = OFFSET_MARK + b"3"  # the ledger's offset mark of partition 3


class Changelog:
    """The ledger table's changelog partition: each write is held until Kafka takes it
    (``take``) or gives up on it (``give_up``: no leader for the producer's request timeout).
    ``taken``: what Kafka wrote, in order; ``waits``: how often the ledger took the writes
    to wait for them (``written``), and ``at_wait`` what Kafka does then (None: nothing)."""

    def __init__(self, at_wait: Callable[[], None] | None = None) -> None:
        self.held: list[tuple[bytes, bytes | None, asyncio.Future[None]]] = []
        self.since: list[asyncio.Future[None]] = []  # written since the ledger last looked
        self.taken: list[tuple[bytes, bytes | None]] = []
        self.waits = 0
        self.at_wait = at_wait

    def write(self, key: bytes, value: bytes | None) -> None:
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append((key, value, delivery))
        self.since.append(delivery)

    def written(self) -> list[asyncio.Future[None]]:
        since, self.since = self.since, []
        self.waits += 1
        if self.at_wait is not None:
            self.at_wait()
        return since

    def take(self) -> None:
        for key, value, delivery in self.held:
            self.taken.append((key, value))
            delivery.set_result(None)
        self.held.clear()

    def give_up(self) -> None:
        for _, _, delivery in self.held:
            delivery.set_exception(NotLeaderForPartitionError())
        self.held.clear()


class Table(dict[bytes, bytes]):
    """The ledger's table: a dict whose every write goes to its changelog (as faust's does)."""

    def __init__(self, changelog: Changelog) -> None:
        super().__init__()
        self.changelog = changelog

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.changelog.write(key, value)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self.changelog.write(key, None)


def ledger_on(changelog: Changelog) -> Quiet:
    quiet = Quiet(table=Table(changelog))
    quiet.ledger._written = changelog.written
    return quiet


class Acking:
    """faust's stream of the ledger: a batch is acknowledged (faust commits it) when the ledger
    asks for the next one (``streams.faust_transport.Stream``). ``acked``: offsets, in order."""

    def __init__(self, *batches: list[Event]) -> None:
        self.batches = batches
        self.acked: list[int] = []

    async def take_events(self, _max: int, within: float) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            yield batch
            self.acked += [event.message.offset for event in batch]


async def until(condition: Callable[[], object], what: str) -> None:
    """Turns of the loop until ``condition`` holds (a few hundred at most: nothing here waits
    for a clock)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def test_a_batch_is_marked_only_once_kafka_took_its_changelog_writes() -> None:
    """The ledger decides 50 and 51 and writes the person's state; its changelog partition has
    no leader. The batch's offsets are not marked meanwhile: not in the table's offset mark
    (a worker recovering the partition decides again from it), nor acknowledged to faust
    (which commits what is acknowledged). Once Kafka takes the state, they are, the mark after
    it. The next batch is acknowledged once Kafka took its own writes and that mark."""
    changelog = Changelog()
    quiet = ledger_on(changelog)
    table = quiet.ledger._table
    events = [Event(r, r.key, r.value) for r in map(quiet.record, (50, 51, 52))]
    stream = Acking(events[:2], events[2:])
    person = PERSON.encode()

    def look() -> tuple[list[int], bool, list[bytes]]:
        """The offsets acknowledged to faust, whether the table has a mark, what is held."""
        return list(stream.acked), MARK in table, [key for key, _, _ in changelog.held]

    async def run() -> None:
        consuming = asyncio.ensure_future(quiet.ledger.consume(stream))
        await until(lambda: stream.acked or changelog.waits, "the ledger waits or goes on")
        assert look() == ([], False, [person])  # waiting for the changelog: nothing marked
        changelog.take()
        await until(lambda: stream.acked, "the first batch acknowledged")
        assert look() == ([50, 51], True, [MARK])  # the mark written once the state was taken
        await until(lambda: changelog.waits == 2, "the second batch waits")
        assert look() == ([50, 51], True, [MARK, person])
        changelog.take()
        await consuming
        assert look() == ([50, 51, 52], True, [])  # (a mark is due every 32 offsets)

    asyncio.run(run())
    assert [key for key, _ in changelog.taken] == [person, MARK, person]
    assert table[MARK] == b"51"  # (written at 50, the first offset since it was loaded)


def test_a_batch_whose_changelog_write_kafka_gave_up_on_is_decided_again_then_marked() -> None:
    """Kafka gave up on the changelog write of the person's state decided from 50 and 51 (51
    does not decode: a letter). The batch is not marked: no offset mark, and the range it read
    back is not acknowledged to faust; its outputs were taken. Decided again (read back at
    52), it sends none of them again (the table holds its state: a delivery already decided
    changes nothing, and the letter was taken), writes the state again, Kafka takes it, and
    only then is the batch marked."""
    changelog = Changelog()
    changelog.at_wait = changelog.give_up  # the first wait: Kafka gives up
    quiet = ledger_on(changelog)
    quiet.webhooks[51] = b"not json"
    table = quiet.ledger._table
    after_first: list[tuple[bool, list[tuple[str, int, int, int]]]] = []

    async def run() -> None:
        await quiet.deliver(50, 51)
        after_first.append((MARK in table, list(quiet.told)))
        changelog.at_wait = changelog.take
        await quiet.deliver(52)  # 50, 51 read back and decided again

    asyncio.run(run())
    assert after_first == [(False, [])]
    assert table[MARK] == b"53"
    assert quiet.told == [(TOPIC, 3, 50, 51)]  # acknowledged to faust once marked
    person = PERSON.encode()
    keys = [key for key, _ in changelog.taken]
    assert keys == [person]  # the mark, written after the state was taken, is not yet
    assert changelog.taken[0][1] == table[person]
    transitions = [decode(LifecycleEvent, raw).identity() for raw in quiet.lifecycle.values]
    assert [n for n in Counter(transitions).values() if n > 1] == []
    commands = [decode(GenerateText, raw).request_id for raw in quiet.generate.values]
    assert commands == ["req-50", "req-52"]
    assert [decode(DeadLetter, raw).offset for raw in quiet.deadletter.values] == [51]
    assert quiet.decided() == {"req-50", "req-52"}


def test_a_persons_entry_is_one_read_of_the_tables_store(tmp_path: Path) -> None:
    """faust's ``Table.get`` asks its store whether it holds the key, then reads it: the
    ledger reads each person's entry once (``stored``), at every webhook and result."""
    settings = Settings(
        data_dir=tmp_path, secret_keys=Fernet.generate_key().decode(), table_store="memory://"
    )
    table = build(settings).app.tables[LEDGER_TABLE]
    reads: Counter[str] = Counter()

    class Counted(dict[bytes, bytes]):
        def __contains__(self, key: object) -> bool:
            reads["contains"] += 1
            return super().__contains__(key)

        def __getitem__(self, key: bytes) -> bytes:
            reads["get"] += 1
            return super().__getitem__(key)

    table.data.data = Counted({PERSON.encode(): b"entry"})
    assert stored(table, PERSON.encode()) == b"entry"
    assert stored(table, b"nobody") is None
    assert reads == Counter(get=2)

"""A request's transitions reach [lifecycle] in the order the ledger decided them, also when
Kafka gave up on some of a batch's outputs and the batch is decided again: the real ledger,
with a fake [lifecycle] partition whose leader is away."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from models.events import DeadLetter, GenerateText, LifecycleEvent
from models.lifecycle import State
from streams.codecs import decode, encode
from streams.kafka_options import Withdrawn
from tests.unit.domain_builders import generated, published
from tests.unit.test_gaps import Quiet, Rec, Sent

# a request's transitions from its webhook to its publication, in order
PUBLISHED_PATH = [
    State.RECEIVED,
    State.ADMITTED,
    State.GENERATING,
    State.GENERATED,
    State.PUBLISHING,
    State.PUBLISHED,
]


class Leaderless(Sent):
    """[lifecycle], one partition whose leader is away: what the ledger hands it is held
    until the producer gives up on it (``expire``: no leader for its request timeout) or the
    leader is back when the ledger sends its batch (``take``, the ledger's ``send_now``).
    ``gives_up_at``: the record (counted from 0) whose ``send`` waits for room behind those
    held, until the producer gives up on them; it is held after them. ``withdraw`` takes
    back records held. ``taken``: the partition's records, in the order Kafka wrote them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[bytes, asyncio.Future[None]]] = []
        self.taken: list[bytes] = []
        self.gives_up_at: int | None = None
        self.withdrawn: list[bytes] = []

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[None]:
        if len(self.values) == self.gives_up_at:
            self.expire()
            await asyncio.sleep(0)  # the send goes on after the failures' callbacks ran
        self.values.append(value)
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append((value, delivery))
        return delivery

    def expire(self, count: int | None = None) -> None:
        """The producer gives up on the first ``count`` records held (all: None)."""
        count = len(self.held) if count is None else count
        for _, delivery in self.held[:count]:
            delivery.set_exception(NotLeaderForPartitionError())
        del self.held[:count]

    def take(self) -> None:
        for value, delivery in self.held:
            self.taken.append(value)
            delivery.set_result(None)
        self.held.clear()

    def withdraw(self, deliveries: list[asyncio.Future[Any]]) -> int:
        back = [(v, d) for v, d in self.held if any(d is w for w in deliveries)]
        for value, delivery in back:
            self.withdrawn.append(value)
            delivery.set_exception(Withdrawn())
        self.held = [(v, d) for v, d in self.held if all(d is not b for _, b in back)]
        return len(back)


class HeldUp(Quiet):
    """A ledger on partition 3 whose first read-back of a gap takes longer than the
    producer's request timeout: the producer gives up on the [lifecycle] records held
    meanwhile. ``waits``: the read-back waits for its answer after that, and the loop runs
    the callbacks of the records given up on meanwhile (False: the read-back returns first,
    as a ``send`` that waited for room in the producer does when the producer gave up on
    the batch it waited behind)."""

    def __init__(self, waits: bool = True) -> None:
        self.leaderless = Leaderless()
        super().__init__(lifecycle=self.leaderless, send_now=self.leaderless.take)
        self.ledger._withdraw = self.leaderless.withdraw
        self.held_up = False
        self.expires: int | None = None  # how many records held the producer gives up on
        self.waits = waits

    async def read_range(self, topic: str, partition: int, start: int, end: int) -> list[Rec]:
        if self.held_up:
            self.held_up = False
            self.leaderless.expire(self.expires)
            if self.waits:
                await asyncio.sleep(0)  # a turn of the loop: the answer comes after
        return await super().read_range(topic, partition, start, end)


@pytest.mark.parametrize("waits", [True, False], ids=["seen at once", "seen by the request"])
def test_a_batch_decided_again_keeps_a_requests_transitions_in_order(waits: bool) -> None:
    """req-50 was received and is generating. The next batch decides its text (TextGenerated,
    PublicationStarted), then reads back a gap before req-53's webhook, from a partition
    without a leader, longer than the producer's request timeout: Kafka gave up on those two
    transitions meanwhile. The gap held req-50's publication (CompletionPublished), which the
    batch sent after, and Kafka took (the producer under a new id). The batch decided again
    sent the two it had given up on after it: [lifecycle] held ``published``, then
    ``generated`` and ``publishing``, and a consumer that follows it saw the request move back
    from its end. Once Kafka gave up on an output, the batch sends nothing more: decided
    again, it sends all it did not, in order. The request's own outputs are looked at as
    they stand before each of its outputs is sent: a failure's callbacks may not have run."""
    quiet = HeldUp(waits)
    quiet.webhooks[51] = encode(generated("req-50"))
    quiet.webhooks[52] = encode(published("req-50"))

    async def run() -> None:
        await quiet.deliver(50)  # received, admitted, generating: taken
        quiet.held_up = True
        await quiet.deliver(51, 53)  # 52 read back after Kafka gave up on 51's transitions
        await quiet.deliver(54)  # 51..53 read back and decided again

    asyncio.run(run())
    transitions: dict[str, list[LifecycleEvent]] = defaultdict(list)
    for raw in quiet.leaderless.taken:
        event = decode(LifecycleEvent, raw)
        transitions[event.request_id].append(event)
    assert [e.state for e in transitions["req-50"]] == PUBLISHED_PATH
    for request_id, events in transitions.items():  # each from where the one before left it
        assert [e.previous_state for e in events] == [None, *(e.state for e in events[:-1])], (
            request_id
        )
    assert set(transitions) == {"req-50", "req-53", "req-54"}


def test_nothing_more_of_a_batch_is_sent_once_kafka_gave_up_on_an_output() -> None:
    """Kafka gave up on the transitions of req-50 held while the batch read a gap back: the
    batch hands the producer nothing more, of req-50 or of another request (a command, a
    letter, a transition), and sends all of it, once each, when it is decided again."""
    quiet = HeldUp()
    quiet.webhooks[51] = encode(generated("req-50"))
    quiet.webhooks[53] = b"not json"  # a letter
    handed: list[tuple[int, int, int]] = []

    def count() -> tuple[int, int, int]:
        topics = (quiet.leaderless, quiet.generate, quiet.deadletter)
        return (len(topics[0].values), len(topics[1].values), len(topics[2].values))

    async def run() -> None:
        await quiet.deliver(50)
        quiet.held_up = True
        before = count()
        await quiet.deliver(51, 55)  # 52..54 read back after Kafka gave up on 51's
        after = count()
        handed.append((after[0] - before[0], after[1] - before[1], after[2] - before[2]))
        await quiet.deliver(56)

    asyncio.run(run())
    assert handed == [(2, 0, 0)]  # 51's two transitions, nothing after them
    commands = [decode(GenerateText, raw).request_id for raw in quiet.generate.values]
    assert sorted(commands) == [f"req-{o}" for o in (50, 52, 54, 55, 56)]
    taken = [decode(LifecycleEvent, raw).identity() for raw in quiet.leaderless.taken]
    assert len(taken) == len(set(taken))
    assert {request_id for request_id, *_ in taken} == {f"req-{o}" for o in (50, 52, 54, 55, 56)}
    assert [decode(DeadLetter, raw).offset for raw in quiet.deadletter.values] == [53]


@pytest.mark.parametrize(
    "case", ["behind a batch the producer gave up on", "a send that waited for room"]
)
def test_what_the_producer_holds_unsent_of_a_failed_batch_is_taken_back(case: str) -> None:
    """The producer gave up on req-50's TextGenerated and PublicationStarted, and still held
    its CompletionPublished, sent after them: in a batch of its own behind theirs, or by a
    ``send`` that waited for room behind theirs and went on, in a batch of its own, once the
    producer gave up on them. Under its new id, the producer wrote it once the leader was
    back, before the batch decided again sent the two. It is taken back (never written),
    and the batch decided again sends all three in order."""
    quiet = HeldUp()
    quiet.webhooks[51] = encode(generated("req-50"))
    quiet.webhooks[52] = encode(published("req-50"))

    async def run() -> None:
        await quiet.deliver(50)  # received, admitted, generating: taken (records 0..2)
        if case.startswith("behind"):
            quiet.held_up, quiet.expires = True, 2  # the two of 51, not 52's behind them
            await quiet.deliver(51, 52, 54)  # 53 read back
            await quiet.deliver(55)
        else:
            quiet.leaderless.gives_up_at = 5  # 52's waits for room behind 51's (3, 4)
            await quiet.deliver(51, 52, 53)
            await quiet.deliver(54)

    asyncio.run(run())
    states = [
        event.state
        for event in map(lambda raw: decode(LifecycleEvent, raw), quiet.leaderless.taken)
        if event.request_id == "req-50"
    ]
    assert states == PUBLISHED_PATH
    withdrawn = [decode(LifecycleEvent, raw).state for raw in quiet.leaderless.withdrawn]
    assert withdrawn == [State.PUBLISHED]


class NoRoom(Sent):
    """[generate], whose producer's ``send`` gives up once (``KafkaTimeoutError``: no room, or
    no metadata for the topic, for the producer's request timeout) and takes records after."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 1

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[None]:
        if self.refusals:
            self.refusals -= 1
            raise KafkaTimeoutError()
        return await super().send(key=key, value=value)


def test_an_output_the_producer_did_not_take_has_its_batch_decided_again() -> None:
    """req-50's command could not be handed to the producer (its ``send`` raised: Kafka out of
    reach that long). That is no bug of the ledger's, whose catch-all made it a
    ``ledger_error`` letter and stored the batch: the webhook, accepted, was never decided.
    The batch is decided again, like one of which Kafka gave up on an output: the command is
    sent then, once, and no letter is written."""
    generate = NoRoom()
    quiet = Quiet(generate=generate)

    async def run() -> None:
        await quiet.deliver(50)  # 50's command not taken: not stored
        await quiet.deliver(51)  # 50 read back and decided again

    asyncio.run(run())
    assert quiet.deadletter.values == []
    commands = [decode(GenerateText, raw).request_id for raw in generate.values]
    assert commands == ["req-50", "req-51"]
    assert quiet.decided() == {"req-50", "req-51"}

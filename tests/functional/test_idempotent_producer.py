"""The worker's producer after a record it gave up on: a new producer id, numbering from 0.

aiokafka's idempotent producer fails a record whose partition has had no leader for its
request timeout without sending it, yet keeps the sequence number it gave it; the broker then
refuses every later record of that producer id for the partition, out of sequence, and aiokafka
never takes a new id. On a real broker: ``tests/integration/brokers/test_producer_outage.py``.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import LeaderNotAvailableError
from aiokafka.record.default_records import DefaultRecordBatch

from streams.faust_transport import Producer
from streams.kafka_options import GivenUp, IdempotentProducer, Withdrawn, withdraw, without_linger


async def test_a_failed_delivery_drops_the_producer_id_and_the_numbering() -> None:
    producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1")
    txn = producer._txn_manager
    txn.set_pid_and_epoch(7, 0)
    tp = TopicPartition("t-requests", 2)
    txn.increment_sequence_number(tp, 5)

    delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    delivered.set_result(None)
    producer._delivered(delivered)
    assert (txn.producer_id, txn.sequence_number(tp)) == (7, 5)  # acknowledged: nothing changes

    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed.set_exception(LeaderNotAvailableError())
    producer._delivered(failed)
    assert not txn.has_pid()  # aiokafka's sender asks for a new one before it sends more
    assert txn.sequence_number(tp) == 0
    waiting = asyncio.ensure_future(txn.wait_for_pid())
    producer._delivered(failed)  # another batch of the same outage: still one new id awaited
    txn.set_pid_and_epoch(8, 0)
    await asyncio.wait_for(waiting, 1)
    assert (txn.producer_id, txn.sequence_number(tp)) == (8, 0)


def test_the_workers_transport_makes_such_producers() -> None:
    assert Producer._producer_type.fget(None) is IdempotentProducer  # type: ignore[attr-defined]


async def test_withdraw_takes_back_only_what_the_producer_holds_unsent() -> None:
    """The ledger takes back the outputs of a batch Kafka gave up on an output of
    (``streams.agents.outputs.Batch``): a batch of aiokafka's accumulator holding only them
    that its sender has not taken fails, and is never sent; a batch in flight is left as it
    is, and so are other partitions. Never numbered, the records taken back spend no sequence
    number: the producer keeps its id."""
    producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1")
    txn = producer._txn_manager
    txn.set_pid_and_epoch(7, 0)
    accumulator = producer._message_accumulator
    tp, other = TopicPartition("t-lifecycle", 0), TopicPartition("t-lifecycle", 1)
    in_flight = await accumulator.add_message(tp, None, b"a", timeout=1)
    accumulator._pop_batch(tp)  # the sender took it: numbered, sent
    held = await accumulator.add_message(tp, None, b"b", timeout=1)
    with_it = await accumulator.add_message(tp, None, b"c", timeout=1)  # the same batch
    elsewhere = await accumulator.add_message(other, None, b"d", timeout=1)
    faust_producer = SimpleNamespace(_producer=producer)

    assert withdraw(faust_producer, [in_flight, held, with_it]) == 2
    assert isinstance(held.exception(), Withdrawn) and isinstance(with_it.exception(), Withdrawn)
    assert not in_flight.done() and not elsewhere.done()
    assert tp not in accumulator._batches and list(accumulator._batches) == [other]
    for delivery in (held, with_it):
        producer._delivered(delivery)
    assert (txn.producer_id, txn.sequence_number(tp)) == (7, 1)
    assert withdraw(faust_producer, [in_flight, held]) == 0
    assert withdraw(SimpleNamespace(), [elsewhere]) == 0  # not aiokafka's: nothing to take


async def test_withdraw_leaves_other_senders_records_in_the_batch() -> None:
    """The worker's producer is shared: a batch of a partition the ledger takes an output back
    from may also hold another sender's records (an executor's forward or hand-back of a
    command, its letter), which nobody asked to take back. Only the ledger's fails; the
    others stay where they were, in their order, each with its key, headers and time, and
    are written, acknowledged to their own senders (before, the whole batch failed with
    ``Withdrawn``: an executor's hand-back was lost, its forward called where it did not
    belong). Numbered for them alone, they spend no sequence number for the one taken back."""
    producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1", compression_type="gzip")
    producer._txn_manager.set_pid_and_epoch(7, 0)
    accumulator = producer._message_accumulator
    tp = TopicPartition("t-generate", 4)
    before = await accumulator.add_message(tp, b"org", b"forward", timeout=1, timestamp_ms=1_000)
    ledgers = await accumulator.add_message(tp, b"key", b"command", timeout=1)
    after = await accumulator.add_message(
        tp, b"key", b"handed back", timeout=1, timestamp_ms=900, headers=[("h", b"v")]
    )
    batch = accumulator._batches[tp][0]

    assert withdraw(SimpleNamespace(_producer=producer), [ledgers]) == 1
    assert isinstance(ledgers.exception(), Withdrawn)
    assert not before.done() and not after.done()
    assert list(accumulator._batches[tp]) == [batch]
    follows = await accumulator.add_message(tp, None, b"follows", timeout=1)  # the same batch
    assert list(accumulator._batches[tp]) == [batch]

    taken = accumulator._pop_batch(tp)  # as the sender takes it: numbered, built
    assert taken is batch and producer._txn_manager.sequence_number(tp) == 3
    written = [
        (r.offset, r.timestamp, r.key, r.value, r.headers)
        for r in DefaultRecordBatch(bytes(taken.get_data_buffer()))
    ]
    assert written[:2] == [
        (0, 1_000, b"org", b"forward", []),
        (1, 900, b"key", b"handed back", [("h", b"v")]),
    ]
    assert [value for _, _, _, value, _ in written] == [b"forward", b"handed back", b"follows"]
    taken.done(base_offset=40)  # the broker's acknowledgement
    assert [d.result().offset for d in (before, after, follows)] == [40, 41, 42]


async def test_a_full_batch_taken_apart_takes_no_more_records() -> None:
    """A batch aiokafka closed (full: a send waits for the sender to take it) takes no more
    records once one of them is taken back, and goes at the sender's next look."""
    producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1", linger_ms=60_000)
    accumulator = producer._message_accumulator
    tp = TopicPartition("t-deadletter", 0)
    deliveries = [await accumulator.add_message(tp, None, v, timeout=1) for v in (b"a", b"b", b"c")]
    batch = accumulator._batches[tp][0]
    batch._builder.close()  # as aiokafka closes one a record did not fit in

    assert withdraw(SimpleNamespace(_producer=producer), [deliveries[1]]) == 1
    assert [delivery for delivery, _ in batch._msg_futures] == [deliveries[0], deliveries[2]]
    assert batch._builder.closed() and batch.remaining_linger() is None


async def test_without_linger_sends_one_partitions_records_with_the_next_request() -> None:
    """A table's changelog record goes without the producer's linger (the ledger waits for
    it before it marks its batch): its partition's batch is ready for the sender at once,
    and the sender, asleep for the linger, is woken; other partitions linger on."""
    producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1", linger_ms=60_000)
    accumulator = producer._message_accumulator
    changelog, other = TopicPartition("t-ledger-changelog", 3), TopicPartition("t-lifecycle", 3)
    await accumulator.add_message(changelog, b"k", b"state", timeout=1)
    await accumulator.add_message(other, b"k", b"transition", timeout=1)
    accumulator._waiter_future = asyncio.get_running_loop().create_future()  # asleep
    batches = {tp: accumulator._batches[tp][0] for tp in (changelog, other)}
    assert batches[changelog].remaining_linger() is not None  # lingering

    without_linger(SimpleNamespace(_producer=producer), changelog.topic, changelog.partition)
    assert batches[changelog].remaining_linger() is None  # ready: the next request takes it
    assert batches[other].remaining_linger() is not None
    assert accumulator._waiter_future.done()
    without_linger(SimpleNamespace(), changelog.topic, 3)  # not aiokafka's: nothing to do
    without_linger(SimpleNamespace(_producer=producer), changelog.topic, None)


async def held_and_given_up() -> tuple[Counter[str], list[BaseException | None]]:
    """A producer holding a record the sender took (in flight) and two it never took (in an
    open batch), given up on as a stopping worker gives up: what it dropped, and what each
    sender of a record learns (nobody awaits the second held one). Returns with nothing of
    the producer referenced."""
    producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1")
    producer._txn_manager.set_pid_and_epoch(7, 0)
    accumulator = producer._message_accumulator
    sent, held = TopicPartition("t-generate", 0), TopicPartition("t-lifecycle", 1)
    in_flight = await accumulator.add_message(sent, b"k", b"result", timeout=1)
    accumulator._pop_batch(sent)  # the sender took it: numbered, in a request
    waiting = await accumulator.add_message(held, b"k", b"transition", timeout=1)
    await accumulator.add_message(held, b"k", b"its sender stopped waiting", timeout=1)

    dropped = producer.give_up(GivenUp("the worker stopped before Kafka took it"))
    after = await producer.send("t-generate", b"sent once given up")
    learnt = []
    for delivery in (in_flight, waiting, after):
        learnt.append(await asyncio.wait_for(asyncio.gather(delivery, return_exceptions=True), 1))
    return dropped, [r if isinstance(r, BaseException) else None for [r] in learnt]


async def test_a_stop_that_gives_up_fails_every_held_record_and_leaves_no_future_unread() -> None:
    """Every record held fails with the stop's reason, counted by topic for the stop's one
    WARNING; no future of the producer is left failed and unread. The batch never sent had
    its wait for the sender failed too, and once collected asyncio logged it as an ERROR
    "Future exception was never retrieved" (GivenUp) at every stop that gave up on Kafka."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []  # (what it said, not the context: that would keep it alive)
    loop.set_exception_handler(lambda _, context: reported.append(said(context)))
    try:
        dropped, learnt = await held_and_given_up()
        await asyncio.sleep(0)  # one turn: the done callbacks the failures scheduled run
        gc.collect()  # a future collected failed and unread is reported now
    finally:
        loop.set_exception_handler(None)
    assert dropped == Counter({"t-lifecycle": 2, "t-generate": 1})
    assert [type(failed) for failed in learnt] == [GivenUp] * 3
    assert [line for line in reported if "never retrieved" in line] == []


def said(context: dict[str, Any]) -> str:
    return f"{context['message']}: {context.get('future', '')!r}"


async def test_a_delivery_failed_as_the_producer_gives_up_is_read_all_the_same() -> None:
    """A delivery that failed on the loop turn the stop gave up on (its done callbacks run
    after ``give_up``): its sender stopped waiting, and nothing else read it."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(said(context)))
    try:
        producer = IdempotentProducer(bootstrap_servers="127.0.0.1:1")
        delivery: asyncio.Future[None] = loop.create_future()
        delivery.add_done_callback(producer._delivered)  # as ``send`` does
        delivery.set_exception(LeaderNotAvailableError())
        producer.give_up(GivenUp("the worker stopped before Kafka took it"))
        del delivery
        await asyncio.sleep(0)  # one turn: its done callbacks run
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert [line for line in reported if "never retrieved" in line] == []

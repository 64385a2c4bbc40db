"""The worker's producer after a record it gave up on: a new producer id, numbering from 0.

aiokafka's idempotent producer fails a record whose partition has had no leader for its
request timeout without sending it, yet keeps the sequence number it gave it; the broker then
refuses every later record of that producer id for the partition, out of sequence, and aiokafka
never takes a new id. On a real broker: ``tests/integration/brokers/test_producer_outage.py``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition
from aiokafka.errors import LeaderNotAvailableError

from streams.faust_transport import Producer
from streams.kafka_options import IdempotentProducer, Withdrawn, withdraw


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
    (``streams.agents.outputs.Batch``): a batch of aiokafka's accumulator holding one of
    them that its sender has not taken fails, records sent with it included, and is never
    sent; a batch in flight is left as it is, and so are other partitions. Never numbered,
    the records taken back spend no sequence number: the producer keeps its id."""
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

    assert withdraw(faust_producer, [in_flight, held]) == 2
    assert isinstance(held.exception(), Withdrawn) and isinstance(with_it.exception(), Withdrawn)
    assert not in_flight.done() and not elsewhere.done()
    assert tp not in accumulator._batches and list(accumulator._batches) == [other]
    for delivery in (held, with_it):
        producer._delivered(delivery)
    assert (txn.producer_id, txn.sequence_number(tp)) == (7, 1)
    assert withdraw(faust_producer, [in_flight, held]) == 0
    assert withdraw(SimpleNamespace(), [elsewhere]) == 0  # not aiokafka's: nothing to take

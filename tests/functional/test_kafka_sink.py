"""The ingress's Kafka sink once its producer has had a record given up or refused.

aiokafka's idempotent producer fails a record whose partition has had no leader for its
request timeout (a single broker stopped with a controlled shutdown, or killed) with
LeaderNotAvailableError, whether or not an earlier try had reached the broker, and keeps the
sequence number it gave the record: from then on the broker answers every record of that
producer id for the partition ``OutOfOrderSequenceNumber``, for good. Seen on a real broker
stopped for 40 s under traffic: once it was back, every webhook was answered 503 until the
ingress was restarted, while its /readyz said ready. The sink's producer takes a new producer id
after a failed delivery (``IdempotentProducer``, as the worker's), and the sink sends such a
record again on it rather than answer 503 for what may be written.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import struct
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.admin import ApiVersionResponse_v0, ApiVersionResponse_v1

import streams.ingress as ingress
from streams.errors import BrokerUnavailable
from streams.ingress import KafkaSink
from streams.kafka_options import IdempotentProducer, client_options, diagnose
from streams.settings import Settings
from streams.topics import partition_of


class AsTheBrokerSeesIt(AIOKafkaProducer):
    """aiokafka's producer, its producer id and sequence numbers kept by its own transaction
    manager, over a broker in memory that writes a record only if it has the next number of its
    producer id. As aiokafka's sender, it asks for a new id when the producer has none, numbers
    a record after ``send`` has returned, and answers later. ``give_up`` fails the next record
    with that error, its number spent (``written_anyway``: after the broker wrote it, as a broker
    killed before answering); ``refuse`` has the broker refuse the next one. With ``reachable``,
    a record given up takes Kafka down: ``send`` itself fails until ``reachable`` is set.
    ``crash``: its sender task fails with that error while it holds the next record (written
    first with ``written_anyway``), as aiokafka's on an error of its own: that record and every
    other it holds fail with it, and so does every later ``send`` (``die``: with none held). A
    stopped producer's ``send`` raises ProducerClosed. With ``starts`` (every producer made
    from then on), ``start`` waits for it."""

    made: ClassVar[list[AsTheBrokerSeesIt]] = []
    starts: ClassVar[asyncio.Event | None] = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.handed: list[bytes] = []  # every record handed over, tries again included
        self.partitions: list[int] = []  # the partition of each handed over
        self.partitions_now = list(range(10))  # the topic's in the broker's metadata
        self.written: list[tuple[int, bytes]] = []  # (producer id, value), as the broker has them
        self.give_up: KafkaError | None = None
        self.crash: KafkaError | None = None
        self.written_anyway = False
        self.refuse: KafkaError | None = None
        self.reachable: asyncio.Event | None = None
        self.refused_sends = 0
        self.tried_again = asyncio.Event()  # a send refused, and tried again
        self._ids = itertools.count(1)
        self._next_sequence: dict[int, int] = {}  # the broker's: per producer id
        AsTheBrokerSeesIt.made.append(self)

    async def start(self) -> None:
        if self.starts is not None:
            await self.starts.wait()
        self._txn_manager.set_pid_and_epoch(next(self._ids), 0)

    def die(self, error: KafkaError) -> None:
        """Its sender task ends with ``error`` (aiokafka's ``Sender._fail_all`` then fails
        what it holds, as ``_answer`` does)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ended.set_exception(error)
        ended.exception()  # read: nobody awaits it
        self._sender._sender_task = ended

    def _sender_error(self) -> BaseException | None:
        ended = self._sender.sender_task
        return None if ended is None or not ended.done() else ended.exception()

    async def send(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        if self._closed:  # as aiokafka's accumulator, closed by ``stop``
            raise ProducerClosed()
        if (failed := self._sender_error()) is not None:  # as its accumulator after fail_all
            raise copy.copy(failed)
        if self.reachable is not None and not self.reachable.is_set():
            self.refused_sends += 1
            if self.refused_sends > 1:
                self.tried_again.set()
            raise KafkaTimeoutError()
        self.handed.append(value)
        if partition is None:  # aiokafka's pick: over the partitions the topic has now
            partition = DefaultPartitioner()(key, self.partitions_now, self.partitions_now)
        self.partitions.append(partition)
        loop = asyncio.get_running_loop()
        delivery: asyncio.Future[Any] = loop.create_future()
        loop.call_soon(self._answer, TopicPartition(topic, 0), value, delivery)
        return delivery

    def _answer(self, tp: TopicPartition, value: bytes, delivery: asyncio.Future[Any]) -> None:
        txn = self._txn_manager
        if not txn.has_pid():
            txn.set_pid_and_epoch(next(self._ids), 0)
        pid, sequence = txn.producer_id, txn.sequence_number(tp)
        txn.increment_sequence_number(tp, 1)
        if (failed := self._sender_error()) is not None:  # held when the sender failed
            delivery.set_exception(copy.copy(failed))
        elif self.crash is not None:
            if self.written_anyway and sequence == self._next_sequence.get(pid, 0):
                self._next_sequence[pid] = sequence + 1
                self.written.append((pid, value))
            self.die(self.crash)
            self.crash = None
            delivery.set_exception(copy.copy(self._sender_error()))
        elif self.give_up is not None and not self.written_anyway:
            delivery.set_exception(self.give_up)
            self.give_up = None
            if self.reachable is not None:
                self.reachable.clear()
        elif self.refuse is not None:
            delivery.set_exception(self.refuse)
            self.refuse = None
        elif sequence != self._next_sequence.get(pid, 0):
            delivery.set_exception(OutOfOrderSequenceNumber())
        else:
            self._next_sequence[pid] = sequence + 1
            self.written.append((pid, value))
            if self.give_up is not None:  # written, and the answer lost
                delivery.set_exception(self.give_up)
                self.give_up = None
            else:
                delivery.set_result(None)


class SinksProducer(IdempotentProducer, AsTheBrokerSeesIt):
    """The sink's producer (a new producer id after a failed delivery) over the broker above."""


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[AsTheBrokerSeesIt]:
    AsTheBrokerSeesIt.made = []
    AsTheBrokerSeesIt.starts = None
    monkeypatch.setattr(ingress, "IdempotentProducer", SinksProducer)
    return AsTheBrokerSeesIt.made


async def test_without_a_new_producer_id_every_record_after_one_given_up_is_refused() -> None:
    """The defect, as the broker above sees aiokafka's producer alone."""
    producer = AsTheBrokerSeesIt(bootstrap_servers="127.0.0.1:1", enable_idempotence=True)
    await producer.start()
    producer.give_up = LeaderNotAvailableError()
    with pytest.raises(LeaderNotAvailableError):
        await (await producer.send("t-requests", b"first", b"person"))
    for value in (b"first", b"second"):
        with pytest.raises(OutOfOrderSequenceNumber):
            await (await producer.send("t-requests", value, b"person"))
    assert producer.written == []
    await producer.stop()


@pytest.mark.parametrize(
    ("error", "written_anyway"),
    [(LeaderNotAvailableError(), False), (NotLeaderForPartitionError(), True)],
    ids=["given-up-unsent", "given-up-after-the-broker-wrote-it"],
)
async def test_a_record_given_up_for_want_of_a_leader_is_sent_again_under_a_new_producer_id(
    made: list[AsTheBrokerSeesIt], error: KafkaError, written_anyway: bool
) -> None:
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink._started()
    [producer] = made
    producer.give_up, producer.written_anyway = error, written_anyway
    # given up, perhaps written: not a 503, sent again on the same producer until Kafka has it
    await sink.send("t-requests", b"person", b"first")
    await sink.send("t-requests", b"person", b"second")  # Kafka is back: written, not refused
    await sink.send("t-requests", b"person", b"third")
    assert made == [producer]
    assert producer.handed == [b"first", b"first", b"second", b"third"]
    copy = [(1, b"first")] if written_anyway else []  # the same delivery: the ledger takes one
    assert producer.written == [*copy, (2, b"first"), (2, b"second"), (2, b"third")]
    await sink.close()
    assert producer._closed


async def test_a_record_goes_to_the_partition_of_the_count_the_topics_were_created_with(
    made: list[AsTheBrokerSeesIt],
) -> None:
    """The topic has 10 partitions now (2 added since it was created with 8): a webhook goes
    where the ledger keeps the person's state, as every other record of [requests], and so does
    a record sent again after Kafka gave it up; the added partitions stay empty."""
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"}, partitions=8)
    await sink._started()
    [producer] = made
    people = [f"acme:{n}@example.com".encode() for n in range(40)]
    for person in people:
        await sink.send("t-requests", person, b"{}")
    producer.give_up = LeaderNotAvailableError()
    await sink.send("t-requests", people[2], b"again")  # given up, sent again: the same one
    expected = [partition_of(8)(person) for person in people]
    assert producer.partitions == [*expected, expected[2], expected[2]]
    assert max(producer.partitions) < 8
    await sink.close()


async def test_a_record_refused_is_a_503_and_the_next_is_written_under_a_new_producer_id(
    made: list[AsTheBrokerSeesIt],
) -> None:
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink._started()
    [producer] = made
    await sink.send("t-requests", b"person", b"first")
    producer.refuse = TopicAuthorizationFailedError()  # refused: its number is spent all the same
    with pytest.raises(BrokerUnavailable, match="TopicAuthorizationFailedError") as refused:
        await sink.send("t-requests", b"person", b"refused")
    await sink.send("t-requests", b"person", b"after")
    assert made == [producer]
    assert producer.written == [(1, b"first"), (2, b"after")]
    # the broker's answer: not written, and the 503 says so, and why
    assert refused.value.written is False
    assert refused.value.told == "Kafka refused the record (TopicAuthorizationFailedError)"
    await sink.close()


async def test_a_record_the_producer_failed_holding_is_sent_again_not_answered_503(
    monkeypatch: pytest.MonkeyPatch, made: list[AsTheBrokerSeesIt]
) -> None:
    """A delivery failed by the producer on an error of its own (not the broker's refusal: a
    transport error no retry of aiokafka's covers) may have been written. The sink said "Kafka
    refused the record", and the 503 that nothing was written; then a 503 "perhaps written":
    either way Talkable was told to retry a webhook Kafka may hold. It is sent again, on the
    same producer (still sending, under its new producer id), and answered once Kafka has it."""
    monkeypatch.setattr(ingress, "RESEND_PAUSE_S", 0)
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink._started()
    [producer] = made
    producer.give_up = KafkaError("a transport error")
    producer.written_anyway = True
    await sink.send("t-requests", b"person", b"held")  # not a 503: answered once Kafka has it
    assert made == [producer]
    assert producer.handed == [b"held", b"held"]
    # the same delivery twice (the ledger takes one), the second under the new producer id
    assert producer.written == [(1, b"held"), (2, b"held")]
    await sink.close()


@pytest.mark.parametrize("written_anyway", [False, True], ids=["unwritten", "written"])
async def test_a_producer_whose_sender_failed_is_replaced_and_what_it_held_sent_on_the_new_one(
    made: list[AsTheBrokerSeesIt], written_anyway: bool
) -> None:
    """aiokafka's sender, failing on an error of its own, fails every record in flight with a
    bare KafkaError ("Unexpected error during batch delivery"), whether or not the broker had
    written it, and the producer never sends again: every later send raises that error. The
    ingress answered those records 503 ("perhaps written"), and every webhook after them 503
    ("Kafka did not take the record") until it was restarted. The sink takes a new producer,
    one for all the webhooks that find the old one so, and sends the records it held on it."""
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink._started()
    [first] = made
    first.crash = KafkaError("Unexpected error during batch delivery")
    first.written_anyway = written_anyway
    # both held when the sender fails: neither is a 503
    await asyncio.gather(
        sink.send("t-requests", b"person", b"held"), sink.send("t-requests", b"other", b"also")
    )
    await sink.send("t-requests", b"person", b"after")  # the ingress goes on
    [first, second] = made
    assert first.written == ([(1, b"held")] if written_anyway else [])  # taken once by the ledger
    assert sorted(second.written[:2]) == [(1, b"also"), (1, b"held")]
    assert second.written[2:] == [(1, b"after")]
    assert first._closed  # stopped, its connections closed
    await sink.close()
    assert second._closed


async def test_readiness_says_a_producer_whose_sender_failed_until_its_replacement_starts(
    made: list[AsTheBrokerSeesIt],
) -> None:
    """A producer whose sender failed with no webhook in flight: /readyz said ready (or no
    broker answered) while every webhook would be refused; a load balancer taking the ingress
    out then left it so, with no webhook to find the producer dead. The probe replaces it, and
    says so until the new one has started."""
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink._started()
    [first] = made
    first.die(KafkaError("Unexpected error during batch delivery"))
    AsTheBrokerSeesIt.starts = starts = asyncio.Event()  # the new producer's start waits
    status = await sink.ready("t-requests", 0.01)
    assert status == (
        "Kafka's producer failed (KafkaError: Unexpected error during batch delivery); a new "
        "one is connecting"
    )
    starts.set()
    await sink.send("t-requests", b"person", b"after")  # on the one the probe started
    [first, second] = made
    assert second.written == [(1, b"after")]
    assert first.written == []
    await sink.close()


class DiesInSend(SinksProducer):
    """The sink's producer whose sender task ends while its ``send`` runs (waiting for the
    topic's metadata, or for room): that send raises the sender's error, never holding the
    record (``dies``: every producer made from then on, until cleared)."""

    dies: ClassVar[KafkaError | None] = None

    async def send(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        if self.dies is not None and self._sender_error() is None:
            self.die(copy.copy(self.dies))
        return await super().send(topic, value, key, partition)


async def test_a_record_the_producer_failed_to_take_as_its_sender_ended_goes_to_its_replacement(
    monkeypatch: pytest.MonkeyPatch, made: list[AsTheBrokerSeesIt]
) -> None:
    """The producer's sender ended while the webhook's ``send`` ran: that send raised the
    sender's error, the record never held (surely not written), and the webhook was answered
    503 "nothing was written", the producer replaced only at the next call. It is handed
    once to the replacement, and answered once Kafka has it; a replacement that fails the
    same way is a 503 (nothing written), no third producer started for it."""
    monkeypatch.setattr(ingress, "IdempotentProducer", DiesInSend)
    DiesInSend.dies = KafkaError("Unexpected error during batch delivery")
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    await sink._started()
    [first] = made
    DiesInSend.dies = None  # (the replacement sends)
    first.dies = KafkaError("Unexpected error during batch delivery")
    await sink.send("t-requests", b"person", b"webhook")  # not a 503
    [first, second] = made
    assert first.handed == [] and first.written == [] and first._closed
    assert second.written == [(1, b"webhook")]

    DiesInSend.dies = KafkaError("Unexpected error during batch delivery")  # each one dies
    second.dies = DiesInSend.dies
    with pytest.raises(BrokerUnavailable, match="nothing was sent") as refused:
        await sink.send("t-requests", b"person", b"refused")
    assert refused.value.written is False
    assert len(made) == 3 and made[2].handed == [], "handed once to a replacement"
    DiesInSend.dies = None
    await sink.close()


class Starting(SinksProducer):
    """The sink's producer, ``began`` set as its start begins."""

    began: ClassVar[asyncio.Event]

    async def start(self) -> None:
        self.began.set()
        await super().start()


async def test_a_producer_whose_start_ends_after_the_sink_closed_is_stopped(
    monkeypatch: pytest.MonkeyPatch, made: list[AsTheBrokerSeesIt]
) -> None:
    """``close`` waits for a producer's start in progress at most the sink's timeout: a start
    that ended after (a broker slow to answer, a replacement's start after its predecessor's
    stop) left its producer running, connected to the brokers, its sender too, though the
    sink was closed. The start stops it, and refuses its callers."""
    monkeypatch.setattr(ingress, "IdempotentProducer", Starting)
    Starting.began = asyncio.Event()
    AsTheBrokerSeesIt.starts = starts = asyncio.Event()  # the start waits
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    starting = asyncio.ensure_future(sink._producer_now())  # (a webhook's, or a probe's)
    await Starting.began.wait()  # (within the timeout it began with)
    sink._timeout = 0.0  # the close waits for it no more: as past its timeout
    await sink.close()
    assert not starting.done() and made[0]._closed is False, "still starting"
    starts.set()  # the start ends, after the close
    with pytest.raises(BrokerUnavailable, match="stopping"):
        await starting
    [producer] = made
    assert producer._closed and sink._producer is None, "left running"


async def in_doubt_of(
    made: list[AsTheBrokerSeesIt], sink: KafkaSink
) -> tuple[KafkaSink, AsTheBrokerSeesIt, asyncio.Future[None]]:
    """``sink``'s first record given up for want of a leader and being sent again (every
    RESEND_PAUSE_S), its producer's ``reachable`` set."""
    await sink._started()
    [producer] = made
    producer.give_up = LeaderNotAvailableError()
    producer.reachable = asyncio.Event()
    producer.reachable.set()
    in_doubt = asyncio.ensure_future(sink.send("t-requests", b"person", b"first"))
    await asyncio.wait_for(producer.tried_again.wait(), 5)
    return sink, producer, in_doubt


async def test_a_record_sent_again_when_the_sink_closes_is_a_503_that_says_perhaps_written(
    monkeypatch: pytest.MonkeyPatch, made: list[AsTheBrokerSeesIt]
) -> None:
    """A record given up for want of a leader, waiting for Kafka to take it again, when the
    ingress stops: its send raised ProducerClosed, a KafkaError no handler catches (a 500). It
    may be written, and is said so. A webhook after the close is refused, no producer started
    for it (one was, and left running)."""
    monkeypatch.setattr(ingress, "RESEND_PAUSE_S", 0.01)
    sink, producer, in_doubt = await in_doubt_of(
        made, KafkaSink({"bootstrap_servers": "127.0.0.1:1"})
    )
    await sink.close()
    with pytest.raises(BrokerUnavailable) as stopped:
        await asyncio.wait_for(in_doubt, 5)
    assert stopped.value.written is None  # the ingress's 503: "perhaps written"
    assert stopped.value.told == "the ingress stopped before Kafka acknowledged the record"
    with pytest.raises(BrokerUnavailable) as refused:
        await sink.send("t-requests", b"person", b"after")
    assert (refused.value.written, refused.value.told) == (False, "the ingress is stopping")
    assert made == [producer]
    assert producer.written == []


async def test_a_record_in_doubt_waits_for_kafka_and_new_records_are_refused_meanwhile(
    monkeypatch: pytest.MonkeyPatch, made: list[AsTheBrokerSeesIt]
) -> None:
    monkeypatch.setattr(ingress, "RESEND_PAUSE_S", 0.01)
    sink = KafkaSink({"bootstrap_servers": "127.0.0.1:1"}, stall_seconds=0.0)
    sink, producer, in_doubt = await in_doubt_of(made, sink)
    reachable = producer.reachable

    assert not in_doubt.done()
    with pytest.raises(
        BrokerUnavailable, match="Kafka is not acknowledging; nothing was sent"
    ) as stalled:
        await sink.send("t-requests", b"other", b"new")  # not handed over: nothing written
    assert stalled.value.written is False
    assert stalled.value.told == (
        "Kafka has not acknowledged a write for more than 0 seconds, so new ones are refused "
        "until it does"
    )
    reachable.set()
    await asyncio.wait_for(in_doubt, 5)
    assert producer.handed == [b"first", b"first"]
    assert producer.written == [(2, b"first")]
    await sink.close()


class Unanswering:
    """A broker that takes connections and never answers, as a hung one does (SIGSTOP: the
    kernel still accepts) or one behind a network that drops everything; counts them."""

    def __init__(self) -> None:
        self.connections = 0
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _hold(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._held.append(writer)

    async def __aexit__(self, *_: object) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def test_webhooks_that_arrive_while_the_producer_starts_share_that_start() -> None:
    """A burst of webhooks on an ingress whose producer has not started yet (just started, or
    Kafka down since), the broker taking connections and answering nothing: each webhook
    started a producer of its own, one after another behind the sink's lock, so a burst's
    k-th was answered 503 after k start timeouts (the 20th of 20 after 196 s, at the default
    10 s): long past Talkable's patience, the ingress holding every connection meanwhile.
    They wait for the one start, and are all answered 503 when it fails."""
    broker = Unanswering()
    async with broker as address:
        sink = KafkaSink({"bootstrap_servers": address}, timeout=1.0)
        try:
            outcomes = await asyncio.gather(
                *(sink.send("t-requests", b"person", b"%d" % i) for i in range(5)),
                return_exceptions=True,
            )
        finally:
            await sink.close()
    assert all(isinstance(outcome, BrokerUnavailable) for outcome in outcomes), outcomes
    assert broker.connections == 1  # one try to reach Kafka, not one for each webhook


class ControllerListener:
    """A KRaft controller's listener, as a bootstrap set to the controller's port meets it: it
    lets a client in and answers ApiVersions, listing no Metadata (what every client asks a
    bootstrap server first), and nothing else."""

    API_VERSIONS = 18

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                api_key, version, correlation = struct.unpack(">hhi", await reader.readexactly(8))
                await reader.readexactly(size - 8)
                if api_key == self.API_VERSIONS:
                    supported = [(self.API_VERSIONS, 0, 2), (55, 0, 1)]  # DescribeQuorum
                    body = (
                        ApiVersionResponse_v0(0, supported)
                        if version == 0
                        else ApiVersionResponse_v1(0, supported, 0)
                    )
                    answer = struct.pack(">i", correlation) + body.encode()
                    writer.write(struct.pack(">i", len(answer)) + answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()


async def test_a_bootstrap_at_a_controllers_port_is_named_so_by_readiness_and_sends() -> None:
    """The ingress at a KRaft controller's port (KAFKA_CONTROLLER_PORT, a slip easily made):
    its /readyz status and the 503's log line said "cannot connect to a broker", where every
    command says the listener answers, but not as a broker. They say the same now."""
    async with ControllerListener() as address:
        settings = Settings(kafka_bootstrap=address)
        sink = KafkaSink(client_options(settings), timeout=5.0, diagnose=lambda: diagnose(settings))
        try:
            status = await sink.ready("t-requests", 10.0)
            with pytest.raises(BrokerUnavailable) as refused:
                await sink.send("t-requests", b"person", b"{}")
        finally:
            await sink.close()
    said = (
        f"Kafka unavailable: Kafka at {address} answers, but not as a broker: it serves no "
        "Metadata requests, as a KRaft controller's listener does (the controller port, not "
        "the broker's?)"
    )
    assert (status, str(refused.value)) == (said, said)
    # the webhook's sender is told what happened, not where the brokers are
    assert (refused.value.told, refused.value.written) == ("Kafka could not be reached", False)

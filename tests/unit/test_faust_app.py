"""The worker's faust app (``streams.faust_transport``): a record of bytes goes to aiokafka's
producer as it is, anything else takes faust's own way; faust's Monitor, which nothing reads,
is told of nothing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import types
from typing import Any

import faust
import pytest
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner
from faust.assignor.client_assignment import ClientAssignment
from faust.types import TP, Message

from streams.app import RAW, _topics
from streams.faust_transport import NOT_TAKEN, App, Stream, Table, Topic
from streams.kafka_options import GivenUp
from streams.logs import REPEATED
from streams.settings import Settings
from streams.topics import partition_of


class Recording:
    """aiokafka's producer as faust's driver holds it: what was sent, and with what."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    async def send(self, topic: str, value: Any, **options: Any) -> asyncio.Future[str]:
        self.sent.append((topic, value, options))
        delivery: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        delivery.set_result(f"{topic}@{len(self.sent) - 1}")
        return delivery


class Failing(Recording):
    """aiokafka's producer that Kafka takes nothing from: each delivery fails with ``error``."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__()
        self.error = error

    async def send(self, topic: str, value: Any, **options: Any) -> asyncio.Future[str]:
        self.sent.append((topic, value, options))
        delivery: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        delivery.set_exception(self.error)
        return delivery


class Started:
    """faust's producer, started, on top of :class:`Recording`."""

    started = True

    def __init__(self, aiokafka: Recording | None = None) -> None:
        self.aiokafka = aiokafka or Recording()

    def _ensure_producer(self) -> Recording:
        return self.aiokafka

    async def send(self, topic: str, key: Any, value: Any, **options: Any) -> Any:
        return await self.aiokafka.send(topic, value, key=key, via="faust", **options)


class Counting:
    """A sensor that counts the records faust reports as sent."""

    def __init__(self) -> None:
        self.initiated = 0

    def on_send_initiated(self, *_: Any, **__: Any) -> None:
        self.initiated += 1

    def __getattr__(self, _: str) -> Any:
        return lambda *args, **kwargs: None


def app_with(producer: Started, sensor: Counting, **options: Any) -> faust.App:
    app = App(
        "t-faust-app", broker="kafka://127.0.0.1:1", autodiscover=False, Topic=Topic, **options
    )
    app.producer = producer  # type: ignore[assignment]
    app.sensors.add(sensor)  # type: ignore[arg-type]
    return app


async def test_a_record_of_bytes_goes_to_aiokafka_as_it_is() -> None:
    producer, sensor = Started(), Counting()
    topic = app_with(producer, sensor).topic("t-faust-app-requests", **RAW)
    delivery: Any = await topic.send(key=b"acme:ann", value=b'{"kind":"x"}')
    assert await delivery == "t-faust-app-requests@0"  # aiokafka's own delivery
    assert producer.aiokafka.sent == [
        ("t-faust-app-requests", b'{"kind":"x"}', {"key": b"acme:ann"})
    ]
    assert sensor.initiated == 0  # not through faust's future message and its sensors


async def test_a_record_of_bytes_with_its_partition_goes_to_aiokafka_as_it_is() -> None:
    producer, sensor = Started(), Counting()
    topic = app_with(producer, sensor).topic("t-faust-app-requests", **RAW)
    await topic.send(key=b"acme:ann", value=b"{}", partition=2)  # a gap probe's, say
    assert producer.aiokafka.sent == [
        ("t-faust-app-requests", b"{}", {"key": b"acme:ann", "partition": 2})
    ]
    assert sensor.initiated == 0


class Partitioning(Recording):
    """aiokafka's producer whose metadata of the topic shows ``partitions`` (more than the
    topics were created with: some were added since), choosing a record's partition as
    aiokafka does: the one given, else its default partitioner's over those it knows now."""

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self.now = list(range(partitions))

    async def send(self, topic: str, value: Any, **options: Any) -> asyncio.Future[str]:
        chosen = options.get("partition")
        if chosen is None:
            chosen = DefaultPartitioner()(options["key"], self.now, self.now)
        return await super().send(topic, value, **{**options, "partition": chosen})


@pytest.mark.parametrize("way", ["as it is", "faust's way"])
async def test_requests_records_go_to_the_partition_of_the_count_the_topics_were_created_with(
    way: str,
) -> None:
    """Partitions added to [requests] stay empty: a record of a person goes where the ledger
    keeps that person's state (``partition_of`` over the configured count, as the ingress and
    redrive write), not where Kafka's partitioner over the topic's partitions now would."""
    aiokafka = Partitioning(10)
    app = app_with(Started(aiokafka), Counting())
    topics = _topics(app, Settings(partitions=8))  # the app's topics, as the worker's
    requests = topics.requests
    people = [f"acme:{n}@example.com".encode() for n in range(40)]
    extra = {} if way == "as it is" else {"headers": {"h": b"v"}}
    for person in people:
        await requests.send(key=person, value=b"{}", **extra)
    chosen = [options["partition"] for _, _, options in aiokafka.sent]
    assert chosen == [partition_of(8)(person) for person in people]
    assert max(chosen) < 8
    # the catch: the broker's count would have moved people, some to the added partitions
    moved = [DefaultPartitioner()(person, aiokafka.now, aiokafka.now) for person in people]
    assert moved != chosen and max(moved) >= 8
    # the other topics are keyed otherwise, and their partitions are Kafka's to choose
    assert [topics.generate.partition_of, topics.completions.partition_of] == [None, None]


@pytest.mark.parametrize(
    "options",
    [{"headers": {"h": b"v"}}, {"value": "text, not bytes"}],
    ids=["headers", "a value to serialize"],
)
async def test_anything_else_takes_fausts_way(options: dict[str, Any]) -> None:
    producer, sensor = Started(), Counting()
    topic = app_with(producer, sensor).topic("t-faust-app-requests", **RAW)
    await topic.send(**{"key": b"acme:ann", "value": b"{}", **options})
    [(name, _, sent_with)] = producer.aiokafka.sent
    assert (name, sent_with["via"]) == ("t-faust-app-requests", "faust")
    assert sensor.initiated == 1


async def sent_fausts_way_and_not_taken(error: KafkaError) -> list[BaseException | None]:
    """A record with a partition and headers (its caller awaits the delivery faust's ``send``
    returns) and two of a table's changelog (faust's producer buffer publishes the future message
    ``send_soon`` made: one awaited, and one kept by nobody, as a table keeps them), sent
    faust's way, none taken by Kafka: what the sender and the waiter learn. Returns with
    nothing of the records referenced."""
    app = app_with(Started(Failing(error)), Counting())
    requests = app.topic("t-faust-app-requests", **RAW)
    changelog = app.topic("t-faust-app-ledger-changelog", **RAW)
    delivery: Any = await requests.send(
        key=b"acme:ann", value=b"{}", partition=2, headers={"h": b"v"}
    )
    for partition in (1, 3):  # as faust's buffer does
        written = changelog.as_future_message(key=b"acme:ann", value=b"{}", partition=partition)
        await changelog.publish_message(written, wait=False)
    learnt = [await asyncio.gather(delivery, return_exceptions=True)]
    learnt.append(await asyncio.gather(written, return_exceptions=True))
    return [failed if isinstance(failed, BaseException) else None for [failed] in learnt]


@pytest.mark.parametrize(
    "error",
    [KafkaTimeoutError("no leader"), GivenUp("the worker stopped before Kafka took it")],
    ids=["in an outage", "given up by a stop"],
)
async def test_a_record_sent_fausts_way_that_kafka_did_not_take_is_said_once(
    error: KafkaError, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sender learns the failure, and so does whoever awaits its future message; it is
    said once, as a WARNING naming what Kafka did not take, or not at all when a stopping
    worker gave up on it (its stop's WARNING counts it). faust dropped each record's future
    message with the failure set, and once collected asyncio logged an ERROR "Future exception
    was never retrieved" with a traceback for each, after an outage and at such a stop."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []  # (what it said, not the context: that would keep it alive)
    loop.set_exception_handler(lambda _, context: reported.append(str(context["message"])))
    caplog.set_level(logging.WARNING)
    # each line (a test that set the process's logging up left its one-every-10-s filter)
    monkeypatch.setattr(logging.getLogger("streams.faust_transport"), "filters", [])
    try:
        learnt = await sent_fausts_way_and_not_taken(error)
        await asyncio.sleep(0)  # one turn: the done callbacks the failures scheduled run
        gc.collect()  # a future collected failed and unread is reported now
    finally:
        loop.set_exception_handler(None)
    assert learnt == [error, error]
    assert reported == []
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    if isinstance(error, GivenUp):
        assert said == []
        return
    assert [level for level, _ in said] == ["WARNING"] * 3
    assert "t-faust-app-requests partition=2 (KafkaTimeoutError: " in said[0][1]
    assert "its changelog" not in said[0][1]
    for line, partition in zip(said[1:], (1, 3), strict=True):
        assert f"t-faust-app-ledger-changelog partition={partition} (KafkaTimeoutError" in line[1]
        assert "its changelog does not" in line[1]  # what it means for a table
    assert NOT_TAKEN in REPEATED["streams.faust_transport"]  # an outage's: one line every 10 s


class TakingAfter(Recording):
    """aiokafka's producer that gives up on the first ``failures`` records (``error``: their
    partition without a leader for its request timeout) and takes the rest."""

    def __init__(self, error: KafkaError, failures: int = 1) -> None:
        super().__init__()
        self.error, self.failures = error, failures
        self.taken: list[tuple[str, Any, dict[str, Any]]] = []

    async def send(self, topic: str, value: Any, **options: Any) -> asyncio.Future[str]:
        self.sent.append((topic, value, options))
        delivery: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            delivery.set_exception(self.error)
        else:
            self.taken.append((topic, value, options))
            delivery.set_result(f"{topic}@{len(self.sent) - 1}")
        return delivery


class Buffered(Started):
    """faust's producer with its buffer: what ``send_soon`` is given is published in a task
    of its own (faust's buffer does it on its next turn)."""

    def __init__(self, aiokafka: Recording) -> None:
        super().__init__(aiokafka)
        self.soon: list[asyncio.Task[Any]] = []

    def send_soon(self, fut: Any) -> None:
        self.soon.append(asyncio.ensure_future(fut.message.channel.publish_message(fut)))

    async def published(self) -> None:
        while not all(task.done() for task in self.soon):  # (a publication may add one)
            await asyncio.gather(*self.soon)
            await asyncio.sleep(0)  # one turn: the done callbacks of what was published run


CHANGELOG = "t-faust-app-ledger-changelog"


@pytest.mark.parametrize(
    "case",
    ["held", "a partition not held", "a key forgotten", "refused for good"],
)
async def test_a_changelog_record_kafka_did_not_take_is_written_again_with_the_value_now(
    case: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's table wrote a person's state; Kafka gave up on its changelog record. The
    table holds the write and the changelog did not: a worker recovering the partition had
    the person's earlier state (or an offset mark past it). While this worker holds the
    partition, the key's value now is written again; not for a partition it no longer holds,
    a key no longer in the table, or a refusal no retry fixes."""
    error: KafkaError = (
        MessageSizeTooLargeError() if case == "refused for good" else NotLeaderForPartitionError()
    )
    aiokafka = TakingAfter(error)
    producer = Buffered(aiokafka)
    app = app_with(producer, Counting())
    table = app.Table("ledger", default=None, partitions=4, key_type=bytes, value_type=bytes)
    assert table.changelog_topic.get_topic_name() == CHANGELOG
    held = {TP(CHANGELOG, 1)} if case != "a partition not held" else {TP(CHANGELOG, 3)}
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: held)
    if case != "a key forgotten":
        table.data[b"acme:ann"] = b'{"state":"now"}'  # (the store alone: no changelog record)
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(logging.getLogger("streams.faust_transport"), "filters", [])

    table.send_changelog(1, b"acme:ann", b'{"state":"given up on"}')
    await producer.published()

    again = [(topic, value, o["partition"]) for topic, value, o in aiokafka.taken]
    [said] = [r.getMessage() for r in caplog.records if r.name == "streams.faust_transport"]
    assert f"{CHANGELOG} partition=1 ({type(error).__name__}" in said
    if case == "held":
        assert again == [(CHANGELOG, b'{"state":"now"}', 1)]
        assert "written again with the key's value now" in said
    else:
        assert again == []
        assert "its changelog does not" in said


async def test_the_tables_changelog_writes_are_kept_for_the_ledger_one_written_again_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger waits for the changelog writes of a batch before it marks the batch's
    offsets (``streams.agents.ledger``): the app's table keeps the future of each (faust's
    drops it), a write given up on and written again with the key's value now too."""
    aiokafka = TakingAfter(NotLeaderForPartitionError())
    producer = Buffered(aiokafka)
    app = app_with(producer, Counting(), Table=Table)
    table = app.Table("ledger", default=None, partitions=4, key_type=bytes, value_type=bytes)
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: {TP(CHANGELOG, 1)})
    table.data[b"acme:ann"] = b'{"state":"now"}'

    first = table.send_changelog(1, b"acme:ann", b'{"state":"given up on"}')
    assert table.written() == [first]
    assert table.written() == []  # each once
    await producer.published()

    assert isinstance(first.exception(), NotLeaderForPartitionError)
    [again] = table.written()
    assert again.result() == f"{CHANGELOG}@1"  # taken
    assert [value for _, value, _ in aiokafka.taken] == [b'{"state":"now"}']


def test_fausts_monitor_is_not_among_the_sensors() -> None:
    app = App("t-faust-app", broker="kafka://127.0.0.1:1", autodiscover=False)
    list(app.on_init_dependencies())  # where faust adds its Monitor
    assert app.monitor not in set(app.sensors)
    plain = faust.App("t-faust-plain", broker="kafka://127.0.0.1:1", autodiscover=False)
    list(plain.on_init_dependencies())
    assert plain.monitor in set(plain.sensors)  # what it would have been told of everything


async def test_the_livelock_check_passes_over_what_is_paused_on_purpose() -> None:
    """faust's livelock check asks aiokafka, every few seconds, whether each assigned partition
    was fetched lately. The ledger's changelog partitions are paused once recovered (in
    aiokafka too: they are the table's own writes), so after 5 minutes every worker logged an
    ERROR "Aiokafka has not sent fetch request" for each of them, for as long as it ran."""
    app = App("t-faust-app", broker="talkstream://127.0.0.1:1", autodiscover=False, Topic=Topic)
    consumer = app.consumer
    changelog, requests = TP("t-faust-app-ledger-changelog", 0), TP("t-faust-app-requests", 0)
    asked: list[TP] = []
    consumer._thread.verify_event_path = lambda now, tp: asked.append(tp)  # type: ignore[method-assign]
    consumer.assignment = lambda: {changelog, requests}  # type: ignore[method-assign]
    consumer.pause_partitions([changelog])
    await consumer.verify_all_partitions_active()
    assert asked == [requests]
    consumer.resume_partitions([changelog])  # recovering it: fetched, so checked
    await consumer.verify_all_partitions_active()
    assert sorted(asked) == sorted([requests, changelog, requests])


async def test_offsets_the_ledger_read_back_itself_let_faust_commit_past_them() -> None:
    """faust commits a partition up to its first offset neither acknowledged nor known to it as
    a gap. Seen in `talkstream bench --tiny --workers 2`: after a rebalance faust took 53 and
    54 from aiokafka and dropped them, the ledger read them back (streams.gaps) and decided
    them, and faust's commits of the partition stopped at 53 for as long as the worker held
    it: every later phase waited its whole catch-up timeout for the group's lag to end."""
    app = App("t-faust-app", broker="talkstream://127.0.0.1:1", autodiscover=False, Topic=Topic)
    consumer = app.consumer
    requests = TP("t-faust-app-requests", 3)
    app.topics._acking_topics.add(requests.topic)
    consumer._committed_offset[requests] = 50
    consumer.assignment = lambda: {requests}  # type: ignore[method-assign]

    def delivered(offset: int) -> Message:
        return Message(requests.topic, 3, offset, 0.0, 0, None, b"k", b"v", None, tp=requests)

    for offset in (50, 51, 52, 55, 56):  # 53 and 54 never reached the agent
        assert consumer.ack(delivered(offset))
    assert consumer._new_offset(requests) == 53
    consumer._committed_offset[requests] = 53  # committed
    for offset in (57, 58):
        assert consumer.ack(delivered(offset))
    assert consumer._new_offset(requests) is None  # stuck: 53 is never acknowledged

    await consumer.acknowledge_range(requests, 53, 54)
    assert consumer._new_offset(requests) == 59

    gone = TP(requests.topic, 2)  # revoked while its batch was decided: faust forgot it
    await consumer.acknowledge_range(gone, 7, 8)
    assert gone not in consumer._gap


async def test_commits_the_ledger_holds_wait_until_it_releases_them_or_the_partition_goes() -> None:
    """The ledger holds a partition's commits while a batch of it is not stored (faust is
    told it is done all the same): faust commits nothing of it, and what was acknowledged
    meanwhile is committed once released. A revocation ends a hold (the partition's next owner
    starts from the commit held back; a hold kept would stop this worker's commits of it for
    good, were it assigned again); a partition not assigned is not held."""
    app = App("t-faust-app", broker="talkstream://127.0.0.1:1", autodiscover=False, Topic=Topic)
    consumer = app.consumer
    requests = TP("t-faust-app-requests", 3)
    app.topics._acking_topics.add(requests.topic)
    consumer.assignment = lambda: {requests}  # type: ignore[method-assign]

    def delivered(offset: int) -> Message:
        return Message(requests.topic, 3, offset, 0.0, 0, None, b"k", b"v", None, tp=requests)

    assert consumer.ack(delivered(50))
    consumer.hold_commits(requests)
    assert consumer.ack(delivered(51))
    assert consumer._filter_committable_offsets([requests]) == {}
    consumer.release_commits(requests)
    assert consumer._filter_committable_offsets([requests]) == {requests: 52}

    consumer.hold_commits(requests)
    revoked: list[set[TP]] = []

    async def on_revoked(tps: set[TP]) -> None:  # the app's own handling (its wait, commits)
        revoked.append(tps)

    consumer._on_partitions_revoked = on_revoked
    await consumer.on_partitions_revoked({requests})
    assert revoked == [{requests}]
    assert consumer.ack(delivered(52))  # assigned again (faust's books of it start again)
    assert consumer._filter_committable_offsets([requests]) == {requests: 53}

    gone = TP(requests.topic, 2)
    consumer.hold_commits(gone)
    assert consumer.ack(Message(gone.topic, 2, 7, 0.0, 0, None, b"k", b"v", None, tp=gone))
    assert consumer._filter_committable_offsets([gone]) == {gone: 8}


async def test_the_last_offset_faust_took_is_known_per_partition_it_reads_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the ledger's gap timer compares with what it received: the last offset of each
    partition faust took from Kafka, noted before faust hands it on (a message dropped on the
    way was taken all the same); a paused partition is not being read, and a revoked one
    starts over."""
    app = App("t-faust-app", broker="talkstream://127.0.0.1:1", autodiscover=False, Topic=Topic)
    consumer = app.consumer
    topic = "t-faust-app-requests"
    fetched = [(TP(topic, p), o) for p, o in ((0, 7), (1, 3), (0, 8), (2, 5))]
    fetched.append((TP("t-faust-app-ledger-changelog", 0), 99))

    async def getmany(self: Any, timeout: float) -> Any:
        for tp, offset in fetched:
            yield tp, Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)

    monkeypatch.setattr(faust.transport.consumer.Consumer, "getmany", getmany)
    handed_on = [(tp.partition, message.offset) async for tp, message in consumer.getmany(1.0)]
    assert handed_on == [(tp.partition, offset) for tp, offset in fetched]  # all, in order

    assigned = {TP(topic, p) for p in (0, 1, 2)} | {TP("t-faust-app-ledger-changelog", 0)}
    consumer.assignment = lambda: assigned  # type: ignore[method-assign]
    assert consumer.taken(topic) == {0: 8, 1: 3, 2: 5}
    consumer._paused_partitions.add(TP(topic, 1))
    assert consumer.taken(topic) == {0: 8, 2: 5}

    await consumer.on_partitions_revoked({TP(topic, 0)})
    assert consumer.taken(topic) == {}  # faust pauses what it keeps while it rebalances
    consumer._paused_partitions.clear()  # and resumes it once its tables are recovered
    assert consumer.taken(topic) == {1: 3, 2: 5}  # partition 0: kept, it would start over


class Feed:
    """What ``Stream.take_events`` uses of a faust stream: its processors, run here on each
    message put in (faust's passive drainer does so as messages arrive), its waits, and its
    acknowledgements; and how each wait was asked for."""

    def __init__(self) -> None:
        self._processors: list[Any] = []
        self._active_agens: set[Any] = set()
        self.channel = Feed.Channel()
        self.current_event: Any = None
        self.enable_acks = True
        self.should_stop = False
        self.timeouts: list[float | None] = []  # of each wait for a batch
        self.acked: list[str] = []

    _batches = Stream._batches

    class Channel:
        """faust's passive drainer would read it: here ``put`` stands for it."""

        def __aiter__(self) -> Any:
            return self

        async def __anext__(self) -> Any:
            raise StopAsyncIteration

    def add_processor(self, processor: Any) -> None:
        self._processors.append(processor)

    def _enable_passive(self, _: Any) -> None:
        pass

    async def put(self, event: str) -> None:
        self.current_event = event
        for processor in self._processors:
            await processor(event)

    async def wait(self, *events: Any, timeout: float | None = None) -> None:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout)

    async def wait_for_stopped(self, event: Any, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return self.should_stop

    async def ack(self, event: str) -> None:
        self.acked.append(event)


async def turns_until(condition: Any, turns: int = 100) -> None:
    """Give the event loop turns until ``condition()`` holds (at most ``turns``)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_quiet_stream_waits_for_a_message_and_batches_go_whole_and_acknowledged() -> None:
    """faust's own take_events looked at its buffer every ``within`` seconds, messages or not
    (8% of an idle worker's core at the ledger's 2 ms). The app's stream waits for a message
    without a timeout, and hands it out at once after a quiet spell; a batch that follows
    another gathers for ``within`` unless it fills first; a full batch holds the stream until
    it is handed out; each batch is acknowledged when the next is asked for."""
    feed = Feed()
    batches = Stream.take_events(feed, 3, within=60.0)  # type: ignore[arg-type]
    assert batches in feed._active_agens
    first = asyncio.ensure_future(anext(batches))
    await turns_until(lambda: feed.timeouts or first.done())
    assert feed.timeouts == [None] and not first.done()  # asleep until a message comes
    assert feed.enable_acks is False

    for event in ("a", "b"):
        await feed.put(event)
    assert await asyncio.wait_for(first, 1) == ["a", "b"]  # after a quiet spell: at once
    assert feed.timeouts == [None]  # (no window waited out, though the batch is not full)
    for event in ("c", "d", "e"):  # the batch was handed out: these gather for the next
        await asyncio.wait_for(feed.put(event), 1)
    arriving = asyncio.ensure_future(feed.put("f"))  # the next is full: "f" waits for room
    await asyncio.sleep(0)
    assert not arriving.done() and feed.acked == []

    assert await asyncio.wait_for(anext(batches), 1) == ["c", "d", "e"]
    assert feed.timeouts == [None]  # full: no window waited out
    assert feed.acked == ["a", "b"]
    await asyncio.wait_for(arriving, 1)  # handed out: room again
    third = asyncio.ensure_future(anext(batches))
    await turns_until(lambda: len(feed.timeouts) > 1 or third.done())
    assert feed.acked == ["a", "b", "c", "d", "e"]
    assert 59.0 < (feed.timeouts[-1] or 0) <= 60.0 and not third.done()  # gathering behind
    for event in ("g", "h"):
        await feed.put(event)
    assert await asyncio.wait_for(third, 1) == ["f", "g", "h"]  # full: the window cut short

    await batches.aclose()
    assert feed.acked == ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert feed._processors == [] and feed.enable_acks is True


def acked_partition() -> tuple[Any, Any, TP]:
    """A worker's consumer, its consumer thread and a partition of [requests] it acks (as the
    ledger's stream does), as the livelock check sees them."""
    app = App("t-faust-app", broker="talkstream://127.0.0.1:1", autodiscover=False, Topic=Topic)
    tp = TP("t-faust-app-requests", 0)
    app.topics._acking_topics.add(tp.topic)
    return app.consumer, app.consumer._thread, tp


def fetching(thread: Any, state: Any) -> None:
    """aiokafka's books of every partition the consumer thread looks at, as the livelock
    check reads them: ``state`` (its last fetch's timestamp, highwater and position)."""
    assignment = types.SimpleNamespace(active=True, state_value=lambda _: state)
    aiokafka_consumer = types.SimpleNamespace(
        _fetcher=types.SimpleNamespace(
            _subscriptions=types.SimpleNamespace(
                subscription=types.SimpleNamespace(assignment=assignment)
            )
        )
    )
    thread._ensure_consumer = lambda: aiokafka_consumer


async def test_the_livelock_check_sees_the_ledger_take_its_messages(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """faust's livelock check says a stream "has not started processing" a partition that
    aiokafka fetches ahead of (highwater past its position) unless faust's Monitor noted the
    stream taking a message of it; the Monitor is off (it is told of nothing), so every worker
    that had run 5 minutes logged that ERROR, with faust's page of possible causes, every
    ~7 s for each partition of [requests] whenever the ledger was behind its input: seen on
    both workers of a two-worker run during a burst of 1,700 webhooks, all decided at once.
    The consumer notes the time it hands a partition's messages on, as the Monitor did."""
    consumer, thread, tp = acked_partition()
    now = time.monotonic()
    thread.time_started = now - 600  # the worker has run 10 minutes
    thread.tp_last_committed_at[tp] = now  # and commits what the ledger decides
    state = types.SimpleNamespace(timestamp=now * 1000, highwater=120, position=100)
    fetching(thread, state)

    async def getmany(self: Any, timeout: float) -> Any:
        for offset in (98, 99):
            yield tp, Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)

    monkeypatch.setattr(faust.transport.consumer.Consumer, "getmany", getmany)
    assert len([message async for _, message in consumer.getmany(1.0)]) == 2
    with caplog.at_level(logging.ERROR):
        thread.verify_event_path(time.monotonic(), tp)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_the_livelock_check_gives_a_partition_just_assigned_its_time_to_be_fetched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """faust's livelock check counts "since start" from the worker's start, while aiokafka's
    books of a partition (its last fetch, its highwater) start again at each assignment: under
    `make dev`, a worker that had run 7 minutes logged an ERROR "Aiokafka has not sent fetch
    request for TP(...-requests, 4) since start" for each partition a second worker's joining
    gave it, checked between the rebalance and its first fetch. A partition still not fetched
    that long after its assignment is still said."""
    from faust.transport.drivers import aiokafka as driver

    app = App("t-faust-app", broker="talkstream://127.0.0.1:1", autodiscover=False, Topic=Topic)
    consumer = app.consumer
    thread = consumer._thread
    tp = TP("t-faust-app-requests", 4)
    thread.time_started = time.monotonic() - 600  # the worker has run 10 minutes
    state = types.SimpleNamespace(timestamp=None, highwater=None, position=None)  # not fetched
    fetching(thread, state)

    async def assigned_in_faust(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        pass  # (faust's own books and callbacks: not what is checked here)

    monkeypatch.setattr(driver.Consumer, "on_partitions_assigned", assigned_in_faust)
    monkeypatch.setattr(logging.getLogger("streams.faust_transport"), "filters", [])
    await consumer.on_partitions_assigned({tp}, 2)
    timeout = app.conf.stream_processing_timeout

    with caplog.at_level(logging.ERROR):
        consumer.verify_event_path(time.monotonic(), tp)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

    with caplog.at_level(logging.ERROR):
        consumer.verify_event_path(time.monotonic() + timeout + 1, tp)
    [said] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "has not sent fetch request" in said


@pytest.mark.parametrize("waiting", [False, True])
async def test_the_livelock_check_counts_commits_from_the_first_message_awaiting_one(
    waiting: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """faust's livelock check measured a partition's time without a commit from its last
    commit: a partition quiet for five minutes, committed up to its end, then fetched a burst
    (a campaign's) was read as not committed for that long, an ERROR "Has not committed
    TP(...) (last commit 6.11 minutes ago)" with faust's page of causes ending "report as
    bug", seen on the second worker of a make dev at the first burst after a quiet spell. The
    clock starts again at a message taken while nothing of its partition waited for a commit;
    while earlier messages wait for theirs (``waiting``), it runs on, and commits that stopped
    are still said."""
    consumer, thread, tp = acked_partition()
    now = time.monotonic()
    thread.time_started = now - 900  # the worker has run 15 minutes
    thread.tp_last_committed_at[tp] = now - 370  # its last commit of the partition
    consumer._taken[tp] = 97  # the last message it took of it then
    consumer._committed_offset[tp] = 90 if waiting else 98  # 98: all of it committed
    state = types.SimpleNamespace(timestamp=now * 1000, highwater=120, position=98)
    fetching(thread, state)

    async def getmany(self: Any, timeout: float) -> Any:
        for offset in (98, 99):  # the burst, not committed yet
            yield tp, Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)

    monkeypatch.setattr(faust.transport.consumer.Consumer, "getmany", getmany)
    assert len([message async for _, message in consumer.getmany(1.0)]) == 2
    with caplog.at_level(logging.ERROR):
        thread.verify_event_path(time.monotonic(), tp)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if waiting:  # 90 to 97 not committed for six minutes: a stall, said
        assert len(said) == 1 and f"Has not committed {tp!r} (last commit 6." in said[0]
    else:
        assert said == []


def app_of_eight(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An app of 8 partitions whose consumer's assignments reach only talkstream's own part
    (faust's, which would fetch and seek, is stubbed)."""
    app = App(
        "t-faust-app",
        broker="talkstream://127.0.0.1:1",
        autodiscover=False,
        Topic=Topic,
        topic_partitions=8,
    )

    async def assigned(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        pass

    monkeypatch.setattr(faust.transport.consumer.Consumer, "on_partitions_assigned", assigned)
    return app


async def test_partitions_added_to_the_topics_since_are_an_error_when_assigned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Partitions added to a live deployment's [requests] (``kafka-topics.sh --alter``) reach
    a running worker at its consumer's next rebalance: it took them and said nothing, ready,
    until a record landed on one and stopped it with faust's traceback (``AssertionError:
    Unrecognized partition``). It says so as they are assigned, naming them."""
    app = app_of_eight(monkeypatch)
    consumer = app.consumer
    requests, changelog = "t-faust-app-requests", "t-faust-app-ledger-changelog"
    with caplog.at_level(logging.INFO, logger="streams.faust_transport"):
        await consumer.on_partitions_assigned(
            {TP(requests, p) for p in (3, 7)} | {TP(changelog, 3)}
        )
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        await consumer.on_partitions_assigned({TP(requests, p) for p in (3, 9, 8)})
    [error] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert error.levelname == "ERROR"
    assert error.getMessage() == (
        "partitions added to a deployment's topics: this worker holds t-faust-app-requests "
        "partition 8, 9, past the 8 the topics were created with, where no ledger keeps a "
        "person's state (a record there stops the worker that reads it); to change the count, "
        "deploy under a new TALKSTREAM_APP_ID"
    )


async def test_requests_partitions_held_without_their_ledger_state_stay_paused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """faust's assignor gave this worker [requests] partition 2 while another holds the
    ledger changelog's partition 2 (the counts of the two differ: partitions added to one): the
    ledger decided its people's records without their state. faust resumes every stream
    partition once the tables are recovered; not that one, which waits paused (its records in
    Kafka) until an assignment pairs it, said in an ERROR; the others go on."""
    app = app_of_eight(monkeypatch)
    consumer = app.consumer
    requests, changelog = "t-faust-app-requests", "t-faust-app-ledger-changelog"
    held = {TP(requests, p) for p in (2, 3)} | {TP(changelog, 3)}
    app.assignor._assignment = ClientAssignment(
        actives={requests: [2, 3], changelog: [3]}, standbys={changelog: [2]}
    )
    with caplog.at_level(logging.INFO, logger="streams.faust_transport"):
        await consumer.on_partitions_assigned(held | {TP(changelog, 2)})
    consumer.pause_partitions(held)  # as faust does at a rebalance
    consumer.resume_partitions(held)  # as faust's recovery does once done
    assert consumer._paused_partitions == {TP(requests, 2)}
    [error] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert error.levelname == "ERROR"
    assert error.getMessage().startswith(
        f"{requests} and the ledger's {changelog} assigned apart: this worker holds {requests} "
        "partition 2 without the ledger's state of its people"
    )
    assert consumer.unpaired == error.getMessage()  # /readyz says it too

    caplog.clear()  # an assignment that pairs them again: decided again
    app.assignor._assignment = ClientAssignment(
        actives={requests: [2, 3], changelog: [2, 3]}, standbys={}
    )
    await consumer.on_partitions_assigned(held | {TP(changelog, 2)})
    consumer.resume_partitions(held)
    assert consumer._paused_partitions == set()
    assert consumer.unpaired is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

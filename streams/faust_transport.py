"""faust's aiokafka transport (``talkstream://`` broker URLs) with an idempotent producer, and a
consumer that fetches only the partitions faust reads; faust's topics without
its detours per record sent; faust's streams, whose batches wait for messages, not for a
clock; and faust's app without the sensor nothing reads, which stops lingering when it stops
and gives Kafka a bounded time to take what it holds (:data:`KAFKA_STOP_SECONDS`).

faust turns idempotence on only inside its (broken, DESIGN.md §4) exactly-once transactions.
The worker's producer writes every decision (commands, lifecycle events, the table's
changelog) and retries sends after a broker bounce; without idempotence a retried batch can
land twice. Registered under the ``faust.transports`` entry point in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from time import monotonic
from typing import Any, cast

import faust
from faust.transport.consumer import ConsumerThread as FaustConsumerThread
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, FutureMessage
from mode.utils.locks import Event

from streams.kafka_options import (
    GivenUp,
    IdempotentProducer,
    lingering_no_more,
    stop_consumer,
    without_linger,
)
from streams.topics import partitions_added, unpaired

log = logging.getLogger(__name__)

# how long a stopping worker waits for Kafka, after its executors' drain
# (``TALKSTREAM_STOP_DRAIN_SECONDS``), before it stops without what Kafka has not taken: what
# it holds unsent, the offsets it could not commit (README, "Stopping")
KAFKA_STOP_SECONDS = 5.0
# how long the producer's own stop may take once the app gave up on Kafka
CLOSE_SECONDS = 1.0
# a record sent faust's way that Kafka did not take (:meth:`Topic._on_published`); one line
# every ``streams.logs.REPEAT_EVERY_S`` in an outage, with how many more
NOT_TAKEN = "Kafka did not take a record of %s partition=%s (%s: %s)%s"
CHANGELOG_NOT_TAKEN = (
    ": a table's write, which this worker's table holds and its changelog does not (a worker "
    "that recovers the partition from the changelog has the key's earlier value)"
)
CHANGELOG_WRITTEN_AGAIN = (
    ": a table's write, written again with the key's value now (until Kafka takes it, a "
    "worker that recovers the partition from the changelog would have the key's earlier value)"
)


class Producer(driver.Producer):
    """faust's producer on aiokafka's, idempotent, taking a new producer id once it has given
    up on a record (:class:`~streams.kafka_options.IdempotentProducer`): a record whose
    partition had no leader for faust's ``producer_request_timeout`` (a single broker stopped
    that long) expired unsent with its sequence number spent, and the broker refused every
    later record of the worker for that partition, out of sequence, until the worker
    restarted."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    @property
    def _producer_type(self) -> type[IdempotentProducer]:
        return IdempotentProducer

    async def on_stop(self) -> None:
        """faust's stop of aiokafka's producer, which waits for its requests in flight: to a
        broker that accepts connections and answers nothing (hung, a network dropping
        everything), for the producer's request timeout (20 minutes). Once a stopping app gave
        up on Kafka (every record failed) it gets :data:`CLOSE_SECONDS` more, then is cut
        short (its requests in flight cancelled)."""
        given_up = getattr(self.app, "kafka_given_up", None)
        stopping = asyncio.ensure_future(super().on_stop())
        if given_up is None:
            await stopping
            return
        giving_up = asyncio.ensure_future(given_up.wait())
        try:
            await asyncio.wait([stopping, giving_up], return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                await asyncio.wait([stopping], timeout=CLOSE_SECONDS)
            if not stopping.done():
                stopping.cancel()
                await asyncio.wait([stopping], timeout=CLOSE_SECONDS)
        finally:
            giving_up.cancel()
        if stopping.done() and not stopping.cancelled():
            stopping.result()


class Consumer(driver.Consumer):
    """faust pauses a partition only in its own books: it stops reading it, but aiokafka, in
    the consumer thread, goes on fetching it. So each pause and resume is done in aiokafka
    too, in the order faust does them. Two things went wrong without it:

    - A worker given a partition pauses it while it recovers its table. aiokafka fetched it
      meanwhile, and its position moved past those records while faust still had the
      partition paused, so the ledger never received them: the new owner committed nothing
      for them and saw them only when the partition's next message made it repair the gap
      (on a quiet partition, much later). Paused in aiokafka, they wait in its buffer until
      faust resumes the partition.
    - A table's changelog is read only to recover; afterwards the worker's own writes to it
      came back in a fetch and stayed in aiokafka's buffer, unread, and aiokafka sent that
      broker no fetch for the next 100 ms (its prefetch backoff): the ledger then waited, once
      per changelog partition after every rebalance.

    A partition paused so is not fetched on purpose, so it is not checked for a stall:
    faust's livelock check (every ~7 s, once the worker has run ``stream_processing_timeout``,
    5 minutes) logged an ERROR "Aiokafka has not sent fetch request for TP(...-changelog)"
    for each changelog partition, for as long as the worker ran (faust-streaming#503)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken: dict[TP, int] = {}
        self._assigned_at: dict[TP, float] = {}  # monotonic: when each was assigned last
        self._held: set[TP] = set()  # partitions whose commits wait for the ledger
        # partitions of [requests] held without their ledger state (``unpaired``): kept paused
        self._apart: set[TP] = set()
        self.unpaired: str | None = None  # what /readyz says of them

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """A commit, given up on (not committed) once a stopping app gave up on Kafka
        (:meth:`App.give_up_on_kafka`): aiokafka retries a commit for as long as it finds no
        group coordinator, and faust commits before it stops (and waits for every commit):
        with Kafka down a stop waited for good. Offsets not committed are read again by the
        partition's next owner; the ledger's own mark in its table says what it stored."""
        given_up = getattr(self.app, "kafka_given_up", None)
        if given_up is None:
            return await super()._commit(offsets)
        if given_up.is_set():
            return False
        committing = asyncio.ensure_future(super()._commit(offsets))
        giving_up = asyncio.ensure_future(given_up.wait())
        try:
            await asyncio.wait([committing, giving_up], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # as before: the commit is cancelled with its caller
            committing.cancel()
            raise
        finally:
            giving_up.cancel()
        if committing.done():
            return committing.result()
        committing.cancel()
        return False

    async def wait_empty(self) -> None:
        """faust's wait, as a stop begins, until the agents acknowledged every message they
        took, ended once a stopping app gave up on Kafka: the ledger takes messages while it
        can (a batch of which Kafka took no output is read back from Kafka to be decided
        again), and with a broker that accepts connections and answers nothing (hung, a
        network dropping everything) each read back waited for it, for good. What the agents
        did not acknowledge is not committed: the partition's next owner reads it again.
        (faust's loop swallows a cancellation; it ends once nothing is left to wait for.)"""
        given_up = getattr(self.app, "kafka_given_up", None)
        if given_up is None:
            await super().wait_empty()
            return
        waiting = asyncio.ensure_future(super().wait_empty())
        giving_up = asyncio.ensure_future(given_up.wait())
        try:
            await asyncio.wait([waiting, giving_up], return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():  # given up: it ends at its next look (within a second)
                self._unacked_messages.clear()
            await waiting
        finally:
            giving_up.cancel()

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """faust's records, each noted as taken (:meth:`taken`) before faust hands it on.

        Handing a partition's messages on is also noted where faust's livelock check looks
        for it, in its Monitor's ``stream_inbound_time``: the Monitor, told of nothing here
        (:class:`App`), noted nothing, so once the worker had run ``stream_processing_timeout``
        (5 minutes) the check took any partition fetched ahead of the ledger (a burst) for one
        whose stream "has not started processing", an ERROR with faust's page of causes every
        ~7 s per partition. A stream that stops taking messages fills its buffer, and faust
        stops handing them on: the check still sees a real stall.

        And the check's clock of commits (its thread's ``tp_last_committed_at``) starts again
        at a message taken while nothing of its partition waited for a commit (a partition
        quiet since its last commit, or new to this worker): it ran from the partition's last
        commit, so the first burst after five quiet minutes (a campaign's) was read as
        messages not committed for that long, an ERROR "Has not committed TP(...) (last commit
        6.11 minutes ago)" with faust's page of causes, ending "report as bug", for each such
        partition. Messages taken while earlier ones wait for their commit leave it running:
        the check still sees commits that stopped."""
        taken = self._taken
        inbound = self.app.monitor.stream_inbound_time
        committed = self._committed_offset  # the next offset to read of each, once committed
        commit_clock = self._thread.tp_last_committed_at
        async for tp, message in super().getmany(timeout):
            now = monotonic()
            before = taken.get(tp)
            if before is None or (committed.get(tp) or 0) > before:
                commit_clock[tp] = now  # nothing of the partition was waiting for a commit
            taken[tp] = message.offset
            inbound[tp] = now
            yield tp, message

    def taken(self, topic: str) -> dict[int, int]:
        """The last offset faust took from Kafka of each partition of ``topic`` it reads now
        (assigned, not paused) since it was assigned: offsets up to it were either handed to
        an agent's stream or dropped on the way (a rebalance empties the agents' buffers;
        ``streams.agents.ledger`` probes a partition whose ledger does not catch up with it)."""
        assigned, paused = self.assignment(), self._paused_partitions
        return {
            tp.partition: offset
            for tp, offset in self._taken.items()
            if tp.topic == topic and tp in assigned and tp not in paused
        }

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        inbound = self.app.monitor.stream_inbound_time
        for tp in revoked:
            self._taken.pop(tp, None)
            inbound.pop(tp, None)  # assigned again later, it is not "stopped" since
        await super().on_partitions_revoked(revoked)  # (faust commits what it may in there)
        self._held -= revoked  # their next owner reads them from the commit held back

    def hold_commits(self, tp: TP) -> None:
        """faust commits nothing more of ``tp`` until :meth:`release_commits`: the ledger took
        a batch of it that it did not store (Kafka gave up on an output or a changelog write),
        and faust, told it is done all the same (it waits for what its streams took at a
        rebalance and a stop), would commit past it. A partition that had no offset mark in
        the ledger's table then left its next owner (after a crash or a stop before the batch
        was decided again) nothing to read it back from: it started from the commit, past a
        batch never stored (a request never decided, a usage count short). Held, the commit
        stays before the batch, where the next owner starts (the offsets acknowledged
        meanwhile wait in faust's books, committed once released)."""
        if tp in self.assignment():
            self._held.add(tp)

    def release_commits(self, tp: TP) -> None:
        """The ledger stored what it held ``tp``'s commits for: faust commits it again."""
        self._held.discard(tp)

    def _new_offset(self, tp: TP) -> int | None:
        """faust's offset to commit of ``tp`` (consuming its books), none while it is held."""
        if tp in self._held:
            return None
        return super()._new_offset(tp)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        added = partitions_added(assigned, self.app.conf.topic_partitions)
        if added:  # /readyz says it too, for as long as the worker holds them
            log.error("%s", added)
        # faust's assignor told this worker its share before this (aiokafka's order)
        self._apart, self.unpaired = unpaired(
            self.app.assignor.assigned_actives(), self.app.conf.topic_partitions, self.app.conf.id
        )
        if self.unpaired:  # /readyz says it too, until an assignment pairs them again
            log.error("%s", self.unpaired)
        for tp in [tp for tp in self._taken if tp not in assigned]:
            del self._taken[tp]
        # every one, kept or new: aiokafka's books of each start again at an assignment
        self._assigned_at = dict.fromkeys(assigned, monotonic())
        await super().on_partitions_assigned(assigned, generation_id)

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        tps = set(tps)
        super().pause_partitions(tps)
        self._mirror(tps, fetching=False)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """faust's resume (of every stream partition once the tables are recovered, at each
        rebalance), but never of a partition of [requests] held without its ledger state
        (:func:`~streams.topics.unpaired`): faust paused it at the rebalance, and its records
        wait in Kafka for a worker that holds both (nothing of it taken, nothing committed)."""
        tps = set(tps) - self._apart
        super().resume_partitions(tps)
        self._mirror(tps, fetching=True)

    async def acknowledge_range(self, tp: TP, first: int, last: int) -> None:
        """Offsets ``first``..``last`` of ``tp`` are done though faust never delivered them:
        the ledger read them back from Kafka itself (``streams.gaps``). faust commits a
        partition up to its first offset neither acknowledged nor known to it as a gap, and a
        message it took from aiokafka and then dropped (a rebalance empties the agents'
        buffers) is neither: without this, its commits of that partition stopped there for as
        long as the worker kept it (the group's committed lag, which Kafka's tools and lag
        monitors read, grew for ever, and the next owner would decide everything since again).
        Told as a gap, they count as done; not if the partition has since gone (faust forgot
        its books of it: a gap told now would outlive them)."""
        if tp in self.assignment():
            await self._add_gap(tp, first, last)

    def verify_event_path(self, now: float, tp: TP) -> None:
        """faust's livelock check of ``tp``, but not of one paused on purpose (above), nor of
        one assigned less than ``stream_processing_timeout`` ago. The check's "since start"
        is since the worker started, while aiokafka's books of a partition (when it last
        fetched it, its highwater) start again at each assignment: a worker that had run 5
        minutes logged an ERROR "Aiokafka has not sent fetch request for TP(...-requests, 4)
        since start (started 7.36 minutes ago)" for each partition the check happened upon
        between a rebalance and its first fetch (seen when a second worker joined)."""
        if tp in self._paused_partitions:  # (recovery resumes what it reads: checked)
            return
        assigned_at = self._assigned_at.get(tp)
        if assigned_at is not None and now - assigned_at < self.app.conf.stream_processing_timeout:
            return
        super().verify_event_path(now, tp)

    def _mirror(self, tps: set[TP], *, fetching: bool) -> None:
        consumer = self._thread._consumer
        loop = self._thread.thread_loop
        if not tps or consumer is None:
            return
        with contextlib.suppress(RuntimeError):  # the thread's loop is closed: it stopped
            loop.call_soon_threadsafe(_set_fetching, consumer, tps, fetching)


class ConsumerThread(driver.AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer is stopped with :func:`stop_consumer`.
    With its broker down, aiokafka's ``stop()`` raised the cancellation of a fetch caught
    sleeping after a failed request: the thread ended without telling faust, which waited its
    shutdown timeout (60 s) for it at every stop during an outage."""

    async def on_thread_stop(self) -> None:
        await FaustConsumerThread.on_thread_stop(self)  # its method queue
        if self._consumer is not None:
            await stop_consumer(self._consumer)


def _set_fetching(consumer: Any, tps: set[TP], fetching: bool) -> None:
    """In the consumer thread: aiokafka pauses or resumes only what it has assigned (a
    rebalance since gives it fresh, unpaused partitions, which faust then pauses again)."""
    assigned = [tp for tp in consumer.assignment() if tp in tps]  # aiokafka's own tuples
    if fetching:
        consumer.resume(*assigned)
    else:
        consumer.pause(*assigned)


# what a record may carry and still go to aiokafka's producer as it is (see :class:`Topic`)
_AS_IS = ("force", "partition")


class Topic(faust.Topic):
    """The app's ``Topic`` class (see ``streams.app``): records sent without faust's detours.

    faust gets a topic's producer through ``App.maybe_start_producer``, which mode's
    ``stampede`` guards with three ``asyncio.sleep(0)``: every record sent (a decision's
    commands and lifecycle events, a call's result, the table's changelog) gave the event loop
    three turns, and the sender waited out everything else the loop had ready each time. A
    started producer is taken as it is.

    And a record of bytes with nothing else but its partition (no headers, schema or callback:
    every record the agents send) goes to aiokafka's producer as it is: faust wraps each in a future
    message, reports it to its sensors and resolves that future from aiokafka's, which took as
    much of the worker's CPU as aiokafka's own send. What is awaited is aiokafka's delivery.

    A topic given ``partition_of`` ([requests]: :func:`streams.topics.partition_of` over the
    count the topics were created with) sends every keyed record to the partition it names,
    not the one the producer's partitioner would pick over the partitions the broker has now:
    partitions added to the topic stay empty (no ledger keeps state there).
    """

    partition_of: Callable[[bytes], int] | None = None

    async def send(self, *, key: Any = None, value: Any = None, **options: Any) -> Any:
        if options.get("partition") is None and isinstance(key, bytes) and self.partition_of:
            options["partition"] = self.partition_of(key)
        producer = self._started_producer()
        if (
            producer is not None
            and isinstance(value, bytes)
            and (key is None or isinstance(key, bytes))
            and all(option is None for name, option in options.items() if name not in _AS_IS)
            and not self.app._attachments.enabled  # type: ignore[attr-defined]
        ):
            partition = options.get("partition")
            chosen = {} if partition is None else {"partition": partition}
            return await producer._ensure_producer().send(
                self.get_topic_name(), value, key=key, **chosen
            )
        return await super().send(key=key, value=value, **options)

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> Any:
        """faust's send of a record its own way; a table's changelog record is not held back
        for the producer's linger (:func:`~streams.kafka_options.without_linger`). The ledger
        waits for its batch's changelog writes before it marks the batch
        (``streams.agents.ledger``), and faust's buffer hands them to aiokafka in a task of its
        own, the first of a topic once the producer has its metadata: one handed over after
        the ledger had the producer send what it held waited out the linger (up to a minute),
        and so did the ledger's next batch."""
        delivery = await super().publish_message(fut, wait=wait)
        if self.get_topic_name().endswith("-changelog"):
            without_linger(self.app.producer, self.get_topic_name(), fut.message.partition)
        return delivery

    def _on_published(
        self, fut: asyncio.Future[Any], message: FutureMessage, producer: Any, state: Any
    ) -> None:
        """faust's end of a record sent its own way (a table's changelog, a record with a
        partition or headers), where Kafka did not take it: the failure is said once, as what
        was lost, and the future message is marked retrieved.

        faust sets the failure on the future message and logs a WARNING of its own, yet
        nobody retrieves that future: faust's ``send`` hands its caller aiokafka's delivery
        (which the caller awaits) and drops the future message, and a table drops the one
        of each changelog record. Collected, each logged an ERROR "Future exception was never
        retrieved" with a traceback, after an outage and at a stop that gave up on Kafka.
        Whoever awaits the future message still gets the failure. A record a stopping worker
        gave up on (:class:`GivenUp`) is counted in the stop's WARNING, and not said again."""
        if fut.cancelled():
            message.cancel()
            return
        failed = fut.exception()
        if failed is None:
            super()._on_published(fut, message=message, producer=producer, state=state)
            return
        message.set_exception(failed)
        message.exception()  # retrieved: said here, or in the stop's WARNING
        self.app.sensors.on_send_error(producer, failed, state)
        if isinstance(failed, GivenUp):
            return
        name = message.message.channel.get_topic_name()
        changelog = name.endswith("-changelog")
        again = changelog and self._written_again(message, failed)
        log.warning(
            NOT_TAKEN,
            name,
            message.message.partition,
            type(failed).__name__,
            failed,
            CHANGELOG_WRITTEN_AGAIN if again else CHANGELOG_NOT_TAKEN if changelog else "",
        )

    def _written_again(self, message: FutureMessage, failed: BaseException) -> bool:
        """A table's changelog record Kafka did not take (its partition without a leader for
        the producer's request timeout) is written again with the key's value now, while this
        worker holds the partition: the table holds the write, and its changelog did not, so
        a worker recovering the partition (a rebalance, a restart) had the key's earlier
        value: the ledger's person state before the batches since, its offset mark before
        them (whose requests were then decided again). (The ledger marks a batch only once
        Kafka took its writes, :class:`Table`, and decides one it gave up on again: before, a
        mark taken after the state the producer gave up on left the person's usage
        undercounted, a limit exceeded.) The value now, not the one given up on: a later write
        of the key, taken meanwhile, stays the last. Not for a refusal no retry fixes
        (non-retriable: the record too large), for a partition this worker no longer holds
        (its table is no longer the key's truth), nor for a key no longer there (a person
        forgotten: a worker that recovers it forgets it again)."""
        if not getattr(failed, "retriable", False):
            return False
        name, partition = message.message.channel.get_topic_name(), message.message.partition
        table = next(
            (t for t in self.app.tables.values() if t.changelog_topic.get_topic_name() == name),
            None,
        )
        if table is None or partition is None:
            return False
        if TP(name, partition) not in self.app.assignor.assigned_actives():
            return False
        key = message.message.key
        try:
            value = table.data[key]
        except KeyError:
            return False
        table.send_changelog(partition, key, value)
        return True

    async def _get_producer(self) -> Any:
        producer = self._started_producer()
        return producer if producer is not None else await super()._get_producer()

    def _started_producer(self) -> Any:
        """The app's producer (ours, on aiokafka's) if started and not in a transaction."""
        producer = self.app.producer
        return producer if producer.started and not self.app.in_transaction else None


class Table(faust.Table):  # type: ignore[type-arg]
    """The app's ``Table`` class (see ``streams.app``): faust's, whose changelog writes are
    kept until taken (:meth:`written`), so the ledger can wait for Kafka to acknowledge the
    ones a batch made before it marks the batch's offsets (``streams.agents.ledger``). faust
    drops the future of each (a table is written as a dict: ``on_key_set`` sends the record
    and returns nothing). A write given up on and written again (:meth:`Topic._written_again`)
    is kept too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        written = super().send_changelog(*args, **kwargs)
        self._written.append(written)
        return written

    def _verify_source_topic_partitions(self, source_topic: str) -> None:
        """faust's check, at a worker's first write to the table, that [requests] has as many
        partitions as the changelog: once partitions were added to one of them, it crashed the
        ledger agent of a worker that had written nothing before (one given its partitions of
        [requests] only then, as another left), at every record, restarted every 5 s, its
        requests never decided. Not needed: the worker's consumer keeps paused every partition
        of [requests] whose changelog partition it does not hold (``Consumer.unpaired``), so a
        write goes to a changelog partition this worker holds, with its person's state."""

    def written(self) -> list[asyncio.Future[Any]]:
        """The changelog writes since the last call, each resolved once Kafka took it (or gave
        up on it); only the ledger writes the table, and takes them at each batch."""
        written, self._written = self._written, []
        return written


class Stream(faust.Stream):  # type: ignore[type-arg]
    """The app's ``Stream`` class (see ``streams.app``): ``take_events`` waits for a message,
    not for a clock.

    faust's own looks at its buffer every ``within`` seconds, messages or not: the ledger's
    2 ms window woke an idle worker 500 times a second, each time through mode's wait
    machinery (tasks made and cancelled), 8% of a core with nothing to do
    (``bench/PROFILE.md``, thirtieth round). Here a quiet stream sleeps until a message
    arrives. A batch then goes when it is full, or once ``within`` has passed since the
    previous batch came back (so batches under load still gather for as long as faust's
    did), or at once after a quiet spell. The batch is acknowledged when the next one is asked
    for, as faust does; what arrives meanwhile waits in the next batch, up to ``max_``."""

    def take_events(  # type: ignore[override]
        self, max_: int, within: float
    ) -> AsyncIterator[list[Any]]:
        batches = self._batches(max_, within)
        self._active_agens.add(batches)  # closed when the stream stops, as faust's are
        return batches

    async def _batches(self, max_: int, within: float) -> AsyncGenerator[list[Any], None]:
        gathered: list[Any] = []  # the next batch's events
        arrived, full, room = Event(), Event(), Event()
        room.set()

        async def gather(value: Any) -> Any:
            """A processor: each message the stream takes joins the next batch."""
            if not room.is_set():  # a full batch not yet handed out holds the stream
                await self.wait(room)
            event = self.current_event
            if event is None:
                raise RuntimeError("a message without its event in take_events")
            gathered.append(event)
            arrived.set()
            if len(gathered) >= max_:
                full.set()
                room.clear()
            return value

        acks = self.enable_acks
        self.enable_acks = False  # each batch is acknowledged once its taker asks for more
        self.add_processor(gather)
        self._enable_passive(cast(Any, aiter(self.channel)))
        back = float("-inf")  # when the previous batch came back
        try:
            while not self.should_stop:
                if not arrived.is_set() and await self.wait_for_stopped(arrived):
                    break  # stopped
                left = back + within - asyncio.get_running_loop().time()
                if left > 0 and not full.is_set():
                    await self.wait_for_stopped(full, timeout=left)
                batch = gathered.copy()
                gathered.clear()
                arrived.clear()
                full.clear()
                room.set()
                try:
                    yield batch
                finally:
                    for event in batch:
                        await self.ack(event)
                    back = asyncio.get_running_loop().time()
        finally:
            self.enable_acks = acks
            self._processors.remove(gather)


_NO_SENSOR: dict[Any, Any] = {None: None}  # a rebalance's note when no sensor noted anything


class App(faust.App):
    """faust's app without its ``Monitor`` sensor. The Monitor keeps statistics for faust's
    web views (off here: the worker's metrics are ``streams.observability``) and was told of
    every record received, sent and acknowledged and of every table read and write, each
    through faust's sensor delegate: 2.8% of the worker's CPU under load, for numbers nothing
    read. ``app.monitor`` still exists for what faust calls on it directly."""

    def on_init_dependencies(self) -> Iterable[Any]:
        services = super().on_init_dependencies()  # adds the Monitor to the sensors
        with contextlib.suppress(KeyError):
            self.sensors.remove(self.monitor)
        return services

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # run as the app starts to stop, while its producer and agents are still up (the
        # executors hand back what they hold)
        self.before_stop: list[Callable[[], Awaitable[None]]] = []
        # how long a stop waits for Kafka before it goes on without it (``streams.app`` adds
        # the executors' drain), and whether it has given up
        self.stop_seconds = KAFKA_STOP_SECONDS
        self.kafka_given_up = asyncio.Event()
        self._giving_up: asyncio.TimerHandle | None = None
        self._stop_began = 0.0

    async def on_stop(self) -> None:
        """Stopping, the producer lingers no more (``lingering_no_more``): faust then waits for
        its streams and their outputs, which a long linger held back for as long.

        And the stop waits for Kafka ``stop_seconds`` at most (:meth:`give_up_on_kafka`): with
        Kafka down, faust waited for the ledger's outputs and the changelog (up to the
        producer's request timeout, 20 minutes), for commits (for good) and for its own
        shutdown steps, and a supervisor's grace period (30 s) ended in a SIGKILL."""
        lingering_no_more(self._producer)
        loop = asyncio.get_running_loop()
        self._stop_began = loop.time()
        self._giving_up = loop.call_later(self.stop_seconds, self.give_up_on_kafka)
        hooks = [asyncio.ensure_future(hook()) for hook in self.before_stop]
        if hooks:
            _, left = await asyncio.wait(hooks, timeout=self.stop_seconds)
            if left:  # what they wait for (a commit) never comes: they end here
                self.give_up_on_kafka()
                for hook in left:
                    hook.cancel()
            for failed in await asyncio.gather(*hooks, return_exceptions=True):
                if isinstance(failed, BaseException) and not isinstance(
                    failed, asyncio.CancelledError
                ):
                    self.log.exception("stopping: %r", failed)
        await super().on_stop()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        if self._giving_up is not None:  # stopped in time
            self._giving_up.cancel()

    def give_up_on_kafka(self) -> None:
        """The stop goes on without Kafka: every record the producer still holds fails (the
        ledger stores no state of a batch Kafka did not take all of, an executor's result not
        acknowledged stays unreported in its commit mark, so the next run tells the ledger it
        was lost), and every commit still waited for, or asked for from now on, is not made
        (:meth:`Consumer._commit`). Said in one WARNING, with the records left by topic."""
        if self.kafka_given_up.is_set():
            return
        self.kafka_given_up.set()
        waited = asyncio.get_running_loop().time() - self._stop_began
        give_up_on_kafka(getattr(self._producer, "_producer", None), waited, "worker", log)

    def on_rebalance_start(self) -> None:
        """faust keeps what each sensor noted at a rebalance's start for its return and end,
        and warns ("Missing sensor state") at both when nothing was noted: with no sensor,
        at every rebalance. An empty note of no sensor is a note."""
        super().on_rebalance_start()
        if not self._rebalancing_sensor_state and not list(self.sensors):
            self._rebalancing_sensor_state = _NO_SENSOR


class Transport(driver.Transport):
    Producer = Producer
    Consumer = Consumer


def give_up_on_kafka(producer: Any, waited: float, who: str, said_by: logging.Logger) -> None:
    """A stop that goes on without Kafka, ``waited`` seconds into it: every record
    ``producer`` still holds fails, and one WARNING says so, with the records left by topic
    (a worker's, :meth:`App.give_up_on_kafka`; the executors' process's,
    ``streams.executors_process``)."""
    dropped = (
        producer.give_up(GivenUp(f"the {who} stopped before Kafka took it ({waited:.0f}s)"))
        if isinstance(producer, IdempotentProducer)
        else {}
    )
    held = (
        f"{sum(dropped.values())} records it held unacknowledged ("
        + ", ".join(f"{topic}: {count}" for topic, count in sorted(dropped.items()))
        + ")"
        if dropped
        else "no record held unacknowledged"
    )
    said_by.warning(
        "stopping without Kafka: %.0fs into the stop, it has not acknowledged everything; "
        "the %s ends with %s and its consumer offsets not committed since. Nothing is "
        "lost: a batch whose outputs Kafka did not acknowledge is not stored and a call "
        "whose result it did not acknowledge is not reported, so the next worker decides "
        "and calls them again",
        waited,
        who,
        held,
    )

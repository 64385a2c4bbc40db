"""Kafka connection options (TLS, SASL PLAIN/SCRAM) from settings, for every client we make:
aiokafka producers/consumers/admin clients and the faust app; and, when a client cannot
connect, the reason in one line (:func:`broker_error`)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, KafkaTimeoutError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.producer.transaction_manager import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, PidAndEpoch
from aiokafka.protocol.admin import ApiVersionRequest, DescribeGroupsRequest
from aiokafka.record.default_records import DefaultRecordBatch

from streams import kafka_join, kafka_reconnect
from streams.errors import BrokerUnavailable, KafkaAuthError, TalkstreamError
from streams.settings import Settings

log = logging.getLogger(__name__)

kafka_reconnect.install()  # every client made with these options, faust's too
kafka_join.install()  # one JoinGroup per join, whatever the assignors (its doc)


def _ssl_context(settings: Settings) -> Any:
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    return create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (bootstrap included)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = _ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return options


def group_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for a consumer of our own groups (an executor's, the projector's):
    the connection and the worker's session, as faust's group has it. With aiokafka's default
    (10 s) a worker back within ``SESSION_TIMEOUT_SECONDS`` found its executors' partitions
    moved, and one gone got them moved sooner than its ledger's."""
    session_ms = int(settings.session_timeout_seconds * 1000)
    return {
        **client_options(settings),
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(session_ms // 10, 500),
        "rebalance_timeout_ms": session_ms,
        # a join waits up to the rebalance timeout for the broker's answer
        "request_timeout_ms": max(40_000, session_ms + 10_000),
    }


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for faust (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username or "",
        password=password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=_ssl_context(settings),
    )


# --- why a client could not connect -----------------------------------------------------------

_AUTH_ERRORS = (
    "SaslAuthenticationFailed",
    "AuthenticationFailedError",
    "UnsupportedSaslMechanismError",
    "IllegalSaslStateError",
)


# what diagnose() gives each step (connect, then ApiVersions) with each bootstrap server
DIAGNOSE_SECONDS = 5.0

# how long a first contact with Kafka may go unanswered before a command says it waits
WAIT_NOTICE_AFTER = 2.0

_wait_notice: Callable[[str], None] | None = None


def say_waits(notice: Callable[[str], None] | None) -> None:
    """Where a one-shot command (``talkstream topics``, ``replay``, ``redrive``) says that it
    waits for Kafka (:func:`waiting_for_kafka`): its stderr. Servers leave it unset."""
    global _wait_notice
    _wait_notice = notice


@contextlib.contextmanager
def waiting_for_kafka(settings: Settings, seconds: float) -> Iterator[None]:
    """A first contact with Kafka, which gives up after ``seconds`` (then :func:`broker_error`
    finds out why, :data:`DIAGNOSE_SECONDS` for each step with each server): unanswered for
    :data:`WAIT_NOTICE_AFTER`, the notice set by :func:`say_waits` gets one line saying what is
    waited for and how long at most. A listener that accepts but never answers (not Kafka, a
    broker stopped in a debugger, TLS expected) held a command silent for 36 to 49 s."""
    notice = _wait_notice
    if notice is None:
        yield
        return
    servers = len(settings.kafka_bootstrap.split(","))
    line = (
        f"waiting for Kafka at {settings.kafka_bootstrap} to answer: up to {seconds:g} s, then "
        f"up to {2 * DIAGNOSE_SECONDS * servers:g} s more to find out why if it does not"
    )
    handle = asyncio.get_running_loop().call_later(WAIT_NOTICE_AFTER, notice, line)
    try:
        yield
    finally:
        handle.cancel()


async def diagnose(settings: Settings, timeout: float = DIAGNOSE_SECONDS) -> str | None:
    """Why the brokers refuse us, when they do: one line naming the cause, or None.

    aiokafka logs the cause of a failed bootstrap (a refused password, a TLS handshake that
    failed) and raises a bare "Unable to bootstrap"; this opens one connection per bootstrap
    server the way every client does, to say which. Never shows the password.
    """
    options = client_options(settings)
    del options["bootstrap_servers"]
    causes = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host.strip("[]"),
                    int(port),
                    request_timeout_ms=int(timeout * 1000),
                    client_id="talkstream-diagnose",
                    **options,
                ),
                timeout,
            )
        except Exception as exc:  # whatever it is, it is the answer
            causes.append(_cause(settings, server.strip(), exc))
            continue
        try:
            apis = await _offered_apis(conn, timeout)
        except Exception as exc:  # it let us in, then failed: that is the answer
            causes.append(_cause(settings, server.strip(), exc))
            continue
        finally:
            conn.close()
        if _METADATA not in apis:  # a listener every client's first request fails on
            causes.append(_not_a_broker(server.strip()))
            continue
        return None  # this one lets us in: the failure was something else
    auth = [c for c in causes if "authentication failed" in c]
    found = auth or causes
    return found[0] if found else None


_METADATA = 3  # Kafka's Metadata API key: what every client asks a bootstrap server first


async def _offered_apis(conn: Any, timeout: float) -> set[int]:
    """The API keys a listener that let us in says it serves (its ApiVersions answer)."""
    response = await asyncio.wait_for(conn.send(ApiVersionRequest()), timeout)
    return {api_key for api_key, _, _ in response.api_versions}


def _not_a_broker(server: str) -> str:
    """A Kafka listener that serves no Metadata: a KRaft controller's (the embedded broker's is
    its bootstrap port + 1, ``KAFKA_CONTROLLER_PORT``), where aiokafka only says "Unable to
    bootstrap" (its WARNING: "MetadataRequest cannot be used if the API version is unknown")."""
    return (
        f"Kafka at {server} answers, but not as a broker: it serves no Metadata requests, "
        "as a KRaft controller's listener does (the controller port, not the broker's?)"
    )


def _cause(settings: Settings, server: str, exc: BaseException) -> str:
    name = type(exc).__name__
    protocol = settings.kafka_security_protocol
    if name == "IllegalSaslStateError":  # the listener answered the handshake: no SASL here
        return (
            f"Kafka at {server} refused the SASL handshake (ILLEGAL_SASL_STATE): its listener "
            f"does not take SASL; is TALKSTREAM_KAFKA_SECURITY_PROTOCOL ({protocol}) the "
            "listener's?"
        )
    if name == "UnsupportedSaslMechanismError":
        said = str(exc.args[0]) if exc.args else "not offered"  # it lists those it offers
        return (
            f"Kafka at {server} refused the SASL mechanism {settings.kafka_sasl_mechanism}: "
            f"{' '.join(said.split())[:200]}; set TALKSTREAM_KAFKA_SASL_MECHANISM to one "
            "it offers"
        )
    if name in _AUTH_ERRORS:
        return (
            f"Kafka at {server} refused the SASL credentials: authentication failed for user "
            f"{settings.kafka_sasl_username!r} with {settings.kafka_sasl_mechanism} ({name}); "
            "check TALKSTREAM_KAFKA_SASL_USERNAME, TALKSTREAM_KAFKA_SASL_PASSWORD and "
            "TALKSTREAM_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return (
            f"TLS with Kafka at {server} failed: {reason}; check TALKSTREAM_KAFKA_SSL_CAFILE "
            "and TALKSTREAM_KAFKA_SECURITY_PROTOCOL"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"Kafka at {server}: nothing listens there (connection refused)"
    if name == "KafkaConnectionError" and "closed" in str(exc):
        return (
            f"Kafka at {server} closed the connection: is that a Kafka listener, and does it "
            f"expect TLS or SASL (TALKSTREAM_KAFKA_SECURITY_PROTOCOL is "
            f"{settings.kafka_security_protocol})?"
        )
    if isinstance(exc, ConnectionResetError) and protocol in ("SSL", "SASL_SSL"):
        return (
            f"Kafka at {server} reset the connection during the TLS handshake: does its "
            f"listener take TLS (TALKSTREAM_KAFKA_SECURITY_PROTOCOL is {protocol})?"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return (
            f"Kafka at {server} did not answer (timeout); wrong port, or TLS/SASL expected "
            "(TALKSTREAM_KAFKA_SECURITY_PROTOCOL)?"
        )
    return f"Kafka at {server} is not reachable: {name}: {str(exc)[:200]}"


async def broker_error(settings: Settings, exc: BaseException) -> TalkstreamError:
    """The error to raise for a Kafka client that failed: :class:`KafkaAuthError` when the
    brokers refuse our credentials or TLS, :class:`BrokerUnavailable` otherwise; the message
    says why, on one line, without a secret."""
    cause = await diagnose(settings)
    if cause is not None and (cause.startswith("TLS") or "during the TLS handshake" in cause):
        return KafkaAuthError(cause, tls=True)  # the address may be another listener's
    if cause is not None and ("authentication failed" in cause or "refused the SASL" in cause):
        return KafkaAuthError(cause)
    where = f"Kafka at {settings.kafka_bootstrap}"
    return BrokerUnavailable(cause or f"{where} is not reachable: {type(exc).__name__}")


class GivenUp(KafkaTimeoutError):  # type: ignore[misc]
    """A record a stopping process gave up on (:meth:`IdempotentProducer.give_up`): said
    once, in the stop's WARNING, not again by each of its senders."""


class Withdrawn(KafkaError):  # type: ignore[misc]
    """A record its sender took back before the producer sent it (:func:`withdraw`)."""


class KeyPartitioner:
    """aiokafka's default partitioner (the Java client's: a key's murmur2 over every partition
    of the topic, a record without a key on any partition available), each key's murmur2
    remembered for the latest keys. aiokafka's murmur2 is Python, and a webhook's records share
    its person's key (its commands, its lifecycle events): worked out for each record, it was
    3% of a busy worker's time."""

    def __init__(self, size: int = 65_536) -> None:
        self._hash = functools.lru_cache(maxsize=size)(murmur2)

    def __call__(self, key: bytes | None, every: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, every, available))
        hashed: int = self._hash(key)
        return every[(hashed & 0x7FFFFFFF) % len(every)]


class IdempotentProducer(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's producer, ``acks=all`` and idempotent, that takes a new producer id once it
    has given up on a record: the worker's (``streams.faust_transport``) and the ingress's
    (``streams.ingress.KafkaSink``), and the projector's (which sends a dead letter Kafka gave up
    on again). (``talkstream redrive``'s ends with the failure.)

    aiokafka fails a batch whose partition has had no leader for ``request_timeout_ms`` (a
    single broker stopped: its controlled shutdown publishes leader -1) without sending it, yet
    the sequence number it gave the batch stays spent. The broker then answers every later
    record of that producer id for the partition ``OutOfOrderSequenceNumber``, and aiokafka,
    unlike Kafka's Java client, never takes a new id: the producer wrote nothing more to that
    partition for as long as it lived. So a failed delivery (whatever the error: a record
    refused is never retried, and its partition's numbering may have a gap) drops the id and
    the sequence numbers; aiokafka's sender asks the broker for a new id before it sends
    anything more, and numbers every partition from 0 again. A batch already numbered (in
    flight, or being retried) keeps its id and number, which the broker still accepts, and
    goes before any later batch of its partition (aiokafka sends one batch of a partition at
    a time). What was given up on is its sender's to send again, under the new id, or not: it
    has the error (the ingress sends a record given up for want of a leader again, as it may be
    written; the worker's lost work is re-issued by the ledger's deadlines).

    Every topic it writes to is tracked (``client.add_topic``) before its first record: aiokafka
    asks the broker only for the topics it tracks, and tracks a topic only when a send finds it
    missing from its metadata. A topic found in an answer for every topic (asked while nothing
    was tracked: a first InitProducerId answered "coordinator loading", on a broker's first
    producer) was never tracked; once another was (the ingress tracks the ledger's changelog)
    the next answer dropped it, and the sender, finding no leader for its records, asked again
    and again for the others only, until the records expired after ``request_timeout_ms`` (the
    ingress held its first webhooks 10 s). Tracked, the record goes within a metadata round
    trip (``tests/integration/test_producer_metadata.py``).

    While a partition it holds a record for has no leader, it asks the broker for metadata
    ``retry_backoff_ms`` apart (:func:`streams.kafka_reconnect.space_metadata_updates`), not in
    a loop without pause."""

    def __init__(self, **options: Any) -> None:
        if type(options.get("partitioner", DefaultPartitioner())) is DefaultPartitioner:
            options["partitioner"] = KeyPartitioner()  # the same partitions, found sooner
        super().__init__(**{**options, "acks": "all", "enable_idempotence": True})
        kafka_reconnect.space_metadata_updates(self.client)  # no metadata flood (its doc)
        self._given_up: BaseException | None = None
        self._tracked: set[str] = set()  # topics given to ``client.add_topic`` (once each)

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        if self._given_up is not None:  # a stop gave up on Kafka: nothing more is held
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(copy.copy(self._given_up))
            refused.add_done_callback(_retrieved)  # (its sender may not wait for it)
            return refused
        if topic not in self._tracked:  # asked for from now on (see the class doc)
            self.client.add_topic(topic)
            self._tracked.add(topic)
        delivery: asyncio.Future[Any] = await super().send(topic, *args, **kwargs)
        delivery.add_done_callback(self._delivered)
        return delivery

    def give_up(self, reason: BaseException) -> Counter[str]:
        """A process stopping stops waiting for Kafka: every record still held (not yet
        acknowledged) fails with ``reason``, as does every record sent from now on, so that
        whatever awaits a delivery (the ledger's batch, the executors' reports, a flush, the
        producer's own ``stop``) ends now. Returns the records given up, by topic. Their
        senders treat them as any failed delivery: not acknowledged, so not done.

        aiokafka has no public way to fail what a producer holds (``stop`` and ``flush`` wait
        for it), so its accumulator's own books are used. Its ``fail_all`` fails the batches
        but leaves those not yet sent where the sender takes them next (and trips on them: a
        failed batch cannot be numbered), and makes every later ``send`` raise."""
        self._given_up = reason
        accumulator = self._message_accumulator
        # not sent any more; counted as in flight, where aiokafka looks for a batch that
        # ends (one sent before and put back to be sent again is only found there)
        for held in accumulator._batches.values():
            accumulator._pending_batches.update(held)
        accumulator._batches.clear()
        dropped: Counter[str] = Counter()
        for batch in list(accumulator._pending_batches):
            if batch.future.done():
                continue
            dropped[batch.tp.topic] += batch.record_count
            for delivery, _ in batch._msg_futures:  # one nobody awaits any more is no error
                delivery.add_done_callback(_retrieved)
            batch.failure(reason)
            # a batch never sent fails its wait for the sender too, which only a send waiting
            # for room behind it awaits (aiokafka's ``add_batch``): nobody, here; unretrieved,
            # it was an ERROR "Future exception was never retrieved" once collected
            _retrieved(batch._drain_waiter)
        requeue = accumulator.reenqueue

        def reenqueue(batch: Any) -> None:
            """A batch in flight (whose request failed, to be retried) that was given up on is
            not retried: aiokafka would put it back among the batches in flight, which it has
            left once it failed (and its sender would end with a KeyError)."""
            if not batch.future.done():
                requeue(batch)

        accumulator.reenqueue = reenqueue
        return dropped

    def ended(self) -> str | None:
        """Why its sender task has ended, once it has (None while it runs, or before the start):
        from then on it sends nothing. aiokafka's sender, failing on an error of its own, fails
        every record it holds with that error (a bare ``KafkaError``, "Unexpected error during
        batch delivery", whether or not the broker had written them), and every later ``send``
        raises it: such a producer never sends again. Its owner takes a new one."""
        task = self._sender.sender_task
        if task is None or not task.done():
            return None
        failed = None if task.cancelled() else task.exception()
        if failed is None:
            return "stopped"
        said, kind = str(failed), type(failed).__name__
        return said if said.startswith(kind) else f"{kind}: {said}"  # as KafkaError says itself

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        """Every delivery's failure is read here (its sender may have stopped waiting for it:
        asyncio would report it unread once collected) and, unless the producer gave up,
        drops the producer id (see the class doc)."""
        if delivery.cancelled():
            return
        failed = delivery.exception()
        if failed is not None and self._given_up is None and not isinstance(failed, Withdrawn):
            self.renew_producer_id(failed)

    def renew_producer_id(self, failed: BaseException) -> None:
        """Send under a new producer id from now on (see the class doc). A failure seen while
        a new id is awaited (more batches of the same outage) changes nothing."""
        txn = self._txn_manager
        if txn is None or txn.transactional_id is not None or not txn.has_pid():
            return
        log.warning(
            "Kafka producer gave up on a record (%s): it takes a new producer id, so that "
            "later records are not refused as out of sequence",
            type(failed).__name__,
        )
        txn._pid_and_epoch = PidAndEpoch(NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
        txn._pid_waiter = asyncio.get_running_loop().create_future()
        txn._sequence_numbers.clear()


def _retrieved(delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled():
        delivery.exception()


def reading_consumer(settings: Settings, **extra: Any) -> AIOKafkaConsumer:
    """A consumer that reads without a group (replay's, the console's): nothing committed, no
    other reader disturbed; started with :func:`start_reading`."""
    return AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **extra,
    )


async def start_reading(consumer: Any, partitions: Sequence[TopicPartition]) -> None:
    """Start a group-less consumer that will read ``partitions`` (and ask their offsets):
    assigned before the start, which then waits for their metadata (asked for after it, the
    first offsets lookup fails on a partition it has no leader for and waits out the retry
    back-off, 100 ms), and paused, so that nothing is fetched before the reader seeks (a new
    ``assign`` resumes them)."""
    if partitions:
        consumer.assign(list(partitions))
        consumer.pause(*partitions)
    await consumer.start()


async def stop_consumer(consumer: Any) -> None:
    """Stop an aiokafka consumer. aiokafka 0.14: ``stop()`` may re-raise the cancellation of
    one of its own fetch tasks (a group-less consumer's, just started; any consumer's whose
    broker is down, caught sleeping after a failed fetch: aio-libs/aiokafka#647), leaving the
    rest of its close undone; that one is swallowed and the close finished, never a
    cancellation of the task stopping it. (faust's consumer thread ended so, and faust waited
    60 s for it: ``streams.faust_transport.ConsumerThread``.)

    A commit still unanswered ends with the stop, and its outcome is read here: aiokafka
    sends each commit's request in a task of its own, shielded from its caller, which a stop
    cancels (faust's consumer thread, as it stops, cancels the commit it runs), and the task
    then fails as the close drops its connection. The shield reads that failure on a later
    turn of the loop, which the consumer thread's loop, closed right after, never took: a
    worker stopped with its broker hung logged asyncio's ERROR "Task exception was never
    retrieved" with a traceback. (An offset not committed is read again by its partition's
    next reader; a stop that gave up on Kafka says so in its WARNING.)"""
    task = asyncio.current_task()
    commits = _commits_unanswered(consumer)
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        fetcher = getattr(consumer, "_fetcher", None)
        pending = list(getattr(fetcher, "_pending_tasks", ()))
        for left in pending:
            left.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await consumer._client.close()
    finally:
        left = [commit for commit in commits if not commit.done()]
        for commit in left:  # (its connection is closed: nothing to wait for)
            commit.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        for commit in commits:
            failed = None if commit.cancelled() else commit.exception()
            if failed is not None:
                log.info(
                    "a commit unanswered when the consumer stopped is not confirmed (%s)",
                    type(failed).__name__,
                )


def _commits_unanswered(consumer: Any) -> list[asyncio.Task[Any]]:
    """The tasks of ``consumer``'s commit requests not answered yet (aiokafka's
    ``GroupCoordinator._do_commit_offsets``, which ``commit_offsets`` shields)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return []
    found = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if (
            getattr(coro, "__qualname__", None) == "GroupCoordinator._do_commit_offsets"
            and frame is not None
            and frame.f_locals.get("self") is coordinator
        ):
            found.append(task)
    return found


def group_consumer(
    options: Mapping[str, Any], group: str, instance: str, **extra: Any
) -> AIOKafkaConsumer:
    """A consumer of our own (an executor's, the projector's): in its own group with static
    membership, committing only when told, from the earliest record when the group is new."""
    return AIOKafkaConsumer(
        **options,
        group_id=group,
        group_instance_id=instance,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **extra,
    )


async def committed_with_metadata(
    consumer: AIOKafkaConsumer, partitions: set[TopicPartition]
) -> dict[TopicPartition, tuple[int, str]]:
    """The group's committed offset of each partition with the metadata committed with it
    (aiokafka's public ``committed`` returns the offset alone); a partition never committed is
    left out."""
    found = await consumer._coordinator.fetch_committed_offsets(list(partitions))
    return {tp: (o.offset, o.metadata or "") for tp, o in found.items()}


def member_id(consumer: AIOKafkaConsumer) -> str:
    """``consumer``'s member id in its group ("" while it is not a member): a static
    member's next run is given a new one, as is a member that rejoins after missing its
    session."""
    return str(consumer._coordinator.member_id or "")


async def group_member_ids(consumer: AIOKafkaConsumer, group: str) -> set[str]:
    """The member ids of ``group``'s members as its coordinator knows them now (a member
    leaves when it misses its session; a static member's next run takes its place under a
    new id, with the old one's client id). aiokafka's consumer has no public call for it, and
    its admin client would be one more client; raises what the coordinator answered, or the
    connection's error."""
    _, members = await group_members(consumer, group)
    return {member[0] for member in members}


async def group_members(
    consumer: AIOKafkaConsumer, group: str
) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """``group``'s protocol (its assignor's name) and its members as its coordinator knows them
    now: (member id, the metadata it joined with, the assignment it was given); both are empty
    while the group rebalances (the coordinator says them only of a stable group). Raises what
    the coordinator answered, or the connection's error."""
    coordinator = consumer._coordinator.coordinator_id
    if coordinator is None:
        raise KafkaTimeoutError(f"no coordinator of group {group} known yet")
    response = await consumer._client.send(coordinator, DescribeGroupsRequest([group]))
    [described] = response.groups
    error_code, protocol, members = described[0], described[4], described[5]
    if error_code:
        raise for_code(error_code)(f"describing group {group}")
    return str(protocol), [
        (str(member[0]), bytes(member[3] or b""), bytes(member[4] or b"")) for member in members
    ]


def rejoin_group(consumer: AIOKafkaConsumer) -> None:
    """Have ``consumer`` join its group again (with the metadata its assignor gives now: if it
    changed, the group rebalances); aiokafka has no public call for it."""
    consumer._coordinator.request_rejoin()


def sending_now(producer: Any) -> Awaitable[Any] | None:
    """Send what ``producer`` (faust's, on aiokafka) holds back for its linger with its next
    request, and wait until all it holds is acknowledged; None where it is not aiokafka's.

    The worker's producer lingers (``TALKSTREAM_PRODUCER_LINGER_MS``) so that results of calls
    that end close together share one produce request; the ledger, which decides a whole batch
    and then waits for its outputs, has nothing to wait for. The open batches stop lingering
    but stay open: aiokafka sends one request to a broker at a time, and a record sent to a
    partition whose batch is closed (as ``flush_for_commit`` closes them) waits until that
    batch leaves, which suspends the sender (the ledger) for a produce round trip."""
    accumulator = _accumulator(producer)
    if accumulator is None:
        return None
    waiters = _send_open_batches(accumulator)
    return asyncio.wait(waiters) if waiters else None


def withdraw(producer: Any, deliveries: Iterable[asyncio.Future[Any]]) -> int:
    """Take back from ``producer`` (faust's, on aiokafka) the records of ``deliveries`` it
    holds unsent: each one in a batch of a partition that its sender has not taken yet (never
    numbered, never sent) fails with :class:`Withdrawn`, so Kafka never writes it. A record
    already sent (in flight, or being retried) is left as it is. Returns how many records were
    taken back; 0 where the producer is not aiokafka's.

    Only those records: the producer is the whole worker's, and a batch of a partition also
    holds what other senders put in it meanwhile (an executor's forward or hand-back to a
    command topic, its letter of a command that did not decode), which nobody asked to take
    back. A batch with any of those is taken apart (:func:`_taken_apart`): it holds only them
    from now on, in the order they were sent and where the batch was among its partition's,
    and they are written as if nothing had been taken back. (aiokafka fails a batch as a
    whole: the whole batch was failed before, and those senders took it for Kafka giving up on
    their record.)

    The ledger takes back what it sent of a batch once Kafka has given up on an output of
    it: the producer, under a new id, would write them before what it gave up on, which the
    batch decided again sends after them (``streams.agents.outputs.Batch``)."""
    accumulator = _accumulator(producer)
    wanted = {id(delivery) for delivery in deliveries if not delivery.done()}
    if accumulator is None or not wanted:
        return 0
    taken_back = 0
    for tp, held in list(accumulator._batches.items()):
        for batch in list(held):
            taking = sum(id(delivery) in wanted for delivery, _ in batch._msg_futures)
            if batch.retry_count or not taking:  # sent before (numbered), or none of them
                continue
            failure = Withdrawn(f"taken back by its sender before it was sent to {tp}")
            if taking == batch.record_count:  # nothing but them
                # a send waiting for room in it tries again (in a batch of its own)
                batch.drain_ready()
                batch.failure(failure)
                held.remove(batch)
            elif not _taken_apart(accumulator, batch, wanted, failure):
                continue
            taken_back += taking
        if not held:
            del accumulator._batches[tp]
    return taken_back


def _taken_apart(accumulator: Any, batch: Any, wanted: set[int], failure: Withdrawn) -> bool:
    """The records of ``batch`` (unsent, never numbered) whose deliveries are not ``wanted``
    are all it holds from now on, each with its own delivery, in their order; the wanted ones
    fail with ``failure``. aiokafka cannot take a record out of a batch it built: the batch is
    read back and its other records go into a builder of their own, which then stands in for
    the batch's (the batch stays where it is among its partition's, with its age, linger and
    waiters: a send waiting for room in it still waits for the sender to take it). Returns
    False, the batch left as it is, if its records and deliveries do not pair up (a batch
    sent with ``send_batch``, which the worker never does)."""
    old = batch._builder
    deliveries = batch._msg_futures
    if len(deliveries) != old.record_count():
        return False
    size, closed = old.size(), old.closed()
    records = list(DefaultRecordBatch(bytes(old._build())))
    # each record taken over is as large as before but for its time's distance from the
    # first one's (a varint: at most 10 bytes more), so the builder takes every one
    limit = max(accumulator._batch_size, size + 10 * len(records))
    txn = accumulator._txn_manager
    batch._builder = BatchBuilder(
        limit,
        accumulator._compression_type,
        is_transactional=txn is not None and txn.transactional_id is not None,
    )
    batch._msg_futures = []
    for (delivery, _), record in zip(deliveries, records, strict=True):
        if id(delivery) in wanted:
            delivery.set_exception(copy.copy(failure))
            continue
        batch.append(
            record.key,
            record.value,
            record.timestamp,
            _create_future=lambda delivery=delivery: delivery,
            headers=record.headers,
        )
    if closed or limit > accumulator._batch_size:  # full, or allowed more than a batch holds
        batch._builder.close()
    return True


def lingering_no_more(producer: Any) -> None:
    """A worker stopping: what ``producer`` (faust's, on aiokafka, or an aiokafka one: the
    executors' process's) holds back for its linger goes with its next request, and so does
    every record sent from now on.

    A stopping worker waits until its outputs are acknowledged (faust commits its offsets only
    after them): with a long linger (the settings allow a minute) it waited that long, and a
    supervisor that gives a stop less time kills it with those outputs, a call's result among
    them, unsent. (The executors' process, ``EXECUTORS=process``, did not stop lingering: past
    its stop's bound it gave up on a Kafka that answered, "stopping without Kafka", and the
    results it held were called again by the next run.)"""
    accumulator = _accumulator(producer)
    if accumulator is not None:
        accumulator._linger_time = 0  # the batches opened from now on
        _send_open_batches(accumulator)


def without_linger(producer: Any, topic: str, partition: int | None) -> None:
    """What ``producer`` (faust's, on aiokafka) holds of ``topic``'s ``partition`` goes with its
    next request, not held back for the linger (its sender, asleep for the linger, is woken):
    :func:`sending_now` for one partition, without waiting, for a record handed over in a
    task of its own (faust's buffer) after its sender last looked."""
    accumulator = _accumulator(producer)
    if accumulator is None or partition is None:
        return
    held = accumulator._batches.get(TopicPartition(topic, partition))
    if not held:
        return
    for batch in held:
        batch._linger_time = 0
    if not accumulator._waiter_future.done():
        accumulator._waiter_future.set_result(None)


def _accumulator(producer: Any) -> Any:
    """The aiokafka accumulator of ``producer``: faust's (``_producer``) or aiokafka's own."""
    own = getattr(producer, "_message_accumulator", None)
    if own is not None:
        return own
    return getattr(getattr(producer, "_producer", None), "_message_accumulator", None)


def _send_open_batches(accumulator: Any) -> list[asyncio.Future[Any]]:
    """Make the open batches ready at the sender's next look, and wake it (it may be asleep
    for the linger); returns the futures of every batch not yet acknowledged."""
    waiters = []
    for batches in accumulator._batches.values():
        for batch in batches:
            batch._linger_time = 0
            waiters.append(batch.future)
    waiters += [batch.future for batch in accumulator._pending_batches]
    if not accumulator._waiter_future.done():
        accumulator._waiter_future.set_result(None)
    return waiters


def consumer_lag(
    consumer: AIOKafkaConsumer | None, positions: Mapping[TopicPartition, int]
) -> dict[tuple[str, int], int]:
    """Records of each assigned partition beyond ``positions`` (what its owner took or
    applied), for ``talkstream_consumer_lag``; a partition not fetched yet is left out. One
    its owner has taken nothing of yet (a rebalance gave it one, quiet since) is behind by
    what lies beyond the consumer's position in it (from the group's commit on): counted from
    0, an executor given a dead or stopped worker's partitions said it was behind by all they
    ever held, for as long as no command came."""
    if consumer is None:
        return {}
    lags = {}
    for tp in consumer.assignment():
        with contextlib.suppress(Exception):  # not fetched yet
            position = positions.get(tp)
            if position is None:
                position = _fetch_position(consumer, tp)
            if position is not None:
                lags[(tp.topic, tp.partition)] = max(consumer.highwater(tp) - position, 0)
    return lags


def _fetch_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset ``consumer`` fetches ``tp`` from next (its committed offset until records
    are returned), None until it knows it: aiokafka's ``position`` waits for it (a coroutine),
    and a scrape reads it as it stands."""
    assignment = consumer._subscription.subscription.assignment
    state = assignment.state_value(tp) if assignment is not None else None
    return state.position if state is not None and state.has_valid_position else None

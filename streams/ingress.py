"""The HTTP webhook: ``POST /chat-gpt/generate`` (``/chat-gpt/generate/`` too) → [requests],
durable before 2xx.

Parse (any shape Talkable sends) → check the signature → seal the secrets → produce keyed by
person with ``acks=all`` → ``202 {"request_id": ...}`` only once the broker acknowledged.
Bad input: 4xx naming each field, nothing produced. Kafka unavailable: 503 with Retry-After,
so Talkable retries and nothing is lost. ``/healthz``: the process answers; ``/readyz``: a
webhook would be written now (a broker answered, [requests] has a leader for every partition
and as many partitions as the ledger's changelog), for a load balancer to send traffic
elsewhere meanwhile.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestPayloadError
from aiokafka import TopicPartition, errors
from aiokafka.errors import (
    KafkaError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
)
from aiokafka.protocol.admin import DescribeConfigsRequest
from aiokafka.protocol.metadata import MetadataRequest
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from models.events import ChatRequest, RequestReceived, RequestSpec, SealedSecrets
from models.params import (
    LATEST_EPOCH_S,
    FieldError,
    GenerateParams,
    ParamsError,
    claimed_site,
    legacy_security_key,
    parse_request,
    refuse_content_type,
    request_fingerprint,
)
from models.problems import Problem
from models.signature import SIGNATURE_HEADER, verify_signature
from streams import logs
from streams.codecs import encode
from streams.codings import coding_of, decoded, refuse_transfer, refuse_unknown
from streams.errors import BrokerUnavailable, PartitionsAdded, RecordTooLarge
from streams.kafka_options import IdempotentProducer
from streams.refusals import EXPECTATION, RAW_BODIES, REFUSED, refusal, refusals
from streams.refusals import body as error_body
from streams.secrets import SecretBox, key_fingerprint
from streams.settings import Settings
from streams.topics import partition_of

log = logging.getLogger(__name__)

# a webhook's record goes at once: it waits for its acknowledgement before it is answered, and
# aiokafka sends a partition's records that arrive while its request is in flight together
# anyway. Lingering 1 ms made each paced webhook a timer's wake-up dearer and a millisecond
# later (the ingress alone at 250/s, four runs each: 1.13-1.22 ms of its CPU a webhook and an
# acknowledgement p50 of 2.9 ms lingering, 1.08-1.14 ms and 1.8-1.9 ms not; 64 clients closed
# loop: 0.34-0.42 ms against 0.37-0.42 ms)
INGRESS_LINGER_MS = 0

PATH = "/chat-gpt/generate"
# the webhook's path with a trailing slash, the same endpoint: a webhook URL configured so
# was a 404 at every call (and counted nowhere)
SLASHED = PATH + "/"
RETRY_AFTER_SECONDS = "5"
READY_TIMEOUT_SECONDS = 2.0  # /readyz answers within this, ready or not
# what aiokafka fails a record with once its partition has had no leader for the request
# timeout, whether or not an earlier try reached the broker (KafkaSink)
IN_DOUBT = (LeaderNotAvailableError, NotLeaderForPartitionError)
# what Kafka refuses a record for, however often it is sent: its size (KafkaSink)
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
# what a broker answers a record it did not write (a produce request's error code, or the
# producer id fenced), from a producer still sending: any other failure of a delivery is the
# producer's own, after it took the record, perhaps sent, and so is every failure once its
# sender has ended (aiokafka's sender, failing, fails every record in flight with its error, a
# bare KafkaError "Unexpected error during batch delivery" or a fencing, written or not)
REFUSALS = (errors.BrokerResponseError, errors.ProducerFenced)
# what a sender is told when the producer could not start (the log says why, and where)
UNREACHABLE = "Kafka could not be reached"
RESEND_PAUSE_S = 1.0  # between tries to hand such a record over again, while it is refused
# how old the producer's metadata may grow before it asks again (aiokafka's default: 5 minutes):
# partitions added to [requests] are seen, and webhooks refused, within this (``split``), not
# only when a /readyz probe asks for it; a metadata request of two topics every few seconds
METADATA_MAX_AGE_MS = 5000
Handler = Callable[[web.Request], Awaitable[web.Response]]

# the answer to each reason a webhook cannot become a request
HTTP_STATUS: dict[Problem, int] = {
    Problem.UNREADABLE: 400,
    Problem.UNAUTHENTIC: 401,
    Problem.TOO_SLOW: 408,
    Problem.TOO_LARGE: 413,
    Problem.UNSUPPORTED: 415,
    Problem.INVALID: 422,
    Problem.UNIMPLEMENTED: 501,
}


class Sink(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes) -> None: ...

    async def ready(self, topic: str, timeout: float) -> str | None:
        """None when a record for ``topic`` would be written now; otherwise why not."""
        ...

    async def close(self) -> None: ...


class KafkaSink:
    """An idempotent ``acks=all`` producer whose answers tell the truth.

    ``send`` returns once the broker acknowledged the record, and raises
    :class:`BrokerUnavailable` only when nothing was sent: the producer could not start, had no
    metadata for the topic, or Kafka has stopped acknowledging (a send has waited longer than
    ``stall_seconds``), so new records are refused before they are handed to the producer. A
    record once handed over is never abandoned: the idempotent producer retries it until the
    broker has it (its sequence number makes the retry a no-op if an earlier try landed), and
    ``send`` waits for that; there is no timeout that would answer 503 for a record written
    later. A client that stops waiting has been promised nothing either way.

    One case is aiokafka's: a record whose partition has had no leader for the producer's
    ``request_timeout`` (a broker stopped, or killed, a single broker being restarted) fails
    with ``LeaderNotAvailableError`` (or ``NotLeaderForPartitionError``), whether or not an
    earlier try of it had reached the broker: a broker killed after writing it and before
    answering leaves it written. So it is not answered 503: it is sent again, the same bytes,
    on the same producer, until Kafka has it (a copy already written is the same delivery,
    which the ledger takes once). The producer is an
    :class:`~streams.kafka_options.IdempotentProducer`, as the worker's: once a delivery has
    failed (and spent a sequence number) it takes a new producer id, so neither that record
    sent again nor the records after it are refused as out of sequence. A record that Kafka
    refused for its size (larger than the producer's ``max_request_size`` or the topic's
    ``max.message.bytes``) raises :class:`RecordTooLarge`, naming what Kafka takes: sent again,
    it would be refused again (a 503 had Talkable retry it for good). A record that Kafka
    refused otherwise (the broker's answer: ``REFUSALS``) was not written: 503.

    A record that the producer failed holding, on an error of its own, may have been written,
    and is sent again too: on the same producer (under its new producer id) while it still
    sends, and on a new one once its sender task has ended (aiokafka's sender, failing, fails
    every record in flight, written or not, and then every later ``send``: the ingress answered
    503 to each webhook until it was restarted). A producer whose sender has ended is replaced
    by the next caller that finds it so (a send, a record sent again, a readiness probe, which
    says it until the new one has started). A record whose ``send`` failed as the sender ended
    (never held: surely not written) is handed once to the new one before any 503
    (``_hand_over``). Only a sink closed while such a record waits to be
    sent again gives it up: a :class:`BrokerUnavailable` with ``written=None``, whose 503 does
    not say it was not written.
    """

    def __init__(
        self,
        options: dict[str, Any],
        timeout: float = 10.0,
        stall_seconds: float = 5.0,
        ledger_changelog: str | None = None,
        partitions: int | None = None,
        diagnose: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._options = options
        # why the brokers refuse a start that failed at once (the CLI's words for it,
        # ``streams.kafka_options.diagnose``): None, or a start that timed out, says it alone
        self._diagnose = diagnose
        # a record's partition, by the count the topics were created with (the ledger's):
        # never the producer's pick over the partitions the broker has now (see partition_of)
        self._partition_of = partition_of(partitions) if partitions else None
        self._timeout = timeout
        self._stall_seconds = stall_seconds
        self._changelog = ledger_changelog  # what the ledger reads by: as many partitions
        self._producer: IdempotentProducer | None = None
        self._starting: asyncio.Future[IdempotentProducer] | None = (
            None  # the one start its callers wait for
        )
        self._lock = asyncio.Lock()
        self._closed = False  # ``close`` called: no producer is started any more
        self._pending: dict[int, float] = {}  # sends handed over, not acknowledged: since when
        self._sends = 0

    async def _started(self) -> IdempotentProducer:
        async with self._lock:
            if self._closed:
                raise BrokerUnavailable(
                    "the ingress is stopping; nothing was sent", told="the ingress is stopping"
                )
            if self._producer is not None and self._producer.ended() is not None:
                await self._replace(self._producer)
            if self._producer is None:
                producer = IdempotentProducer(
                    **self._options,
                    linger_ms=INGRESS_LINGER_MS,
                    request_timeout_ms=int(self._timeout * 1000),
                    metadata_max_age_ms=METADATA_MAX_AGE_MS,
                )
                try:
                    await asyncio.wait_for(producer.start(), self._timeout)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    raise BrokerUnavailable(
                        await self._why_not_started(exc), told=UNREACHABLE
                    ) from exc
                if self._closed:  # the sink closed while it started (``close``)
                    await producer.stop()
                    raise BrokerUnavailable(
                        "the ingress is stopping; nothing was sent",
                        told="the ingress is stopping",
                    )
                if self._changelog is not None:  # its partitions known with the topic's
                    producer.client.add_topic(self._changelog)
                self._producer = producer
            return self._producer

    async def _replace(self, producer: IdempotentProducer) -> None:
        """A producer whose sender has ended (``IdempotentProducer.ended``) dropped and stopped,
        for a new one to take its place: it sends nothing more, and every ``send`` raised, so
        the ingress answered 503 to every webhook until it was restarted. The records it failed
        holding are sent again on the new one by their own ``send``s."""
        log.warning(
            "ingress: Kafka's producer stopped sending (%s): a new one takes its place, and "
            "the records it held are sent again",
            producer.ended(),
        )
        self._producer = None
        stopping = asyncio.ensure_future(producer.stop())  # its sender done: nothing to wait for
        stopping.add_done_callback(_read)
        await asyncio.wait([stopping], timeout=self._timeout)

    async def _why_not_started(self, exc: BaseException) -> str:
        """What the readiness status and the 503's log line say of a start that failed: the
        brokers' own cause when a diagnosis finds one (a KRaft controller's port, nothing
        listening, a refused login: all were "cannot connect", a controller that let the
        producer in included), within the start's ``timeout``; else the brokers named (it
        said "Kafka unavailable: KafkaConnectionError") and the exception. A start that timed
        out is not diagnosed: its webhooks have waited the whole timeout already."""
        if self._diagnose is not None and not isinstance(exc, TimeoutError):
            try:
                cause = await asyncio.wait_for(self._diagnose(), self._timeout)
            except TimeoutError:
                cause = None
            if cause is not None:
                return f"Kafka unavailable: {cause}"
        servers = self._options.get("bootstrap_servers")
        why = type(exc).__name__
        return f"Kafka unavailable: cannot connect to a broker at {servers} ({why})"

    async def _producer_now(self) -> IdempotentProducer:
        """The started producer. Every caller while it starts waits for that one start, a
        readiness probe's included: a broker that takes connections and never answers (hung,
        or a network dropping everything) fails them all together, within ``timeout``. Each
        webhook started a producer of its own, one after another behind the lock: a burst's
        k-th webhook was answered 503 after k timeouts (the 20th of 20 after 196 s)."""
        producer = self._producer
        if producer is not None and producer.ended() is None:
            return producer
        # none yet, or one whose sender has ended: a start (``_started`` replaces that one)
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._started())
            self._starting.add_done_callback(_read)  # failed with no caller left: not an ERROR
        # shielded: a caller that gives up (a probe's timeout) does not cancel the start
        return await asyncio.shield(self._starting)

    def stalled(self) -> bool:
        """A send has waited longer than ``stall_seconds``: Kafka is not acknowledging."""
        now = time.monotonic()
        return any(now - since > self._stall_seconds for since in self._pending.values())

    def split(self, producer: Any, topic: str) -> str | None:
        """Why a record keyed to ``topic`` must not be written: the topic has another partition
        count than the ledger's changelog, one of them grown since they were created (Kafka
        takes no partition away, so the larger count is the one added to). Either way faust's
        assignor pairs a source topic's partitions with its table's changelog's only while
        the counts agree, so the worker given a person's partition of ``topic`` may not hold
        their ledger state: it decides none of its records, which wait in Kafka until a worker
        holds both (``streams.topics.unpaired``), for as long as the deployment is not fixed.
        (Partitions added to ``topic`` stay empty: a person's partition is one of the count
        the topics were created with, ``partition_of``; a sink that maps keys over the
        count Kafka has now, none given, could write where no ledger reads.) None while the
        counts agree or are not known yet."""
        if self._changelog is None:
            return None
        cluster = producer.client.cluster
        written = cluster.partitions_for_topic(topic)
        ledger = cluster.partitions_for_topic(self._changelog)
        if not written or not ledger or len(written) == len(ledger):
            return None
        fix = "to change the count, deploy under a new TALKSTREAM_APP_ID"
        waits = (
            f"a webhook could wait in Kafka, undecided, on a worker that holds its partition of "
            f"{topic} without its person's ledger state"
        )
        if len(written) > len(ledger):
            grown = (
                f"{topic} has {len(written)} partitions but the ledger's {self._changelog} "
                f"{len(ledger)}"
            )
            if self._partition_of is None:  # keys mapped over every partition Kafka has now
                return (
                    f"{grown}: a webhook could land where no ledger reads it (partitions added "
                    f"to a deployment's topics; {fix})"
                )
            return (
                f"{grown}: {waits} (partitions added to a deployment's topics, which faust "
                f"then assigns apart from the ledger's changelog; {fix})"
            )
        return (
            f"the ledger's {self._changelog} has {len(ledger)} partitions but {topic} "
            f"{len(written)}: {waits} (partitions added to the ledger's changelog, which faust "
            f"then assigns apart from {topic}; {fix})"
        )

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        producer = await self._producer_now()
        if self.stalled():
            raise BrokerUnavailable(
                "Kafka is not acknowledging; nothing was sent",
                told=(
                    f"Kafka has not acknowledged a write for more than {self._stall_seconds:g} "
                    "seconds, so new ones are refused until it does"
                ),
            )
        split = self.split(producer, topic)
        if split is not None:
            raise PartitionsAdded(split)
        partition = self._partition_of(key) if self._partition_of else None
        producer, delivery = await self._hand_over(producer, topic, key, value, partition)
        self._sends += 1
        ticket = self._sends
        self._pending[ticket] = time.monotonic()
        try:
            while True:
                try:
                    await delivery  # the definitive outcome: acknowledged, or an error
                    return
                except TOO_LARGE as exc:  # over the topic's max.message.bytes: not written
                    limit = await _topic_limit(producer.client, topic)
                    raise RecordTooLarge(
                        f"{len(value)} bytes, more than {topic} takes"
                        + (f" ({limit}: its max.message.bytes)" if limit else ""),
                        size=len(value),
                        limit=limit,
                    ) from exc
                except KafkaError as exc:
                    ended = producer.ended()
                    if isinstance(exc, REFUSALS) and not isinstance(exc, IN_DOUBT) and not ended:
                        # the broker's answer refused it: not written
                        raise BrokerUnavailable(
                            f"Kafka refused the record: {type(exc).__name__}",
                            told=f"Kafka refused the record ({type(exc).__name__})",
                        ) from exc
                    # perhaps written: given up for want of a leader, or failed by the producer
                    # holding it (its sender ended: every record it held failed, with that
                    # sender's error, the broker's refusals too)
                    if isinstance(exc, IN_DOUBT) and not ended:
                        log.warning(
                            "ingress sends again a record Kafka gave up for want of a leader"
                        )
                    else:
                        log.warning(
                            "ingress sends again a record Kafka's producer failed holding "
                            "(%s), which may be written",
                            f"its sender ended: {ended}" if ended else type(exc).__name__,
                        )
                    pause = not ended and not isinstance(exc, IN_DOUBT)
                    producer, delivery = await self._again(
                        producer, topic, key, value, partition, pause
                    )
        finally:
            del self._pending[ticket]

    async def _hand_over(
        self,
        producer: IdempotentProducer,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None,
    ) -> tuple[IdempotentProducer, asyncio.Future[Any]]:
        """The record handed to the producer: the producer that took it, and its delivery.
        A ``send`` that raises never held it (aiokafka appends a record to a batch, and
        returns its delivery, only after every wait): surely not written, a 503 saying so.
        One that raised because the producer's sender ended while it ran (waiting for the
        topic's metadata, or for room: aiokafka's sender, failing on an error of its own,
        fails every later ``send`` with its error) is handed once more, to the producer that
        replaces it (``_replace``), before any 503: that webhook was answered 503 "nothing was
        written", and the producer replaced only at the next call."""
        again = True
        while True:
            try:
                delivery = await producer.send(topic, value=value, key=key, partition=partition)
            except TOO_LARGE as exc:  # over the producer's max_request_size
                limit = producer._max_request_size
                raise RecordTooLarge(
                    f"{len(value)} bytes, more than the producer takes ({limit}: its "
                    "max_request_size)",
                    size=len(value),
                    limit=limit,
                ) from exc
            except KafkaError as exc:  # no metadata for the topic, buffer full: not handed over
                ended = producer.ended()
                if again and ended is not None and not self._closed:
                    again = False
                    log.warning(
                        "ingress: Kafka's producer stopped sending while a record was handed "
                        "to it (%s): nothing was written; handed to its replacement",
                        ended,
                    )
                    producer = await self._producer_now()  # (its replacement, started)
                    continue
                raise BrokerUnavailable(
                    f"Kafka unavailable: {type(exc).__name__}; nothing was sent",
                    told=f"Kafka did not take the record ({type(exc).__name__})",
                ) from exc
            return producer, delivery

    async def _again(
        self,
        producer: IdempotentProducer,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None,
        pause: bool,
    ) -> tuple[IdempotentProducer, asyncio.Future[Any]]:
        """A record that may be written handed over again, and the producer that took it: the
        same one (under the new producer id it has taken), or, once its sender has ended, the
        new one that replaced it (``_replace``). While Kafka is down it may not be taken (no
        metadata, buffer full, no new producer could start), tried again every
        ``RESEND_PAUSE_S`` (first after one, with ``pause``: a failure the producer did not wait
        for, which could repeat at once). Only a sink stopping meanwhile gives it up: that
        record may be written, and is said so (a ``ProducerClosed`` escaped, and was a 500)."""
        if pause:
            await asyncio.sleep(RESEND_PAUSE_S)
        while True:
            if self._closed:
                stopped = "the ingress stopped before Kafka acknowledged the record"
                raise BrokerUnavailable(
                    f"{stopped}, which may be written", told=stopped, written=None
                )
            try:
                producer = await self._producer_now()  # a new one, if its sender has ended
                taken = await producer.send(topic, value=value, key=key, partition=partition)
            except BrokerUnavailable:  # no producer could start (or the sink stopped)
                pass
            except KafkaError:  # not taken: its sender has ended (or it closed), or Kafka is down
                if producer.ended() is not None or producer is not self._producer:
                    continue  # on its replacement, at once
            else:
                return producer, taken
            await asyncio.sleep(RESEND_PAUSE_S)

    async def ready(self, topic: str, timeout: float) -> str | None:
        """Asks a broker now (one metadata request): None when it answered and every partition
        of ``topic`` has a leader; otherwise why a webhook would be refused. Answers within
        ``timeout``: a producer still starting goes on starting for the next probe."""
        deadline = time.monotonic() + timeout
        ended = None if self._producer is None else self._producer.ended()
        if self._producer is None or ended is not None:  # none yet, or its sender has ended
            try:
                producer = await asyncio.wait_for(self._producer_now(), timeout)
            except TimeoutError:
                if ended is not None:
                    return f"Kafka's producer failed ({ended}); a new one is connecting"
                return "connecting to Kafka"
            except BrokerUnavailable as exc:
                return str(exc)
        else:
            producer = self._producer
        if self.stalled():
            return "Kafka is not acknowledging"
        client = producer.client
        client.add_topic(topic)  # tracked from now on: the update below asks for it
        if self._changelog is not None:
            client.add_topic(self._changelog)
        partitions = None
        # twice before saying a topic is missing: the update asked for may be one already in
        # flight, sent before the topic was tracked (the producer's start asks for the
        # changelog's), and aiokafka answers with it without asking again
        for _ in range(2):
            try:
                answered = await asyncio.wait_for(
                    client.force_metadata_update(), max(deadline - time.monotonic(), 0.01)
                )
            except TimeoutError:
                answered = False
            if not answered:
                return "no Kafka broker answered"
            partitions = client.cluster.partitions_for_topic(topic)
            if partitions:
                break
        if not partitions:
            return await _undescribed(client, topic, deadline)
        leaderless = sorted(
            p
            for p in partitions
            if client.cluster.leader_for_partition(TopicPartition(topic, p)) in (None, -1)
        )
        if leaderless:
            return f"{topic} partitions without a leader: {', '.join(map(str, leaderless))}"
        return self.split(producer, topic)

    async def close(self) -> None:
        """Stop the producer, giving Kafka up to the sink's timeout to take what it holds. Kafka
        may be down (a stop waits for every record handed over, and a producer that gave one
        up waits for a new producer id first): past the timeout the records left are dropped.
        None of them was answered 2xx (a webhook is answered only once Kafka has its record),
        so Talkable retries them. No producer is started from now on: a record sent again
        meanwhile (``_again``) is given up, and a new one refused. A start in progress is
        waited for up to the timeout too; one that ends after stops the producer it started
        (``_started``): it was left running, connected to the brokers, its sender task too."""
        self._closed = True
        if self._starting is not None and not self._starting.done():
            await asyncio.wait([self._starting], timeout=self._timeout)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        stopping = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait([stopping], timeout=self._timeout)
        if not done:
            stopping.cancel()
            log.warning(
                "ingress stopped before Kafka acknowledged every record (%.0fs): their "
                "webhooks were not answered 2xx, and are retried by their sender",
                self._timeout,
            )


def _read(done: asyncio.Future[Any]) -> None:
    """Marks a future's exception read: the caller that would have read it is gone."""
    if not done.cancelled():
        done.exception()


async def _undescribed(client: Any, topic: str, deadline: float) -> str:
    """Why Kafka's answer did not describe ``topic``, as the broker says it. aiokafka leaves
    out of its metadata a topic answered with any error (and logs it): /readyz said "does not
    exist" for each, a topic without a leader yet or one this client may not see too. One
    metadata request for the topic alone (never creating it) reads the broker's error."""
    if topic in client.cluster.unauthorized_topics:
        return f"not authorized for topic {topic}"
    node = client.get_random_node()
    error: type[KafkaError] | None = None
    if node is not None:
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        try:
            answer = await asyncio.wait_for(
                client.send(node, request), max(deadline - time.monotonic(), 0.01)
            )
            error = errors.for_code(answer.topics[0][0])
        except (KafkaError, TimeoutError, IndexError):
            pass  # no answer: the one the client had stands
    if error is errors.UnknownTopicOrPartitionError:
        return f"topic {topic} does not exist"
    if error is errors.LeaderNotAvailableError:
        return f"topic {topic} has no leader yet"
    if error is None or error is errors.NoError:  # described since: the next probe sees it
        return f"topic {topic} not in Kafka's metadata yet"
    return f"Kafka answered {error.__name__} for topic {topic}"


async def _topic_limit(client: Any, topic: str) -> int | None:
    """The topic's ``max.message.bytes`` as a broker says it (one DescribeConfigs request,
    within a couple of seconds), or None."""
    node = client.get_random_node()
    if node is None:
        return None
    request = DescribeConfigsRequest([(2, topic, ["max.message.bytes"])])
    try:
        answer = await asyncio.wait_for(client.send(node, request), 2.0)
        entries = answer.resources[0][4]
        return next(int(value) for name, value, *_ in entries if name == "max.message.bytes")
    except (KafkaError, TimeoutError, IndexError, StopIteration, ValueError, TypeError):
        return None


# what the access log writes for a path the ingress does not serve (build_ingress's routes:
# the webhook's, health and metrics), and for a request aiohttp refused before reading its path
OTHER_PATH = "(a path not served)"
SERVED_PATHS = frozenset({PATH, SLASHED, "/healthz", "/readyz", "/metrics"})


class AccessLogger(AbstractAccessLogger):
    """One line per HTTP request: method, path *without* the query string (it may carry
    keys), status and time. aiohttp's default logs the whole request line. A path the ingress
    does not serve is not written either: it is whatever the client sent, and a webhook URL
    written with a key in its path (``/chat-gpt/generate/<key>``) put the key in the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path if request.path in SERVED_PATHS else OTHER_PATH
        self.logger.info(
            "%s %s %s %.1fms",
            request.method,
            path,
            response.status,
            time * 1000,
            extra={"method": request.method, "path": path, "status": response.status},
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "talkstream_ingress_requests",
            "Webhooks by HTTP outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.refused = Counter(
            "talkstream_ingress_refused",
            "Requests refused before any handler, by HTTP status: not HTTP, a request line or "
            "header too long, a body coding that cannot be decoded, a path not served (404), a "
            "method a path other than the webhook's does not take (405)",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "talkstream_ingress_latency_seconds",
            "Time to answer a webhook",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


def build_ingress(
    settings: Settings, sink: Sink, secrets: SecretBox, clock: Callable[[], float] = time.time
) -> web.Application:
    # a site's key whatever the case its webhooks write its name in: the operator's console and
    # tools take a site in any case, and a key set for "Acme" left "acme" (or "ACME", its
    # webhooks forged so) unsigned
    keys = {site.lower(): key for site, key in settings.site_keys.items()}
    metrics = Metrics()
    limit = settings.max_body_bytes
    logs.redact_aiohttp_server_log()
    topic = settings.topic("requests")
    dedupe = settings.dedupe_window_seconds  # a retry within it is the same request (503)

    def must_sign(site: str) -> bool:
        return settings.require_signature or site.lower() in keys

    # no site signs: a query string is read with the body at once
    signs = must_sign if keys or settings.require_signature else None

    # why webhooks are refused for partitions added, as last logged (KafkaSink.split)
    refusing: str | None = None

    def tally(status: int, started: float) -> None:
        metrics.requests.labels(outcome=str(status)).inc()
        metrics.latency.observe(time.perf_counter() - started)

    def counted(handler: Handler) -> Handler:
        """Every answer to the webhook counted by its status, whatever the method."""

        async def answer(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                tally(exc.status, started)
                raise
            except Exception:  # a bug of ours: aiohttp answers 500 (and logs it)
                tally(500, started)
                raise
            tally(response.status, started)
            return response

        return answer

    @counted
    async def generate(request: web.Request) -> web.Response:
        nonlocal refusing
        # the header as sent: aiohttp's ``content_type`` drops the boundary and charset and
        # reports a missing header as application/octet-stream (parse_request: JSON)
        content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
        # the query as sent: ``request.query`` reads an escape that is not UTF-8 as U+FFFD
        query = request.rel_url.raw_query_string
        # the body comes as sent (RAW_BODIES), decoded here: each stream checked to its end
        coding = coding_of(request.headers.getall(hdrs.CONTENT_ENCODING, []))
        try:
            _refuse_by_headers(request, limit)
            sent = await _read_body(
                request, settings.max_body_bytes, settings.ingress_body_timeout_seconds
            )
            body = decoded(coding, sent, settings.max_body_bytes)
            try:
                params, query_read = _params(
                    content_type, body, query, settings.max_body_bytes, signs
                )
            except ParamsError as exc:
                # a signing site's sender learns nothing of its params before it is known
                site = claimed_site(content_type, body, query) if signs is not None else None
                if exc.problem is Problem.INVALID and site is not None and must_sign(site):
                    _authenticate(keys.get(site.lower()), content_type, body, request)
                raise
            if signs is not None and must_sign(params.site):
                _authenticate(keys.get(params.site.lower()), content_type, body, request)
                if query_read:
                    # the body alone did not parse: its own error, now that the sender is known
                    params = parse_request(
                        content_type, body, None, max_body_bytes=settings.max_body_bytes
                    )
            received_ms = int(clock() * 1000)
            _not_ahead(params, received_ms // 1000, settings.max_clock_ahead_seconds)
        except ParamsError as exc:
            return web.json_response(exc.body(), status=HTTP_STATUS[exc.problem])
        received = _received(params, secrets, received_ms)
        try:
            await sink.send(topic, received.person.encode(), encode(received))
        except RecordTooLarge as exc:
            # as a body over MAX_BODY_BYTES: nothing was written, nor ever will be
            log.warning("ingress: Kafka refused request_id=%s: %s", received.request_id, exc)
            message = f"too large for Kafka: the request as written is {exc}"
            return web.json_response(
                {"errors": [{"field": "body", "message": message}]}, status=413
            )
        except PartitionsAdded as exc:
            # every webhook is refused until an operator redeploys: said once per change of
            # the cause, with what to do, not once per webhook; the answer says it too
            if exc.cause != refusing:
                refusing = exc.cause
                log.error(
                    "ingress refuses every webhook (503, nothing written; first request_id=%s) "
                    "until an operator acts: %s",
                    received.request_id,
                    exc.cause,
                )
            else:
                log.debug("ingress refused request_id=%s: %s", received.request_id, exc.cause)
            message = (
                f"not written, nor will any be until this service's operator acts: {exc.cause}"
            )
            return web.json_response(
                {
                    "errors": [{"field": "kafka", "message": message}],
                    "request_id": received.request_id,
                },
                status=503,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        except BrokerUnavailable as exc:
            log.warning("ingress could not produce request_id=%s: %s", received.request_id, exc)
            return web.json_response(
                {
                    "errors": [{"field": "kafka", "message": _unavailable(exc, dedupe)}],
                    "request_id": received.request_id,  # not accepted (2xx) either way
                },
                status=503,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        refusing = None  # a change of the partition counts since is said again
        log.info(
            "accepted request_id=%s site=%s",
            received.request_id,
            params.site,
            extra={"request_id": received.request_id, "site": params.site},
        )
        return web.json_response({"request_id": received.request_id}, status=202)

    async def expect(request: web.Request) -> web.Response | None:
        """A webhook's ``Expect`` header, before its body is sent (curl asks ``100-continue``
        for a large body): what the request line and headers alone refuse is answered there,
        as the handler would answer it once the body came, so the body is never sent: another
        method than POST (405), and :func:`_refuse_by_headers`'s refusals (a content or
        transfer coding, a declared length over the limit, a content type). aiohttp said "100
        Continue" to each, and the refusal came once the body was on its way. Any other
        expectation is a 417 in the answers' own shape (aiohttp's was text quoting the header,
        and counted nowhere, as every answer here is)."""
        if request.version < HttpVersion11:  # HTTP/1.0 knows no 100 Continue: sent at once
            return None
        started = time.perf_counter()
        if request.headers.get(hdrs.EXPECT, "").strip().lower() != "100-continue":
            status, field, message = EXPECTATION
            answer = web.json_response(error_body(field, message), status=status)
        elif request.method != hdrs.METH_POST:
            answer = _not_post()
        else:
            try:
                _refuse_by_headers(request, limit)
            except ParamsError as exc:
                answer = web.json_response(exc.body(), status=HTTP_STATUS[exc.problem])
            else:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # as aiohttp's: the answer's size is its own
                return None
        answer.force_close()  # its body, if sent anyway, is not read
        tally(answer.status, started)
        return answer

    @counted
    async def not_post(_: web.Request) -> web.Response:
        return _not_post()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        why = await sink.ready(topic, READY_TIMEOUT_SECONDS)
        if why is None:
            return web.json_response({"ready": True, "status": "ready"})
        return web.json_response({"ready": False, "status": why}, status=503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def close_sink(_: web.Application) -> None:
        await sink.close()

    # what aiohttp answers itself (404, 405, 413) in the webhook's error shape; its parser's
    # refusals too, when served by ``streams.refusals``
    app = web.Application(client_max_size=settings.max_body_bytes + 1, middlewares=[refusals])
    app[RAW_BODIES] = True  # its bodies decoded by the handler (streams.codings), not aiohttp
    for path in (PATH, SLASHED):
        app.router.add_post(path, generate, expect_handler=expect)
        # after POST's: every other method
        app.router.add_route(hdrs.METH_ANY, path, not_post, expect_handler=expect)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    assert {r.canonical for r in app.router.resources()} == SERVED_PATHS  # the access log's
    app.on_cleanup.append(close_sink)
    app[REFUSED] = lambda status: metrics.refused.labels(status=str(status)).inc()
    return app


def _unavailable(exc: BrokerUnavailable, dedupe_seconds: int) -> str:
    """The 503's message: whether the record was written, what Kafka did, and what to do.
    "temporarily unavailable, retry" said neither which service nor whether the webhook had
    been written; a record given up while it may have been (the sink stopped while it was to
    be sent again) is not said not to be (its retry is the same request, taken once)."""
    retry = f"retry after {RETRY_AFTER_SECONDS} seconds"
    if exc.written is not None:
        return f"nothing was written: {exc.told}; {retry}"
    if dedupe_seconds > 0:  # a window of 0 takes every webhook as new
        retry += (
            f": the same webhook within {dedupe_seconds} seconds is the same request, "
            "processed once"
        )
    return f"perhaps written: {exc.told}; {retry}"


def _not_post() -> web.Response:
    """A webhook configured with another method: told so in the answers' own shape."""
    error = {"field": "method", "message": "not allowed; the webhook is a POST"}
    return web.json_response({"errors": [error]}, status=405, headers={hdrs.ALLOW: "POST"})


def _refuse_by_headers(request: web.BaseRequest, limit: int) -> None:
    """What a webhook's headers alone refuse, whatever its body: a ``Content-Encoding`` the
    ingress does not decode (415; read as it came, it was "not valid JSON"), a
    ``Transfer-Encoding`` but ``chunked`` (501; ``gzip, chunked`` read as chunked alone took a
    plain body), a ``Content-Length`` over ``limit`` (413), a ``Content-Type`` no body is read
    in (415). Judged in this order before the body is read, by the handler and, with
    ``Expect: 100-continue``, before the body is asked for: the same answer either way.
    Raises :class:`ParamsError`."""
    refuse_unknown(coding_of(request.headers.getall(hdrs.CONTENT_ENCODING, [])))
    refuse_transfer(request.headers.getall(hdrs.TRANSFER_ENCODING, []))
    if request.content_length is not None and request.content_length > limit:
        raise ParamsError(
            Problem.TOO_LARGE, [FieldError(field="body", message=f"larger than {limit} bytes")]
        )
    refuse_content_type(request.headers.get(hdrs.CONTENT_TYPE, ""))


def _not_ahead(params: GenerateParams, now_s: int, allowed: int) -> None:
    """The webhook's event time (epoch seconds, rendered by Talkable when the event happened)
    not ahead of this clock by more than ``allowed``: the ledger judges by it, and a window it
    started in the future would hold the person's later webhooks until then, or for good (a
    time in milliseconds). Older is fine: Talkable retries a webhook as first rendered."""
    limit = params.usage_limit
    if limit is None or limit.current_time - now_s <= allowed:
        return
    ahead = limit.current_time - now_s
    message = (
        "reads as after the year 9999: epoch seconds expected, not milliseconds"
        if limit.current_time > LATEST_EPOCH_S
        else f"is {ahead} seconds ahead of this server's clock (at most {allowed})"
    )
    raise ParamsError(
        Problem.INVALID, [FieldError(field="usage_limit.current_time", message=message)]
    )


def _params(
    content_type: str,
    body: bytes,
    query: str,
    max_body_bytes: int,
    signs: Callable[[str], bool] | None,
) -> tuple[GenerateParams, bool]:
    """The webhook's params, and whether its query string was read. The signature covers the
    body only, so a signed request's params come from its body alone: when the body alone names
    a site that signs, the query string is not read at all (a broken one cannot refuse it)."""
    if query and signs is not None:  # the body alone first: it may be a signed one
        try:
            alone = parse_request(content_type, body, None, max_body_bytes=max_body_bytes)
        except ParamsError:
            pass
        else:
            if signs(alone.site):
                return alone, False
    params = parse_request(content_type, body, query or None, max_body_bytes=max_body_bytes)
    return params, bool(query)


def _authenticate(key: bytes | None, content_type: str, body: bytes, request: web.Request) -> None:
    """Raises 401 unless the request is signed with the site's key (a site that must sign
    and has none is refused: signatures are required)."""
    if key is None or not _authentic(key, content_type, body, request):
        raise ParamsError(
            Problem.UNAUTHENTIC,
            [FieldError(field=SIGNATURE_HEADER, message=_unauthentic(key, request))],
        )


def _unauthentic(key: bytes | None, request: web.Request) -> str:
    """Why a webhook is refused 401: it was "missing or wrong" either way, which left the
    operator of a Custom App to guess whether its header was sent at all (quoting nothing)."""
    if not key:
        return "no security key for this site"
    if not request.headers.get(SIGNATURE_HEADER, "").strip():
        return (
            "missing: this site signs its webhooks (TALKSTREAM_SITE_SECURITY_KEYS): send "
            "Base64(hex(HMAC-SHA256(its security key, the raw body))), or its security key in "
            "a legacy webhook's key field"
        )
    return "wrong: not Base64(hex(HMAC-SHA256(the site's security key, the raw body)))"


def _authentic(key: bytes, content_type: str, body: bytes, request: web.Request) -> bool:
    """A Custom App signs the body; a legacy webhook carries the site's key in ``key``."""
    if verify_signature(key, body, request.headers.get(SIGNATURE_HEADER)):
        return True
    legacy = legacy_security_key(content_type, body)
    return legacy is not None and hmac.compare_digest(legacy.encode(), key)


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body as sent (a declared length over ``limit`` was refused before:
    :func:`_refuse_by_headers`)."""
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        message = f"not received within {timeout:g} seconds"
        raise ParamsError(Problem.TOO_SLOW, [FieldError(field="body", message=message)]) from None
    except web.HTTPRequestEntityTooLarge:
        raise ParamsError(
            Problem.TOO_LARGE, [FieldError(field="body", message=f"larger than {limit} bytes")]
        ) from None
    except RequestPayloadError as exc:  # broken chunks or compression, as the body arrived
        _, field, message = refusal(exc, 0)
        raise ParamsError(Problem.UNREADABLE, [FieldError(field=field, message=message)]) from None
    except ConnectionResetError:
        # the client closed the connection before the body ended (aiohttp's "Connection
        # lost"): the client's doing, answered to no one, but counted as what it is; it was a
        # 500 in talkstream_ingress_requests_total, and an ERROR with a traceback
        message = "cut short: the connection closed before the body ended"
        raise ParamsError(Problem.UNREADABLE, [FieldError(field="body", message=message)]) from None


def _received(params: GenerateParams, secrets: SecretBox, at_ms: int) -> RequestReceived:
    openai = params.openai
    return RequestReceived(
        request_id=request_fingerprint(params),
        delivery_id=uuid.uuid4().hex,
        person=params.person,
        at_ms=at_ms,
        spec=RequestSpec(
            site=params.site,
            email=params.email,
            event_number=params.event_number,
            chat=ChatRequest(
                model=openai.model,
                messages=[m.model_dump() for m in openai.messages],
                max_tokens=openai.completion_cap(),
                extra=openai.passthrough(),
            ),
            usage_limit=params.usage_limit,
            trigger_criteria=params.trigger_criteria,
        ),
        secrets=SealedSecrets(
            talkable_api_key=secrets.seal(params.api_key.get_secret_value()),
            openai_api_key=secrets.seal(openai.api_key.get_secret_value()),
        ),
        openai_key_id=key_fingerprint(openai.api_key.get_secret_value()),
        talkable_key_id=key_fingerprint(params.api_key.get_secret_value()),
    )

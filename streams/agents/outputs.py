"""What the ledger sends of its decisions: commands to the executors, lifecycle events and
letters of work given up on (:class:`Emitter`), per batch of [requests] messages
(:class:`Batch`), each output with its :data:`Identity`.

A batch's states are stored only once Kafka took every output of it; a batch of which Kafka
gave up on one is decided again (``streams.agents.ledger.Ledger._undecided``), and deciding a
record again makes the same outputs, but for the clock's issue times: their identities say which
of them Kafka took the first time, which are not sent again. Once Kafka has given up on an
output of a batch, the batch sends nothing more (:meth:`Batch.holds`): what it would send is
sent when it is decided again, after what Kafka gave up on, so a request's transitions reach
[lifecycle] in the order they were decided.

An output Kafka refuses for what it is (:data:`REFUSED`: larger than the producer's
``max_request_size`` or the topic's ``max.message.bytes``) is refused however often it is
sent: deciding its batch again looped for good, and the partition stalled. Each output says
what goes in its place then (:data:`Instead`): a command, its attempt failed (reported to the
ledger as an executor reports one: the request ends ``generation_failed`` or ``publish_failed``
with ``RecordTooLarge``, dead-lettered); a lifecycle event, a letter of it; a letter, the
letter without its value. The batch is then stored. Any other error (a broker without a leader
for too long, an authorization refused until an operator grants it) still decides the batch
again, until Kafka takes it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from models.events import (
    GenerateText,
    GenerationAttemptFailed,
    LifecycleEvent,
    PublicationAttemptFailed,
    PublishCompletion,
)
from models.ledger import Outcome, PersonState
from models.params import site_identity
from streams.codecs import encode
from streams.runtime import REFUSED, DeadLetters, Source, Topics, refusal

log = logging.getLogger("streams.agents.ledger")  # the ledger's lines, as before the split

# sends what the producer holds back for its linger; its acknowledgements (None: nothing to do)
SendNow = Callable[[], Awaitable[None] | None]
# takes back from the producer those of these outputs it holds unsent; how many it took back
# (``streams.kafka_options.withdraw``)
Withdraw = Callable[[list[asyncio.Future[Any]]], int]
# an output of a decision, as deciding the same record again makes it again whatever the clock
# (a command's issue time differs): its kind, request and attempt (``Emitter``); a lifecycle
# event's ``identity()``; a letter of a record that did not decide (one of them per record)
Identity = tuple[str | int, ...]
NONE_SENT: frozenset[Identity] = frozenset()
# the letter of a record that does not decode, and of one the rules failed on (a bug)
UNDECODABLE: Identity = ("undecodable",)
LEDGER_ERROR: Identity = ("ledger_error",)
# the error class a command Kafka refused ends its attempt with
RECORD_TOO_LARGE = "RecordTooLarge"


class Instead(Protocol):
    """What goes in place of an output Kafka refused (given the refusal): the replacement's
    delivery and what would go in its place in turn, or None: nothing can."""

    def __call__(
        self, refusal: BaseException, /
    ) -> Awaitable[tuple[Awaitable[Any], Instead | None] | None]: ...


Output = tuple[Source, Identity, Awaitable[Any], "Instead | None"]


def target_key(command: GenerateText | PublishCompletion) -> bytes:
    """A command's record key: its upstream target (the OpenAI key's fingerprint, the
    Talkable site in any case: ``Shop`` and ``shop`` are one site), so all calls to one target
    meet in one executor, whichever worker owns the partition, and its pacing holds across
    workers (the keys of one OpenAI organisation meet in the executor that owns the
    organisation's partition: ``streams.agents.forwarding``). A publication written keyed by
    its site as typed (before the key folded the case) is called where it is: nothing orders
    a site's publications (each is its own request's event, under its own number)."""
    if isinstance(command, GenerateText):
        return (command.openai_key_id or command.request_id).encode()
    return site_identity(command.site).encode()


class Batch:
    """What a batch of messages decided: each person's newest state (stored only once the
    outputs are acknowledged) with the faust event of its partition, the deliveries of
    those outputs by the record decided and what they are, and its transitions (counted in
    the metrics only then too)."""

    def __init__(self, withdraw: Withdraw | None = None) -> None:
        self.states: dict[bytes, tuple[PersonState, Any]] = {}
        self.deliveries: list[Output] = []
        self.transitions: list[LifecycleEvent] = []
        self.event: Any = None  # the faust event being decided (its partition is the person's)
        # records decided before whose batch was not stored, and how many of their outputs
        # Kafka had taken then (not sent again)
        self.again: list[Source] = []
        self.not_again = 0
        # once Kafka gave up on an output: the outputs it took, by record
        self.acknowledged: dict[Source, set[Identity]] = {}
        # an output Kafka gave up on (or refused other than for its size), once seen: nothing
        # more of the batch is sent (``holds``), and what was sent is taken back if unsent
        # (``withdraw``); how many outputs were held back, and taken back
        self.failed: BaseException | None = None
        self.held = 0
        self.withdrawn = 0
        self._withdraw = withdraw
        self._sent: list[asyncio.Future[Any]] = []  # the deliveries of the outputs sent
        self._by_request: dict[str, list[asyncio.Future[Any]]] = {}  # the same, by request

    def holds(self, request_id: str | None = None) -> bool:
        """Whether an output (of ``request_id``) is held back, not sent: Kafka gave up on an
        output of the batch, which will be decided again and then send it after that one.
        Sent now, it could be written before: a decision held up past the producer's request
        timeout (a gap read back from a partition without a leader) had Kafka give up on a
        request's ``TextGenerated`` while its ``CompletionPublished``, sent later (the
        producer under a new id), was taken, and [lifecycle] held them in that order. The
        request's own outputs are looked at as they stand (a failure's callbacks may not
        have run yet)."""
        if self.failed is None and request_id is not None:
            for delivery in self._by_request.get(request_id, ()):
                if delivery.done():
                    self._settled(delivery)
        if self.failed is None:
            return False
        self.held += 1
        return True

    def _settled(self, delivery: asyncio.Future[Any]) -> None:
        """An output's delivery is settled: the first one Kafka gave up on (or refused other
        than for its size) fails the batch, and the outputs it sent that the producer still
        holds unsent are taken back. The producer, under a new id, would write them before
        the one it gave up on, which the batch decided again sends after them: a send that
        waited for room behind a batch of a partition without a leader goes on once the
        producer gives up on that batch, in a batch of its own; a batch behind one in
        flight that the producer gives up on is sent after it."""
        if self.failed is None and not delivery.cancelled():
            failure = delivery.exception()
            if failure is not None and not isinstance(failure, REFUSED):
                self.failed = failure
                self._take_back(self._sent)

    def _take_back(self, deliveries: list[asyncio.Future[Any]]) -> None:
        if self._withdraw is not None:
            self.withdrawn += self._withdraw(deliveries)

    def send(
        self,
        source: Source,
        identity: Identity,
        delivery: Awaitable[Any],
        instead: Instead | None = None,
        request_id: str | None = None,
    ) -> None:
        """An output handed to the producer, of ``request_id`` (None: of no request). Sent
        while the batch failed (its ``send`` waited, and the producer gave up on an output
        of the batch meanwhile), it is taken back at once if still unsent."""
        self.deliveries.append((source, identity, delivery, instead))
        if isinstance(delivery, asyncio.Future):
            if self.failed is not None:
                self._take_back([delivery])
            self._sent.append(delivery)
            delivery.add_done_callback(self._settled)
            if request_id is not None:
                self._by_request.setdefault(request_id, []).append(delivery)

    def taken(self) -> None:
        """Every output was taken (:meth:`delivered` returned), and the batch is decided again
        all the same (Kafka did not take its changelog writes): ``acknowledged`` holds them all,
        as if Kafka had given up on one (filled then only: the common case fills nothing)."""
        if not self.acknowledged:
            for source, identity, _, _ in self.deliveries:
                self.acknowledged.setdefault(source, set()).add(identity)

    async def delivered(self, send_now: SendNow, failed: Exception | None = None) -> None:
        """The batch's outputs are acknowledged; ``send_now`` sends them without lingering.
        An output Kafka refused for good (:data:`REFUSED`) is replaced by what its ``instead``
        sends, acknowledged in turn (a replacement refused too, by what its own says). If
        Kafka gave up on an output otherwise, its error is raised once every output is
        settled, and ``acknowledged`` holds those Kafka took (a replacement as
        ``("instead", *identity)``). ``failed``: deciding the batch failed, so it is not stored
        whatever Kafka says; its outputs are settled all the same, and ``acknowledged`` holds
        those Kafka took (nothing is raised, nothing replaced)."""
        if not self.deliveries:
            return
        outputs = self.deliveries
        error: BaseException | None = None
        while outputs:
            sent = send_now()
            results = await asyncio.gather(
                *(delivery for _, _, delivery, _ in outputs),
                *([sent] if sent is not None else []),
                return_exceptions=True,
            )
            if (
                outputs is self.deliveries
                and failed is None
                and not any(isinstance(result, BaseException) for result in results)
            ):
                return  # the common case: all taken, nothing to remember
            if sent is not None and isinstance(results[-1], BaseException):
                error = error or results[-1]
            replacements: list[Output] = []
            for (source, identity, _, instead), result in zip(outputs, results, strict=False):
                if not isinstance(result, BaseException):
                    self.acknowledged.setdefault(source, set()).add(identity)
                elif isinstance(result, REFUSED) and instead is not None and failed is None:
                    try:
                        replacement = await instead(result)
                    except Exception as exc:  # not handed over (Kafka out of reach): again
                        error = error or exc
                        continue
                    mark = identity if identity[0] == "instead" else ("instead", *identity)
                    if replacement is None:  # nothing goes in its place: it is done with
                        self.acknowledged.setdefault(source, set()).add(mark)
                    else:
                        replacements.append((source, mark, *replacement))
                else:
                    error = error or result
            outputs = replacements
        if error is not None and failed is None:
            raise error


async def handed(send: Awaitable[Awaitable[Any]]) -> Awaitable[Any]:
    """A send's delivery; a record the producer refused to take (over its
    ``max_request_size``: aiokafka raises that from ``send``) as a delivery failed so, which
    the batch settles like a refusal by the broker."""
    try:
        return await send
    except REFUSED as exc:
        refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        refused.set_exception(exc)
        return refused


class Emitter:
    """Sends what a decision produced: commands to the executors, lifecycle events, and the
    work given up on to the dead-letter topic; and what goes in place of one Kafka refused."""

    def __init__(self, topics: Topics, dead_letters: DeadLetters) -> None:
        self._topics = topics
        self._dead_letters = dead_letters

    def _command_topic(self, kind: str) -> Any:
        return self._topics.generate if kind == "generate_text" else self._topics.completions

    async def __call__(
        self,
        outcome: Outcome,
        decided: Source,
        batch: Batch,
        sent: Collection[Identity] = NONE_SENT,
    ) -> None:
        """Hand the outputs to the producer, but those in ``sent`` (Kafka took them, or what
        went in their place, when this record was decided before) and those ``batch`` holds
        back (Kafka gave up on an output of it: :meth:`Batch.holds`); each one's delivery
        (to be awaited) goes to ``batch``, with the record, what the output is
        (:data:`Identity`) and what goes in its place if Kafka refuses it. ``decided``: the
        [requests] record the outcome was decided from, which a letter of work given up on
        names (the command in it was never read from a record of its own)."""
        for command in outcome.commands:
            identity: Identity = (command.kind, command.request_id, command.attempt)
            if identity in sent or ("instead", *identity) in sent:
                continue
            if batch.holds(command.request_id):
                continue
            topic = self._command_topic(command.kind)
            value = encode(command)
            delivery = await handed(topic.send(key=target_key(command), value=value))
            instead = functools.partial(self._failed, command, len(value), topic)
            batch.send(decided, identity, delivery, instead, command.request_id)
        for event in outcome.events:
            # its identity(), less a call and a str() (the ledger's hot path)
            identity = ("lifecycle", event.request_id, event.type, event.state, event.attempt)
            if identity in sent or ("instead", *identity) in sent:
                continue
            if batch.holds(event.request_id):
                continue
            # the lifecycle topic is the record of transitions; the log line is for debugging
            # (at INFO it was a measurable part of the worker's CPU under load)
            log.debug(
                "transition request_id=%s site=%s state=%s attempt=%s",
                event.request_id,
                event.site,
                event.state.value,
                event.attempt,
                extra={
                    "request_id": event.request_id,
                    "site": event.site,
                    "state": event.state.value,
                    "attempt": event.attempt,
                },
            )
            value = encode(event)
            delivery = await handed(
                self._topics.lifecycle.send(key=event.request_id.encode(), value=value)
            )
            instead = functools.partial(self._event_letter, event, value, decided)
            batch.send(decided, identity, delivery, instead, event.request_id)
        for given_up in outcome.dead_letters:
            given = given_up.command
            identity = ("given_up", given.kind, given.request_id, given.attempt)
            if identity in sent or ("instead", *identity) in sent:
                continue
            if batch.holds(given.request_id):
                continue
            letter: dict[str, Any] = {
                "topic": self._command_topic(given.kind).get_topic_name(),
                "partition": -1,
                "offset": -1,
                "reason": given_up.reason,
                "key": given.request_id.encode(),
                "value": encode(given),
                "request_id": given.request_id,
                "decided": decided,
            }
            delivery = await handed(self._dead_letters.write(**letter))
            without = self.instead_of_letter(letter)
            batch.send(decided, identity, delivery, without, given.request_id)

    async def _failed(
        self, command: GenerateText | PublishCompletion, size: int, topic: Any, exc: BaseException
    ) -> tuple[Awaitable[Any], Instead | None]:
        """A command Kafka refused: its attempt failed, reported to the person's partition as
        an executor reports one (the ledger decides what it means: no retry fixes it)."""
        why = refusal(f"the {command.kind} command", size, topic.get_topic_name(), exc)
        log.warning(
            "ledger: request_id=%s attempt=%s: %s", command.request_id, command.attempt, why
        )
        kind: type[GenerationAttemptFailed | PublicationAttemptFailed] = (
            GenerationAttemptFailed if command.kind == "generate_text" else PublicationAttemptFailed
        )
        report = kind(
            request_id=command.request_id,
            person=command.person,
            attempt=command.attempt,
            at_ms=command.issued_at_ms,
            error_class=RECORD_TOO_LARGE,
            error_message=why,
            retriable=False,
        )
        delivery = await handed(
            self._topics.requests.send(key=command.person.encode(), value=encode(report))
        )
        return delivery, None

    async def _event_letter(
        self, event: LifecycleEvent, value: bytes, decided: Source, exc: BaseException
    ) -> tuple[Awaitable[Any], Instead | None]:
        """A lifecycle event Kafka refused: a letter of it, for operators to see."""
        topic = self._topics.lifecycle.get_topic_name()
        letter: dict[str, Any] = {
            "topic": topic,
            "partition": -1,
            "offset": -1,
            "reason": refusal(f"the {event.state.value} event", len(value), topic, exc),
            "key": event.request_id.encode(),
            "value": value,
            "request_id": event.request_id,
            "decided": decided,
        }
        delivery = await handed(self._dead_letters.write(**letter))
        return delivery, self.instead_of_letter(letter)

    def instead_of_letter(self, letter: dict[str, Any]) -> Instead:
        """What goes in place of a letter Kafka refused: the same letter without its value
        (where it came from and why stay; the record it held, larger than the dead-letter
        topic takes, is not kept); refused too, nothing (an ERROR in the log)."""

        async def without_value(exc: BaseException) -> tuple[Awaitable[Any], Instead | None]:
            value = letter["value"] or b""
            topic = self._topics.deadletter.get_topic_name()
            why = refusal("the letter", len(value), topic, exc)
            lighter = {
                **letter,
                "value": None,
                "reason": f"{letter['reason']} [value left out: {why}]",
            }
            delivery = await handed(self._dead_letters.write(**lighter))
            return delivery, nothing

        async def nothing(exc: BaseException) -> None:
            log.error(
                "ledger: Kafka refused a dead letter even without its value (%s): "
                "request_id=%s topic=%s reason=%s",
                type(exc).__name__,
                letter["request_id"],
                letter["topic"],
                letter["reason"],
            )
            return None

        return without_value

"""What the ledger sends of its decisions: commands to the executors, lifecycle events and
letters of work given up on (:class:`Emitter`), per batch of [requests] messages
(:class:`Batch`), each output with its :data:`Identity`.

A batch's states are stored only once Kafka took every output of it; a batch of which Kafka
gave up on one is decided again (``streams.agents.ledger.Ledger._undecided``), and deciding a
record again makes the same outputs, but for the clock's issue times: their identities say which
of them Kafka took the first time, which are not sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from models.events import GenerateText, LifecycleEvent, PublishCompletion
from models.ledger import Outcome, PersonState
from streams.codecs import encode
from streams.runtime import DeadLetters, Source, Topics

log = logging.getLogger("streams.agents.ledger")  # the ledger's lines, as before the split

# sends what the producer holds back for its linger; its acknowledgements (None: nothing to do)
SendNow = Callable[[], Awaitable[None] | None]
# an output of a decision, as deciding the same record again makes it again whatever the clock
# (a command's issue time differs): its kind, request and attempt (``Emitter``); a lifecycle
# event's ``identity()``; a letter of a record that did not decide (one of them per record)
Identity = tuple[str | int, ...]
NONE_SENT: frozenset[Identity] = frozenset()
# the letter of a record that does not decode, and of one the rules failed on (a bug)
UNDECODABLE: Identity = ("undecodable",)
LEDGER_ERROR: Identity = ("ledger_error",)


def target_key(command: GenerateText | PublishCompletion) -> bytes:
    """A command's record key: its upstream target (the OpenAI key's fingerprint, the
    Talkable site), so all calls to one target meet in one executor, whichever worker owns
    the partition, and its pacing holds across workers."""
    if isinstance(command, GenerateText):
        return (command.openai_key_id or command.request_id).encode()
    return command.site.encode()


class Batch:
    """What a batch of messages decided: each person's newest state (stored only once the
    outputs are acknowledged) with the faust event of its partition, the deliveries of
    those outputs by the record decided and what they are, and its transitions (counted in
    the metrics only then too)."""

    def __init__(self) -> None:
        self.states: dict[bytes, tuple[PersonState, Any]] = {}
        self.deliveries: list[tuple[Source, Identity, Awaitable[Any]]] = []
        self.transitions: list[LifecycleEvent] = []
        self.event: Any = None  # the faust event being decided (its partition is the person's)
        # records decided before whose batch was not stored, and how many of their outputs
        # Kafka had taken then (not sent again)
        self.again: list[Source] = []
        self.not_again = 0
        # once Kafka gave up on an output: the outputs it took, by record
        self.acknowledged: dict[Source, set[Identity]] = {}

    def send(self, source: Source, identity: Identity, delivery: Awaitable[Any]) -> None:
        self.deliveries.append((source, identity, delivery))

    async def delivered(self, send_now: SendNow, failed: Exception | None = None) -> None:
        """The batch's outputs are acknowledged; ``send_now`` sends them without lingering.
        If Kafka gave up on one, its error is raised once every output is settled, and
        ``acknowledged`` holds those Kafka took. ``failed``: deciding the batch failed, so it
        is not stored whatever Kafka says; its outputs are settled all the same, and
        ``acknowledged`` holds those Kafka took (nothing is raised)."""
        if not self.deliveries:
            return
        sent = send_now()
        results = await asyncio.gather(
            *(delivery for _, _, delivery in self.deliveries),
            *([sent] if sent is not None else []),
            return_exceptions=True,
        )
        refused = next((r for r in results if isinstance(r, BaseException)), None)
        if refused is None and failed is None:
            return
        for (source, identity, _), result in zip(self.deliveries, results, strict=False):
            if not isinstance(result, BaseException):
                self.acknowledged.setdefault(source, set()).add(identity)
        if refused is not None and failed is None:
            raise refused


class Emitter:
    """Sends what a decision produced: commands to the executors, lifecycle events, and the
    work given up on to the dead-letter topic."""

    def __init__(self, topics: Topics, dead_letters: DeadLetters) -> None:
        self._topics = topics
        self._dead_letters = dead_letters

    def _command_topic(self, kind: str) -> Any:
        return self._topics.generate if kind == "generate_text" else self._topics.completions

    async def __call__(
        self, outcome: Outcome, decided: Source, sent: Collection[Identity] = NONE_SENT
    ) -> list[tuple[Source, Identity, Awaitable[Any]]]:
        """Hand the outputs to the producer, but those in ``sent`` (Kafka took them when this
        record was decided before); returns each one's delivery (to be awaited), with the
        record and what the output is (:data:`Identity`). ``decided``: the [requests] record
        the outcome was decided from, which a letter of work given up on names (the command
        in it was never read from a record of its own)."""
        deliveries: list[tuple[Source, Identity, Awaitable[Any]]] = []
        for command in outcome.commands:
            identity: Identity = (command.kind, command.request_id, command.attempt)
            if identity in sent:
                continue
            topic = self._command_topic(command.kind)
            delivery = await topic.send(key=target_key(command), value=encode(command))
            deliveries.append((decided, identity, delivery))
        for event in outcome.events:
            # its identity(), less a call and a str() (the ledger's hot path)
            identity = ("lifecycle", event.request_id, event.type, event.state, event.attempt)
            if identity in sent:
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
            delivery = await self._topics.lifecycle.send(
                key=event.request_id.encode(), value=encode(event)
            )
            deliveries.append((decided, identity, delivery))
        for given_up in outcome.dead_letters:
            given = given_up.command
            identity = ("given_up", given.kind, given.request_id, given.attempt)
            if identity in sent:
                continue
            letter = await self._dead_letters.write(
                topic=self._command_topic(given_up.command.kind).get_topic_name(),
                partition=-1,
                offset=-1,
                reason=given_up.reason,
                key=given_up.command.request_id.encode(),
                value=encode(given_up.command),
                request_id=given_up.command.request_id,
                decided=decided,
            )
            deliveries.append((decided, identity, letter))
        return deliveries

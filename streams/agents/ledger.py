"""The ledger agent: the only writer of per-person state and the only place decisions happen.

One instance per partition of [requests] (key = person). For each message: decode → load the
person's state → ``models.ledger.handle`` → store the new state → emit commands and lifecycle
events. A message that does not decode goes to the dead-letter topic; nothing stops the
partition (faust acks a message whose handler raised, so nothing may escape this loop).

The deadline timer only *reads* the table and sends ``DeadlineExpired`` to the person's
partition; the ledger acts on it in stream context, where the table may be written.
"""

from __future__ import annotations

import logging
from typing import Any

from models.events import DeadlineExpired
from models.ledger import Outcome, PersonState, handle
from streams.app import Runtime, now_ms
from streams.codecs import decode, decode_requests, encode
from streams.errors import DecodeError

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 30  # timer ticks between scans of the whole table (recovered state)


def register(rt: Runtime) -> None:
    table = rt.ledger_table
    due = DeadlineIndex()
    ticks = 0

    @rt.app.agent(rt.topics.requests, name="ledger")
    async def ledger(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            try:
                message = decode_requests(event.value)
            except DecodeError as exc:
                await rt.dead_letter(
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    reason=str(exc),
                    key=event.key,
                    value=event.value,
                )
                continue
            try:
                person = message.person.encode()
                raw = table.get(person)
                state = decode(PersonState, raw) if raw is not None else None
                outcome = handle(state, message, rt.policy, now_ms())
                table[person] = encode(outcome.state)
                due.track(message.person, outcome.state)
                await _emit(rt, outcome)
            except Exception as exc:  # a bug: refuse loudly, keep the partition flowing
                log.exception(
                    "ledger failed request_id=%s partition=%s offset=%s",
                    message.request_id,
                    msg.partition,
                    msg.offset,
                )
                await rt.dead_letter(
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    reason=f"ledger error: {exc!r}"[:500],
                    key=event.key,
                    value=event.value,
                    request_id=message.request_id,
                )

    @rt.app.timer(interval=rt.settings.deadline_check_interval_seconds, name="deadlines")
    async def deadlines() -> None:
        nonlocal ticks
        if ticks % FULL_SCAN_EVERY == 0:
            due.clear()  # rebuilt from the table: recovered state, revoked partitions
            for person, raw in list(table.items()):
                if raw is not None:
                    due.track(person.decode(), decode(PersonState, raw))
        ticks += 1
        for expired in due.overdue(now_ms()):
            log.info(
                "deadline expired request_id=%s attempt=%s stage=%s",
                expired.request_id,
                expired.attempt,
                expired.stage,
            )
            await rt.topics.requests.send(key=expired.person.encode(), value=encode(expired))


class DeadlineIndex:
    """What this process knows to be in flight, by person, and which deadlines it signalled."""

    def __init__(self) -> None:
        self._due: dict[str, dict[str, tuple[int, int, str]]] = {}
        self._signalled: set[tuple[str, int]] = set()

    def clear(self) -> None:
        self._due.clear()

    def track(self, person: str, state: PersonState) -> None:
        if state.inflight:
            self._due[person] = {
                rid: (f.deadline_ms, f.attempt, f.state.value) for rid, f in state.inflight.items()
            }
        else:
            self._due.pop(person, None)

    def overdue(self, now: int) -> list[DeadlineExpired]:
        found, live = [], set()
        for person, flights in self._due.items():
            for request_id, (deadline, attempt, stage) in flights.items():
                live.add((request_id, attempt))
                if deadline <= now and (request_id, attempt) not in self._signalled:
                    self._signalled.add((request_id, attempt))
                    found.append(
                        DeadlineExpired(
                            request_id=request_id,
                            person=person,
                            attempt=attempt,
                            stage=stage,
                            at_ms=now,
                        )
                    )
        self._signalled &= live
        return found


async def _emit(rt: Runtime, outcome: Outcome) -> None:
    for command in outcome.commands:
        topic = rt.topics.generate if command.kind == "generate_text" else rt.topics.completions
        await topic.send(key=command.request_id.encode(), value=encode(command))
    for event in outcome.events:
        rt.metrics.observe(event)
        log.info(
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
        await rt.topics.lifecycle.send(key=event.request_id.encode(), value=encode(event))
    for parked in outcome.parked:
        topic = (
            rt.topics.generate
            if parked.command.kind == "generate_text"
            else (rt.topics.completions)
        )
        await rt.dead_letter(
            topic=topic.get_topic_name(),
            partition=-1,
            offset=-1,
            reason=parked.reason,
            key=parked.command.request_id.encode(),
            value=encode(parked.command),
            request_id=parked.command.request_id,
        )

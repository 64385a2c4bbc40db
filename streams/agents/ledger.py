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
from streams.topics import read_range

log = logging.getLogger(__name__)

# the table also keeps, per partition, the next offset the ledger expects (not a person key:
# persons are "site:email")
OFFSET_MARK = b"\x00next-offset:"
MARK_EVERY = 32
FULL_SCAN_EVERY = 30  # timer ticks between scans of the whole table (recovered state)


def register(rt: Runtime) -> None:
    table = rt.ledger_table
    due = DeadlineIndex(
        {
            "generating": rt.policy.generation_deadline_ms,
            "publishing": rt.policy.publish_deadline_ms,
        },
        grace_ms=int(rt.settings.rebalance_grace_seconds * 1000),
    )
    states = StateCache()
    ticks = 0

    async def process(
        topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        message = await rt.decoded(
            decode_requests, topic=topic, partition=partition, offset=offset, key=key, value=value
        )
        if message is None:
            return
        try:
            person = message.person.encode()
            state = states.load(person, table.get(person))
            outcome = handle(state, message, rt.policy, now_ms())
            # outputs first: the state never claims what did not go out
            await _emit(rt, outcome)
            table[person] = states.store(person, outcome.state)
            due.track(message.person, outcome.state)
        except Exception as exc:  # a bug: refuse loudly, keep the partition flowing
            log.exception(
                "ledger failed request_id=%s partition=%s offset=%s",
                message.request_id,
                partition,
                offset,
            )
            await rt.dead_letter(
                topic=topic,
                partition=partition,
                offset=offset,
                reason=f"ledger error: {exc!r}"[:500],
                key=key,
                value=value,
                request_id=message.request_id,
            )

    # partition -> next offset expected; the table's mark is written every MARK_EVERY offsets
    # (a new owner that starts up to MARK_EVERY behind only re-reads messages whose effects
    # are idempotent); forgotten on a rebalance, so a partition coming back reads its mark
    expected_next: dict[int, int] = {}

    def forget(app: Any, *_: Any, **__: Any) -> None:
        nonlocal ticks
        expected_next.clear()
        due.rebalanced(now_ms())
        ticks = 0  # rescan the table at the next tick: the partitions this worker now owns

    rt.app.on_partitions_revoked.connect(forget)  # type: ignore[arg-type]

    @rt.app.agent(rt.topics.requests, name="ledger")
    async def ledger(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            mark = OFFSET_MARK + str(msg.partition).encode()
            remembered = expected_next.get(msg.partition)
            expected = remembered if remembered is not None else int(table.get(mark) or -1)
            if 0 <= expected < msg.offset:
                # faust can commit past messages it never delivered (a rebalance drops its
                # buffers; its commit logic then skips the gap): read them and catch up
                log.warning(
                    "ledger gap topic=%s partition=%s offsets=%s..%s: repairing",
                    msg.topic,
                    msg.partition,
                    expected,
                    msg.offset - 1,
                )
                rt.metrics.gaps_repaired.inc(msg.offset - expected)
                for record in await read_range(
                    rt.settings, msg.topic, msg.partition, expected, msg.offset
                ):
                    await process(
                        record.topic, record.partition, record.offset, record.key, record.value
                    )
            await process(msg.topic, msg.partition, msg.offset, event.key, event.value)
            expected_next[msg.partition] = msg.offset + 1
            if remembered != msg.offset or msg.offset % MARK_EVERY == 0:
                table[mark] = str(msg.offset + 1).encode()

    @rt.app.timer(interval=rt.settings.deadline_check_interval_seconds, name="deadlines")
    async def deadlines() -> None:
        nonlocal ticks
        if ticks % FULL_SCAN_EVERY == 0:
            due.clear()  # rebuilt from the table: recovered state, revoked partitions
            for person, raw in list(table.items()):
                if raw is not None and not person.startswith(OFFSET_MARK):
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


class StateCache:
    """Decoded person states by the exact bytes they were stored as: a hit skips the JSON
    parse (a large part of the ledger's time), and any other value in the table — recovered
    from the changelog, written by an earlier owner — simply misses and is decoded."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._states: dict[bytes, tuple[bytes, PersonState]] = {}

    def load(self, person: bytes, raw: bytes | None) -> PersonState | None:
        if raw is None:
            return None
        cached = self._states.get(person)
        if cached is not None and cached[0] == raw:
            return cached[1]
        return decode(PersonState, raw)

    def store(self, person: bytes, state: PersonState) -> bytes:
        raw = encode(state)
        self._states.pop(person, None)
        self._states[person] = (raw, state)
        if len(self._states) > self._size:
            del self._states[next(iter(self._states))]
        return raw


class DeadlineIndex:
    """What this process knows to be in flight, by person, and which deadlines it signalled.

    After a rebalance, faust may have dropped commands from an executor's buffers (and
    committed past them): work issued before the rebalance is given ``grace_ms`` more, not the
    rest of its (long) deadline, so lost commands are re-issued soon while calls that were
    merely in progress still have time to report.
    """

    def __init__(
        self, stage_deadline_ms: dict[str, int] | None = None, grace_ms: int = 30_000
    ) -> None:
        self._due: dict[str, dict[str, tuple[int, int, str]]] = {}
        self._signalled: set[tuple[str, int]] = set()
        self._stage_deadline_ms = stage_deadline_ms or {}
        self._grace_ms = grace_ms
        self._rebalanced_at: int | None = None

    def rebalanced(self, now: int) -> None:
        self._rebalanced_at = now

    def _effective(self, deadline: int, stage: str) -> int:
        rebalanced, span = self._rebalanced_at, self._stage_deadline_ms.get(stage)
        if rebalanced is None or span is None or deadline - span >= rebalanced:
            return deadline  # issued after the last rebalance (or no rebalance seen)
        return min(deadline, rebalanced + self._grace_ms)

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
                due_at = self._effective(deadline, stage)
                if due_at <= now and (request_id, attempt) not in self._signalled:
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

"""An executor hands its queued commands back to their topic (a rebalance's revoke, a graceful
stop) only once the last commit of their partition no longer names them
(``streams.agents.handover``): in-process, a real scheduler, the topics and the consumer as
fakes that record what the executor sends and commits, and the partition's next owner reading
the commit a crash would leave."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from models.events import GenerateText
from streams.agents.handover import OnRebalance
from streams.codecs import encode
from tests.functional.test_executor_forwarding import (
    KEY_ID,
    KEY_TP,
    Consumer,
    Generator,
    Topic,
    generator,
    lost_in,
    next_owner_told,
)
from tests.unit.domain_builders import Ledger, received


class Watched(Topic):
    """[generate] as an executor hands back to it, noting at each send the last commit of the
    command's partition (what a crash once Kafka took it leaves its next owner)."""

    def __init__(self, *, refuse: bool = False) -> None:
        super().__init__(refuse=refuse)
        self.consumer: Consumer | None = None
        self.at_send: list[tuple[int, str]] = []  # the last commit of KEY_TP, at each send

    async def send(self, *, key: bytes, value: bytes) -> Any:
        assert self.consumer is not None
        self.at_send.append(last_commit(self.consumer))
        return await super().send(key=key, value=value)


class Refusing(Consumer):
    """A consumer whose commits pass or fail as ``passes`` says, one by one (then pass)."""

    def __init__(self, *owned: TopicPartition, passes: list[bool]) -> None:
        super().__init__(*owned)
        self.passes = passes

    async def commit(self, offsets: Any) -> None:
        if self.passes and not self.passes.pop(0):
            raise CommitFailedError("the group is rebalancing")
        await super().commit(offsets)


def last_commit(consumer: Consumer) -> tuple[int, str]:
    """The last commit of KEY_TP: its offset and mark."""
    return next(c[KEY_TP] for c in reversed(consumer.commits) if KEY_TP in c)


def watched(consumer: Consumer | None = None, *, refuse: bool = False) -> Generator:
    generate = Watched(refuse=refuse)
    g = generator(KEY_TP, generate=generate)
    if consumer is not None:
        g.consumer = g.executor.consumer = consumer
    generate.consumer = g.consumer
    return g


async def queued(g: Generator, person: Ledger, request_id: str, offset: int) -> bytes:
    """``person``'s command of ``request_id`` taken at ``offset`` of KEY_TP (committed as
    taken) and queued, not called yet."""
    [issued] = person.send(received(request_id)).commands
    assert isinstance(issued, GenerateText)
    value = encode(issued.model_copy(update={"openai_key_id": KEY_ID}))
    record = SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=offset,
                             key=KEY_ID.encode(), value=value)  # fmt: skip
    await g.executor._take_batch(g.consumer, {KEY_TP: [record]})  # type: ignore[arg-type]
    return value


async def test_a_command_handed_back_at_a_revoke_is_told_lost_by_no_mark_a_crash_leaves() -> None:
    """A rebalance revokes the partition of a queued command: it was handed back (Kafka took
    it) while the partition's last mark still named it as taken and not reported, and the
    hand-over's commit came only after. A worker that died in between left the partition's
    next owner telling the ledger it was lost, and the ledger, its attempt current, re-issued
    it while the copy handed back was called too: one OpenAI call made twice, billed twice.
    The hand-over's mark is now committed first, and the command sent after it."""
    g = watched()
    person = Ledger()
    a = await queued(g, person, "a", 1)
    assert g.scheduler.queued == 1 and lost_in(last_commit(g.consumer)[1]) == [1]
    await OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    assert g.generate.sent == [(KEY_ID.encode(), a)], "handed back, acknowledged"
    # the worker dies as Kafka takes it back: the next owner reads the commit made before
    [at_send] = g.generate.at_send
    told = await next_owner_told(at_send, (1, a), (2, a))  # (2: the copy handed back)
    for lost in told:  # its ledger: attempt 1 is the copy handed back, called there
        assert person.send(lost).commands == [], "re-issued while handed back"
    assert told == [] and lost_in(at_send[1]) == [], "sent once no mark named it"


async def test_a_revoke_whose_commit_fails_hands_back_nothing_its_mark_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hand-over's commit fails (the member already out of the group, the coordinator
    gone): the last mark still names the queued command, so it is not handed back (sent, its
    copy would be called while the next owner told the ledger it was lost); the next owner
    tells the ledger, which re-issues it: called once. A WARNING says so."""
    g = watched(Refusing(KEY_TP, passes=[True, False, False]))  # the batch's commit passes
    person = Ledger()
    a = await queued(g, person, "a", 1)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await g.executor.handover.hand_back(g.executor.consumer, {KEY_TP})
    assert g.generate.sent == [] and g.scheduler.queued == 0
    told = await next_owner_told(last_commit(g.consumer), (1, a))
    assert [(lost.request_id, lost.attempt, lost.lost) for lost in told] == [("a", 1, True)]
    [reissued] = person.send(*told).commands  # called once, as its next attempt
    assert (reissued.request_id, reissued.attempt) == ("a", 2)
    said = [r.getMessage() for r in caplog.records if "handing back" in r.msg]
    assert said == ["generator could not commit its marks before handing back "
                    "(CommitFailedError): the queued commands its last commit names are not "
                    "handed back; told lost by the partition's next reader"]  # fmt: skip


async def test_a_command_kafka_did_not_take_back_is_named_by_a_commit_after_the_hand_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kafka does not take a queued command back (the producer refused it): it is this run's
    to report again, and a second commit names it for the next owner, who tells the ledger it
    was lost; if that commit fails too, it waits for its deadline, and a WARNING says so."""
    g = watched(refuse=True)
    person = Ledger()
    a = await queued(g, person, "a", 1)
    await g.executor.handover.hand_back(g.consumer, {KEY_TP})
    assert g.generate.sent == [] and [lost_in(m) for _, m in g.generate.at_send] == [[]]
    unmarked, named = (c[KEY_TP] for c in g.consumer.commits[-2:])
    assert lost_in(unmarked[1]) == [] and lost_in(named[1]) == [1]
    told = await next_owner_told(named, (1, a))
    assert [(lost.request_id, lost.attempt) for lost in told] == [("a", 1)]

    g = watched(Refusing(KEY_TP, passes=[True, True, False]), refuse=True)
    await queued(g, Ledger(), "b", 1)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await g.executor.handover.hand_back(g.executor.consumer, {KEY_TP})
    assert lost_in(last_commit(g.consumer)[1]) == []  # a crash: its deadline re-issues it
    said = [r.getMessage() for r in caplog.records if "naming" in r.msg]
    assert said == ["generator could not commit the marks naming 1 commands it could not hand "
                    "back (CommitFailedError): re-issued at their deadline"]  # fmt: skip


async def test_a_stop_hands_its_queued_commands_back_once_no_mark_names_them() -> None:
    """A graceful stop handed its queued commands back, and then committed: a worker killed
    in between (a deploy's stop timeout) left the next run telling the ledger they were lost,
    re-issued while the copies handed back were called too. The stop commits first."""
    g = watched()
    person = Ledger()
    a = await queued(g, person, "a", 1)
    b = await queued(g, person, "b", 2)
    await g.executor.stop(0.0)
    assert g.generate.sent == [(KEY_ID.encode(), a), (KEY_ID.encode(), b)]
    told = await next_owner_told(g.generate.at_send[0], (1, a), (2, b), (3, a), (4, b))
    assert told == [], "none told lost: each is called once, from its copy handed back"
    assert [lost_in(m) for _, m in g.generate.at_send] == [[], []]
    assert lost_in(last_commit(g.consumer)[1]) == []


async def test_a_stop_whose_commit_fails_hands_back_nothing_its_mark_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stop's commit fails: the queued commands stay named by the last mark and are not
    handed back; the next run tells the ledger they were lost (each called once, re-issued),
    and the stop's line counts none handed back."""
    g = watched(Refusing(KEY_TP, passes=[True, False, False]))
    person = Ledger()
    a = await queued(g, person, "a", 1)
    caplog.set_level(logging.INFO, logger="streams.agents.executors")
    await g.executor.stop(0.0)
    assert g.generate.sent == []
    told = await next_owner_told(last_commit(g.consumer), (1, a))
    assert [(lost.request_id, lost.attempt) for lost in told] == [("a", 1)]
    said = [r.getMessage() for r in caplog.records if "stopping:" in r.msg]
    assert said[0].startswith("generator stopping: 0 queued commands handed back"), said

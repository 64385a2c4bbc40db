"""An executor hands its queued commands back to their topic (a rebalance's revoke, a graceful
stop) only once the last commit of their partition no longer names them
(``streams.agents.handover``): in-process, a real scheduler, the topics and the consumer as
fakes that record what the executor sends and commits, and the partition's next owner reading
the commit a crash would leave."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, NotLeaderForPartitionError

from models.events import GenerateText
from streams.agents import executors as executors_module
from streams.agents import handover as handover_module
from streams.agents.handover import OnRebalance
from streams.agents.marks import Mark
from streams.agents.work import Timed
from streams.clients.openai_chat import Completion
from streams.codecs import decode_requests, encode
from streams.kafka_options import GivenUp
from streams.runtime import SystemClock
from streams.upstream.limits import Limits
from tests.functional.test_executor_forwarding import (
    KEY_ID,
    KEY_TP,
    ORG,
    Consumer,
    Decoding,
    Generator,
    Topic,
    calls,
    command,
    generator,
    lost_in,
    next_owner_told,
    take,
)
from tests.unit.domain_builders import Ledger, received
from tests.unit.test_executor_marks import Marked


class Watched(Topic):
    """[generate] as an executor hands back to it, noting at each send the last commit of the
    command's partition (what a crash once Kafka took it leaves its next owner)."""

    def __init__(self, *, refuse: bool = False, give_up: int = 0) -> None:
        super().__init__(refuse=refuse, give_up=give_up)
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


def watched(
    consumer: Consumer | None = None, *, refuse: bool = False, give_up: int = 0
) -> Generator:
    generate = Watched(refuse=refuse, give_up=give_up)
    g = generator(KEY_TP, generate=generate)
    if consumer is not None:
        g.consumer = g.executor.consumer = consumer
    generate.consumer = g.consumer
    return g


async def queued(g: Generator, person: Ledger, request_id: str, offset: int) -> bytes:
    """``person``'s command of ``request_id`` taken at ``offset`` of KEY_TP (committed as
    taken) and queued, not called yet (issued now)."""
    [issued] = person.send(received(request_id)).commands
    assert isinstance(issued, GenerateText)
    now_ms = SystemClock().now_ms()
    value = encode(issued.model_copy(update={"openai_key_id": KEY_ID, "issued_at_ms": now_ms}))
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


async def test_a_hand_back_kafka_may_hold_is_sent_again_and_told_lost_by_no_mark(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kafka gave up on a command handed back at a revoke, yet the partition's leader had
    written it before it stepped down: the commit after the hand-back named it lost, the next
    owner told the ledger, and the ledger, its attempt current, re-issued it while the copy
    Kafka held was called too: one OpenAI call made twice. No mark names it now: it is sent
    again (the loop's next turn) until Kafka acknowledges it, and whoever owns the partition
    calls the first copy it takes, once."""
    g = watched(give_up=1)
    person = Ledger()
    a = await queued(g, person, "a", 1)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    assert g.generate.sent == [(KEY_ID.encode(), a)], "written, its delivery failed"
    # the worker dies now: the next owner reads the last commit, and the copy Kafka holds
    told = await next_owner_told(last_commit(g.consumer), (1, a), (2, a))
    for lost in told:  # its ledger: attempt 1 is the copy Kafka holds, called there
        assert person.send(lost).commands == [], "re-issued while its copy is called"
    assert told == [] and lost_in(last_commit(g.consumer)[1]) == []
    said = [r.getMessage() for r in caplog.records if "request_id=a" in r.getMessage()]
    assert said == ["generator could not hand back request_id=a (NotLeaderForPartitionError: "
                    "[Error 6] NotLeaderForPartitionError): Kafka may hold it: sent again "
                    "until it takes it, not told lost"], said  # fmt: skip

    await g.executor.handover.send_held()  # the loop's next turn: acknowledged
    assert g.generate.sent == [(KEY_ID.encode(), a)] * 2 and g.executor.handover.held == 0
    await g.executor.handover.send_held()  # nothing more
    assert len(g.generate.sent) == 2
    owner = generator(KEY_TP)  # the partition's next owner takes both copies
    await take(owner, KEY_TP, (2, a), (3, a), key=KEY_ID.encode())
    assert owner.work.called == ["a"], "called once"


async def test_a_hand_back_kafka_may_hold_is_sent_again_only_until_its_wait_is_past(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hand-back Kafka never acknowledges is sent again at each turn, until it has waited
    past the most a command waits for its target: its deadline is near, which re-issues it. It
    is sent no more, and an INFO line says so."""
    g = watched(give_up=3)
    a = await queued(g, Ledger(), "a", 1)
    await g.executor.handover.hand_back(g.consumer, {KEY_TP})
    handover = g.executor.handover
    await handover.send_held()  # a loop's turn: sent, its answer read at the next
    assert len(g.generate.sent) == 2 and handover.held == 1
    await asyncio.sleep(0)  # Kafka gives up on it again
    [job] = [job for job, _ in handover._sending]
    job.issued_s -= g.scheduler.max_wait_s  # (waited that long more)
    caplog.set_level(logging.INFO, logger="streams.agents.executors")
    await handover.send_held()
    assert g.generate.sent == [(KEY_ID.encode(), a)] * 2 and handover.held == 0
    said = [r.getMessage() for r in caplog.records if "no longer sent" in r.msg]
    assert said == [f"generator: request_id=a attempt=1, handed back and not acknowledged, has "
                    f"waited past {g.scheduler.max_wait_s}s for its target: no longer sent "
                    "again; re-issued at its deadline"]  # fmt: skip


async def test_a_stop_leaves_a_hand_back_kafka_may_hold_to_its_deadline_not_told_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop's hand-back written and given up on, and again once more: the stop's last
    commit does not name it (named, the next run told the ledger it was lost while the copy
    Kafka held was called too); a WARNING counts it; its deadline re-issues it if Kafka holds
    none. One the producer refused outright (never written) is still named: told lost."""
    g = watched(give_up=2)
    person = Ledger()
    a = await queued(g, person, "a", 1)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await g.executor.stop(0.0)
    told = await next_owner_told(last_commit(g.consumer), (1, a), (2, a), (3, a))
    assert told == [] and lost_in(last_commit(g.consumer)[1]) == []
    assert g.generate.sent == [(KEY_ID.encode(), a)] * 2, "sent again once in the stop"
    said = [r.getMessage() for r in caplog.records if "left to their deadline" in r.msg]
    assert said == ["generator stopping: 1 commands handed back that Kafka did not acknowledge "
                    "(it may hold them) are left to their deadline"]  # fmt: skip

    g = watched(give_up=1)
    b = await queued(g, Ledger(), "b", 1)
    await g.executor.stop(0.0)
    assert g.generate.sent == [(KEY_ID.encode(), b)] * 2 and g.executor.handover.held == 0
    assert lost_in(last_commit(g.consumer)[1]) == []

    g = watched(refuse=True)
    c = await queued(g, Ledger(), "c", 1)
    await g.executor.stop(0.0)
    told = await next_owner_told(last_commit(g.consumer), (1, c))
    assert [(lost.request_id, lost.attempt) for lost in told] == [("c", 1)]


async def test_a_hand_back_the_stopping_producer_never_held_is_told_lost() -> None:
    """A stop that gave up on Kafka fails every later send at once (the producer holds
    nothing more: ``IdempotentProducer.give_up``): such a hand-back was surely not written,
    so the commit after names it, and the next run tells the ledger at once, not at its
    deadline."""

    class GaveUp(Watched):
        async def send(self, *, key: bytes, value: bytes) -> Any:
            assert self.consumer is not None
            self.at_send.append(last_commit(self.consumer))
            refused = asyncio.get_running_loop().create_future()
            refused.set_exception(GivenUp("the worker stopped before Kafka took it"))
            return refused

    generate = GaveUp()
    g = generator(KEY_TP, generate=generate)
    generate.consumer = g.consumer
    a = await queued(g, Ledger(), "a", 1)
    await g.executor.stop(0.0)
    told = await next_owner_told(last_commit(g.consumer), (1, a))
    assert [(lost.request_id, lost.attempt) for lost in told] == [("a", 1)]


class Member(Consumer):
    """A consumer that is a member of its group (a hand-over's mark lists the calls still
    running here with its member id)."""

    def __init__(self, *owned: TopicPartition) -> None:
        super().__init__(*owned)
        self._coordinator = SimpleNamespace(member_id="worker-generator-1")


class Gone(Marked):
    """The partition's next owner's consumer: the last commit, and a group its previous
    owner's run has left (a crash, and its session ended; or a stop)."""

    coordinator_id = 1

    def __init__(self, committed: dict[TopicPartition, tuple[int, Mark]]) -> None:
        super().__init__(committed)
        self._client = self

    async def send(self, node: int, request: Any) -> Any:
        return SimpleNamespace(groups=[(0, "g", "Stable", "consumer", "roundrobin", [])])


async def told_once_gone(commit: tuple[int, str], *values: tuple[int, bytes]) -> list[Any]:
    """What the partition's next owner tells the ledger was lost, reading ``commit`` and the
    partition's records ``values``, once the run that handed it over left the group: what the
    mark names lost, and what it lists as running in that run."""
    return await next_owner_told(commit, *values, consumer=Gone)


async def held_to_forward(generate: Watched) -> tuple[Generator, Ledger, bytes, bytes]:
    """A generator owning KEY_TP (a member of its group) took commands ``first`` and ``a``
    of one key in one batch and called ``first``, whose answer named the key's organisation,
    paced elsewhere: ``a``, queued, is taken out of its queue and held to forward (its loop's
    next turn would send it)."""
    g = generator(KEY_TP, generate=generate)
    g.consumer = g.executor.consumer = generate.consumer = Member(KEY_TP)
    person = Ledger()
    issued = {"openai_key_id": KEY_ID, "issued_at_ms": SystemClock().now_ms()}  # (as queued)
    first, a = (
        encode(command.model_copy(update=issued))
        for request_id in ("first", "a")
        for command in person.send(received(request_id)).commands
    )
    batch = [SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=offset,
                             key=KEY_ID.encode(), value=value)
             for offset, value in ((0, first), (1, a))]  # fmt: skip
    await g.executor._take_batch(g.consumer, {KEY_TP: batch})  # type: ignore[arg-type]
    await calls(g)
    assert g.work.called == ["first"] and g.executor.forwarding.held == 1, "a: held to forward"
    assert generate.sent == []
    return g, person, first, a


async def test_a_forward_held_at_a_revoke_is_sent_after_a_mark_listing_it_nowhere() -> None:
    """An answer named the key's organisation while a command of it waited in its queue: it
    is held to forward, and a rebalance revokes its partition before the loop sends it. The
    hand-over's mark listed it as running in this run, and the loop forwarded it after: once
    this run left the group (a crash, or a stop before the organisation's executor reported
    it), the partition's next owner told the ledger it was lost, and the ledger, its attempt
    current, re-issued it while the organisation's executor called it: one call made twice.
    The hand-over now sends it, once a mark that lists it neither lost nor running is
    committed."""
    g, person, first, a = await held_to_forward(Watched())
    await OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    await g.executor.forwarding.send()  # the loop's next turn
    assert g.generate.sent == [(ORG.encode(), a)] and g.executor.forwarding.held == 0
    [at_send] = g.generate.at_send  # what a crash as Kafka takes it leaves the next owner
    told = await told_once_gone(at_send, (0, first), (1, a))
    for lost in told:  # its ledger: attempt 1 is called at the organisation's executor
        assert person.send(lost).commands == [], "re-issued while called there"
    assert told == []
    handed = Mark.parse(last_commit(g.consumer)[1])
    assert handed is not None and handed.running == () and lost_in(at_send[1]) == []
    await calls(g)
    assert g.work.called == ["first"], "not called here"


async def test_a_forward_a_hand_over_could_not_send_is_named_lost_or_sent_again() -> None:
    """A hand-over's held forward the producer refused (never written) is named lost by the
    commit after, as a hand-back is: the next owner tells the ledger, called once. One whose
    delivery failed (Kafka may hold it) is named by no mark and forwarded again by the loop,
    never called here."""
    for refuse, give_up in ((True, 0), (False, 1)):
        generate = Watched(refuse=refuse, give_up=give_up)
        g, _, first, a = await held_to_forward(generate)
        await OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
        told = await told_once_gone(last_commit(g.consumer), (0, first), (1, a))
        if refuse:
            assert generate.sent == [] and g.executor.forwarding.held == 0
            assert [(lost.request_id, lost.attempt) for lost in told] == [("a", 1)]
            continue
        assert told == [] and generate.sent == [(ORG.encode(), a)]
        assert g.executor.forwarding.held == 1
        await g.executor.forwarding.send()  # the loop's next turn: acknowledged
        assert generate.sent == [(ORG.encode(), a)] * 2 and g.executor.forwarding.held == 0
        await calls(g)
        assert g.work.called == ["first"], "not called here"


async def test_the_loop_does_not_wait_for_kafkas_answer_to_a_hand_back_sent_again() -> None:
    """Kafka answers a delivery it gives up on after the producer's request timeout (20
    minutes): the executor's loop, waiting for it, would take nothing of any partition
    meanwhile, and its consumer would leave the group past its poll interval. A turn sends
    the held hand-back again and goes on; the next reads the answer."""

    class Unanswered(Watched):
        async def send(self, *, key: bytes, value: bytes) -> Any:
            self.sent.append((key, value))
            self.delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            return self.delivery

    g = watched(give_up=1)
    a = await queued(g, Ledger(), "a", 1)
    await g.executor.handover.hand_back(g.consumer, {KEY_TP})
    assert g.executor.handover.held == 1
    unanswered = Unanswered()
    topics = g.executor.handover._topics
    g.executor.handover._topics = dataclasses.replace(topics, generate=unanswered)
    await g.executor.handover.send_held()  # (waiting, it hung: pytest's timeout)
    assert unanswered.sent == [(KEY_ID.encode(), a)] and g.executor.handover.held == 1
    unanswered.delivery.set_result(None)  # acknowledged: read at the next turn
    await g.executor.handover.send_held()
    assert g.executor.handover.held == 0 and len(unanswered.sent) == 1


async def test_a_revoke_waits_for_the_forwarding_send_in_progress() -> None:
    """A rebalance revoked the partition of a held forward while the executor's loop was
    sending it, its commit of the marks not answered yet: the hand-over found nothing held
    (the send had it), and forgot the partition. The group rebalancing, both commits failed,
    so the partition's last commit still named the forward lost; the send, its partition's
    marks forgotten, forwarded it all the same. The partition's next owner told the ledger it
    was lost, re-issued while the organisation's executor called it: one call made twice. The
    hand-over now waits for the send (which, its commit failed, holds the forward again),
    takes the forward, and, its own commit failing too, sends it nowhere: told lost by the
    next owner, called once."""
    g, person, first, a = await held_to_forward(Watched())
    named = last_commit(g.consumer)  # the batch's: first and a taken, not reported
    assert lost_in(named[1]) == [0, 1]
    asked, answer = asyncio.Event(), asyncio.Event()

    async def rebalancing(offsets: Any) -> None:  # every commit fails: the group rebalances
        if not asked.is_set():  # the send's, answered once the revoke came
            asked.set()
            await answer.wait()
        raise CommitFailedError("the group is rebalancing")

    g.consumer.commit = rebalancing  # type: ignore[method-assign]
    sending = asyncio.create_task(g.executor.forwarding.send())  # the loop's turn
    await asked.wait()
    revoking = asyncio.create_task(
        OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    )
    await asyncio.sleep(0)  # (the revoke goes as far as it may before the send's commit fails)
    answer.set()
    await asyncio.gather(sending, revoking)
    await g.executor.forwarding.send()  # the loop's next turn
    assert g.generate.sent == [], "forwarded while its partition's last commit named it lost"
    assert g.executor.forwarding.held == 0 and last_commit(g.consumer) == named
    told = await next_owner_told(named, (0, first), (1, a))
    [lost] = [lost for lost in told if lost.request_id == "a"]
    assert lost.attempt == 1 and person.send(lost).commands != [], "re-issued: called once"
    await calls(g)
    assert g.work.called == ["first"], "not called here"


async def test_a_send_while_a_hand_over_runs_leaves_its_forwards_to_the_next_turn() -> None:
    """A revoke's hand-over holds the forwarding's lock while it runs, and waits for Kafka's
    answers to what it sends on (the producer's request timeout, 20 minutes, in an outage):
    the loop's send, waiting for the lock meanwhile, took nothing and held the executor's
    stop. It now sends nothing while a hand-over runs; the next turn sends the forwards."""
    g, _, _, a = await held_to_forward(Watched())
    forwarding = g.executor.forwarding
    async with forwarding.lock:  # a hand-over runs
        await forwarding.send()  # the loop's turn (waiting, it hung: pytest's timeout)
        assert g.generate.sent == [] and forwarding.held == 1
    await forwarding.send()  # the next turn
    assert g.generate.sent == [(ORG.encode(), a)] and forwarding.held == 0


class Answered(Watched):
    """[generate] whose deliveries Kafka answers only when told (:meth:`answer`)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()  # a delivery waits for Kafka's answer
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, *, key: bytes, value: bytes) -> Any:
        await super().send(key=key, value=value)
        self.deliveries.append(asyncio.get_running_loop().create_future())
        self.asked.set()
        return self.deliveries[-1]

    def answer(self) -> None:
        for delivery in self.deliveries:
            delivery.set_result(None)


class Gated(Decoding):
    """The dead letters, each record's decoding waiting until told (``go``): a poison record's
    letter waits for Kafka's acknowledgement."""

    def __init__(self) -> None:
        self.decoding, self.go = asyncio.Event(), asyncio.Event()

    async def decoded(self, decoder: Any, *, value: bytes | None, **_: Any) -> Any:
        self.decoding.set()
        await self.go.wait()
        return decoder(value)


def running(g: Generator) -> tuple[asyncio.Event, asyncio.Event]:
    """``g``'s calls start (the first event) and end only when told (the second)."""
    started, end = asyncio.Event(), asyncio.Event()
    job_of = g.work.job

    def job(command: GenerateText, **kwargs: Any) -> Any:
        job = job_of(command, **kwargs)

        async def call() -> tuple[Timed[Completion], Limits]:
            g.work.called.append(command.request_id)
            started.set()
            await end.wait()
            return Timed(Completion("A verse.", "gpt-4o-mini", 3, 3), 5), Limits()

        job.call = call
        return job

    g.work.job = job  # type: ignore[method-assign]
    return started, end


def records(*values: tuple[int, bytes]) -> dict[TopicPartition, list[Any]]:
    """A batch of KEY_TP, keyed as the ledger keys its commands."""
    return {KEY_TP: [SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=o,
                                     key=KEY_ID.encode(), value=v) for o, v in values]}  # fmt: skip


async def test_a_batch_the_loop_takes_while_a_hand_over_runs_leaves_its_mark_as_it_is() -> None:
    """The executor's loop was decoding a batch (a poison record's letter waiting for Kafka)
    as a rebalance revoked its partition: the hand-over committed its mark, listing the call
    still running here as running elsewhere, and waited for Kafka to take back the queued
    command; the loop then committed the batch over it, with a mark listing that call as this
    run's, not reported. The partition's next owner told the ledger it was lost, re-issued
    while it ran here (one call made twice), and so was the batch's command, queued here
    after the hand-over took the queues back (and called here). The loop now leaves a batch
    fetched before a revoke to the partition's next owner, whether the hand-over still runs
    (its deliveries not answered) or is over."""
    for answered_first in (False, True):
        generate = Answered()
        g = generator(KEY_TP, generate=generate)
        g.consumer = g.executor.consumer = generate.consumer = Member(KEY_TP)
        started, end = running(g)
        a, b, c = (command(request_id) for request_id in "abc")
        await g.executor._take_batch(g.consumer, records((0, a), (1, b)))  # type: ignore[arg-type]
        g.scheduler.dispatch()
        await started.wait()
        assert g.work.called == ["a"] and g.scheduler.queued == 1, "a runs, b is queued"
        letters = g.executor._dead_letters = Gated()  # type: ignore[assignment]
        loop_turn = asyncio.create_task(g.executor._take_batch(g.consumer, records((2, c))))  # type: ignore[arg-type]
        await letters.decoding.wait()
        revoking = asyncio.create_task(
            OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
        )
        await generate.asked.wait()  # b handed back after the hand-over's mark
        handed = last_commit(g.consumer)
        if answered_first:
            generate.answer()
            await revoking
        letters.go.set()
        await loop_turn
        if not answered_first:
            generate.answer()
            await revoking
        assert generate.sent == [(KEY_ID.encode(), b)]
        assert last_commit(g.consumer) == handed, "the loop committed over the hand-over's mark"
        # the worker is still in the group (a runs): its next owner reads the last commit
        told = await next_owner_told(last_commit(g.consumer), (0, a), (1, b), (2, c), (3, b))
        assert [lost.request_id for lost in told] == [], "told lost while it ran here"
        end.set()
        await calls(g)
        assert g.work.called == ["a"], "c: called here and by the partition's next owner"


class Waited(asyncio.Lock):
    """The forwarding's lock, setting ``told`` when one waits for it."""

    def __init__(self, told: asyncio.Event) -> None:
        super().__init__()
        self.told = told

    async def acquire(self) -> bool:
        if self.locked():
            self.told.set()
        return await super().acquire()


async def test_a_revoke_waits_for_the_batch_the_loop_is_committing() -> None:
    """A rebalance revoked a partition while the executor's loop committed a batch of it: the
    hand-over took back the queues before the batch's command was queued, committed its mark
    (the offset before the batch), and forgot the partition; the loop's commit landed after,
    naming the command as taken and not reported, and queued it here. The partition's next
    owner told the ledger it was lost, re-issued while it was called here. The hand-over now
    waits for the batch being committed to be queued, and hands it back."""
    g = watched()
    c = command("c")
    asked, answer = asyncio.Event(), asyncio.Event()
    commit = g.consumer.commit

    async def committing(offsets: Any) -> None:
        if not asked.is_set():  # the loop's: answered once the revoke waits, or is over
            asked.set()
            await answer.wait()
        await commit(offsets)

    g.consumer.commit = committing  # type: ignore[method-assign]
    g.executor.forwarding.lock = Waited(answer)
    loop_turn = asyncio.create_task(g.executor._take_batch(g.consumer, records((0, c))))  # type: ignore[arg-type]
    await asked.wait()
    revoking = asyncio.create_task(
        OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    )
    revoking.add_done_callback(lambda _: answer.set())
    await asyncio.gather(loop_turn, revoking)
    assert g.generate.sent == [(KEY_ID.encode(), c)], "queued after the hand-over took it back"
    told = await next_owner_told(last_commit(g.consumer), (0, c), (1, c))
    assert [lost.request_id for lost in told] == [], "told lost while queued here"
    await calls(g)
    assert g.work.called == [], "called here and by the partition's next owner"


async def test_a_hand_over_leaves_kafkas_answers_it_waited_for_too_long_to_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revoke's hand-over waited for Kafka's answer to each command it handed back and each
    forward it sent on, inside the consumer's rebalance listener: in an outage, up to the
    producer's request timeout (20 minutes), the rebalance held as long. It now waits
    ``HAND_OVER_WAIT_SECONDS`` at most (here none), and leaves the answers to the loop's next
    turns: acknowledged, done; failed, sent again (Kafka may hold it), named lost by no mark,
    never called here."""
    monkeypatch.setattr(handover_module, "HAND_OVER_WAIT_SECONDS", 0.0)
    for forward, failed in ((False, False), (False, True), (True, False), (True, True)):
        generate = Answered()
        if forward:  # a forward held (``a``), after ``first`` called
            g, _, first, a = await held_to_forward(generate)
            values, sent = [(0, first), (1, a)], (ORG.encode(), a)
        else:  # a command queued (``a``)
            g = generator(KEY_TP, generate=generate)
            g.consumer = g.executor.consumer = generate.consumer = Member(KEY_TP)
            a = await queued(g, Ledger(), "a", 1)
            values, sent = [(1, a)], (KEY_ID.encode(), a)
        handover, forwarding = g.executor.handover, g.executor.forwarding
        await OnRebalance(handover, g.consumer).on_partitions_revoked({KEY_TP})
        assert generate.sent == [sent] and handover.held + forwarding.held == 1, "unanswered"
        handed = last_commit(g.consumer)
        told = await told_once_gone(handed, *values)
        assert told == [], "told lost while Kafka may hold it"
        [delivery] = generate.deliveries
        if failed:
            delivery.set_exception(NotLeaderForPartitionError())
        else:
            delivery.set_result(None)
        await handover.send_held()  # the loop's next turn
        await forwarding.send()
        assert generate.sent == [sent] * (2 if failed else 1), "sent again if Kafka failed it"
        assert handover.held + forwarding.held == (1 if failed else 0)
        assert last_commit(g.consumer) == handed, "named by no mark"
        await calls(g)
        assert g.work.called == (["first"] if forward else []), "called here"


async def test_the_loop_takes_nothing_while_a_hand_over_runs() -> None:
    """A batch the loop takes while a revoke's hand-over runs (it holds the forwarding's lock)
    is neither committed nor queued, and the loop does not wait for the hand-over (which waits
    for Kafka's answers): the partitions' next owner reads it from the hand-over's commit."""
    g = watched()
    await queued(g, Ledger(), "a", 1)
    commits = len(g.consumer.commits)
    async with g.executor.forwarding.lock:  # a hand-over runs
        await g.executor._take_batch(g.consumer, records((2, command("c"))))  # type: ignore[arg-type]
    assert len(g.consumer.commits) == commits and g.scheduler.queued == 1, "c taken"


async def test_a_stop_and_a_revoke_hand_each_queued_command_back_once() -> None:
    """A rebalance revoked a partition while a stop handed its queued commands back (here as
    it told the ledger of the call its drain cut short): the hand-over took back nothing (the
    stop had the queued command), committed a mark listing it as still running in this run,
    and forgot the partition; the stop then handed it back, named by no commit of its own.
    Once the run left the group, the partition's next owner told the ledger it was lost, and
    the ledger re-issued it while the copy handed back was called too. The stop's hand-back
    now holds the forwarding's lock, as a revoke's hand-over does: the hand-over runs after
    it, and the command is handed back once, told lost by no one."""
    g = generator(KEY_TP)
    g.consumer = g.executor.consumer = Member(KEY_TP)
    started, _ = running(g)
    x, a = command("x"), command("a")
    await g.executor._take_batch(g.consumer, records((0, x), (1, a)))  # type: ignore[arg-type]
    g.scheduler.dispatch()
    await started.wait()
    assert g.work.called == ["x"] and g.scheduler.queued == 1, "x runs, a is queued"
    telling, told = asyncio.Event(), asyncio.Event()
    send = g.requests.send

    async def gated(*, key: bytes, value: bytes) -> Any:  # the stop tells the ledger of x
        telling.set()
        await told.wait()
        return await send(key=key, value=value)

    g.requests.send = gated  # type: ignore[method-assign]
    waited = asyncio.Event()
    g.executor.forwarding.lock = Waited(waited)
    stopping = asyncio.create_task(g.executor.stop(0.0))  # x cut short, a handed back
    await telling.wait()
    revoking = asyncio.create_task(
        OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    )
    waiting = asyncio.create_task(waited.wait())
    await asyncio.wait({revoking, waiting}, return_when=asyncio.FIRST_COMPLETED)
    told.set()
    await asyncio.gather(stopping, revoking)
    waiting.cancel()
    assert g.generate.sent == [(KEY_ID.encode(), a)], "handed back once"
    lost = await told_once_gone(last_commit(g.consumer), (0, x), (1, a), (2, a))
    assert [lost.request_id for lost in lost] == [], "told lost while its copy is called"
    assert [lost.request_id for lost in (decode_requests(v) for _, v in g.requests.sent)] == [
        "x"
    ], "the call cut short, told lost by the stop"


class Idle(Member):
    """An executor's consumer as its loop runs it: started, and fetching nothing until the
    run ends (``fetching`` set once it fetches)."""

    def __init__(self, *owned: TopicPartition) -> None:
        super().__init__(*owned)
        self.fetching = asyncio.Event()

    def subscribe(self, topics: Any, listener: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        self.fetching.set()
        await asyncio.Event().wait()
        return {}

    async def stop(self) -> None:
        pass


async def test_a_delivery_unanswered_when_the_run_ends_is_read_when_kafka_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A forward a stop left to Kafka (unanswered after its wait), and a hand-back a revoke
    left to the loop's next turns when the run ended first (its loop's end, a crash; a stop
    cut short): nobody read their delivery any more. One that failed after (the producer's
    stop waiting for Kafka, failing it) was said only by asyncio's ERROR "Future exception
    was never retrieved" once collected, with nothing of the command. Each is now read as
    Kafka answers it: a WARNING names the command and what becomes of it."""
    monkeypatch.setattr(executors_module, "STOP_WAIT_SECONDS", 0.0)
    monkeypatch.setattr(handover_module, "HAND_OVER_WAIT_SECONDS", 0.0)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")

    generate = Answered()  # a forward held, sent by the stop and never answered there
    g, *_ = await held_to_forward(generate)
    await g.executor.stop(0.0)
    assert [key for key, _ in generate.sent] == [ORG.encode()], "forwarded, unanswered"
    [forward] = generate.deliveries

    generate = Answered()  # a command handed back at a revoke, unanswered as the run ends
    h = generator(KEY_TP, generate=generate)
    idle = h.consumer = h.executor.consumer = generate.consumer = Idle(KEY_TP)
    await queued(h, Ledger(), "b", 1)
    await OnRebalance(h.executor.handover, idle).on_partitions_revoked({KEY_TP})
    assert h.executor.handover.held == 1, "unanswered: read at the loop's next turns"
    monkeypatch.setattr(executors_module, "group_consumer", lambda *_, **__: idle)
    run = asyncio.create_task(h.executor.run())
    await idle.fetching.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    [hand_back] = generate.deliveries

    caplog.clear()
    for delivery in (forward, hand_back):  # the producer's stop: Kafka gave up on them
        delivery.set_exception(NotLeaderForPartitionError())
    for _ in range(2):
        await asyncio.sleep(0)  # (the deliveries' callbacks)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"generator could not {what} request_id={request_id} (NotLeaderForPartitionError: "
        "[Error 6] NotLeaderForPartitionError), answered after its run ended: Kafka may hold "
        "it; if it does not, it is re-issued at its deadline"
        for what, request_id in (("forward", "a"), ("hand back", "b"))
    ], said
    del g, h, generate, forward, hand_back, delivery  # (the consumer holds none of them)
    gc.collect()
    loop.set_exception_handler(None)
    assert [c["message"] for c in unretrieved] == [], "never read"


async def test_a_hand_over_cut_short_leaves_its_deliveries_to_the_runs_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoke's hand-over cancelled while it waited for Kafka's answers to what it handed
    back (a stop cut short by the executors' process, the worker's tasks cancelled): its
    deliveries were in no list, never read. They are now the run's, read when Kafka answers."""
    generate = Answered()
    g = generator(KEY_TP, generate=generate)
    g.consumer = g.executor.consumer = generate.consumer = Member(KEY_TP)
    await queued(g, Ledger(), "a", 1)
    revoking = asyncio.create_task(
        OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
    )
    await generate.asked.wait()  # handed back, waiting for Kafka's answer
    revoking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await revoking
    assert g.executor.handover.held == 1, "the run's to read"
    g.executor._leave()  # the run ends
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    [delivery] = generate.deliveries
    delivery.set_exception(NotLeaderForPartitionError())
    await asyncio.sleep(0)  # (the delivery's callback)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "generator could not hand back request_id=a (NotLeaderForPartitionError: "
        "[Error 6] NotLeaderForPartitionError), answered after its run ended: "
        "Kafka may hold it; if it does not, it is re-issued at its deadline"
    ], said


async def test_a_hand_over_ending_after_the_run_leaves_its_deliveries_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A revoke's hand-over that ends after the run (it waited for the forwarding's lock
    while the stop handed back, and then for Kafka): what it left unanswered to the loop's
    next turns, a hand-back and a forward, is read when Kafka answers: no turn comes."""
    monkeypatch.setattr(handover_module, "HAND_OVER_WAIT_SECONDS", 0.0)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    for forward in (False, True):
        generate = Answered()
        if forward:  # a forward held (``a``), after ``first`` called
            g, *_ = await held_to_forward(generate)
        else:  # a command queued (``a``)
            g = generator(KEY_TP, generate=generate)
            g.consumer = g.executor.consumer = generate.consumer = Member(KEY_TP)
            await queued(g, Ledger(), "a", 1)
        g.executor._leave()  # the run ends
        await OnRebalance(g.executor.handover, g.consumer).on_partitions_revoked({KEY_TP})
        [delivery] = generate.deliveries
        caplog.clear()
        delivery.set_exception(NotLeaderForPartitionError())
        await asyncio.sleep(0)  # (the delivery's callback)
        what = "forward" if forward else "hand back"
        assert [r.getMessage() for r in caplog.records] == [
            f"generator could not {what} request_id=a (NotLeaderForPartitionError: [Error 6] "
            "NotLeaderForPartitionError), answered after its run ended: Kafka may hold it; if "
            "it does not, it is re-issued at its deadline"
        ], what

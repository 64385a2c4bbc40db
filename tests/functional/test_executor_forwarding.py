"""A generator forwards a command to its OpenAI organisation's own partition of [generate] when
another executor owns it (``streams.agents.forwarding``), so one executor paces each
organisation however many workers run: in-process, a real scheduler, the topics and the
consumer as fakes that record what the executor sends and commits."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError, NotLeaderForPartitionError

from models.events import GenerateText
from streams.agents.executors import Executor, ExecutorConfig
from streams.agents.forwarding import destination, organization_partition
from streams.agents.marks import Mark
from streams.agents.work import Generate, Report, Timed
from streams.clients.openai_chat import Completion
from streams.codecs import decode_requests, encode
from streams.runtime import SystemClock, Topics, now_ms
from streams.upstream.limits import Limits
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Job, Scheduler
from tests.unit.domain_builders import Ledger, received
from tests.unit.test_executor_marks import Marked, Requests
from tests.unit.test_executor_marks import generator as marks_generator

ORG = "org-agency"
KEY_ID = "key-fp"  # the OpenAI key's fingerprint: the ledger's record key of its commands
PARTITIONS = range(4)
KEY_TP = TopicPartition("generate", organization_partition(KEY_ID, PARTITIONS))
ORG_TP = TopicPartition("generate", organization_partition(ORG, PARTITIONS))
assert KEY_TP != ORG_TP  # (the test's names are chosen so)


@pytest.mark.parametrize(
    ("case", "keyed_by_its_key", "organization", "partition", "owned", "forwarded"),
    [
        ("organisation known, its partition another's", True, ORG, 1, {1}, True),
        ("its partition this executor's too", True, ORG, 1, {1, ORG_TP.partition}, False),
        ("one executor owning every partition", True, ORG, 1, set(PARTITIONS), False),
        ("already on its organisation's partition", True, ORG, ORG_TP.partition, set(), False),
        ("its organisation unknown", True, None, 1, {1}, False),
        ("forwarded before: keyed by its organisation", False, ORG, 1, {1}, False),
    ],
)
def test_a_command_is_forwarded_only_from_its_keys_partition_to_an_organisation_paced_elsewhere(
    case: str, keyed_by_its_key: bool, organization: str | None, partition: int, owned: set[int],
    forwarded: bool,
) -> None:  # fmt: skip
    to = destination(
        keyed_by_its_key=keyed_by_its_key,
        organization=organization,
        partition=partition,
        partitions=PARTITIONS,
        owned=owned,
    )
    assert to == (ORG_TP.partition if forwarded else None), case


def test_an_organisations_partition_is_the_one_a_producer_writes_its_id_to() -> None:
    from aiokafka.partitioner import murmur2

    assert organization_partition(ORG, PARTITIONS) == (murmur2(ORG.encode()) & 0x7FFFFFFF) % 4


class Topic:
    """A topic as an executor sends to it: every send acknowledged, or refused by the producer
    (``refuse``: its ``send`` raises, nothing written), or written and then given up on
    (``give_up`` times: the broker wrote the record, and its delivery failed all the same)."""

    def __init__(self, *, refuse: bool = False, give_up: int = 0) -> None:
        self.sent: list[tuple[bytes, bytes]] = []  # what Kafka holds
        self.refuse = refuse
        self.give_up = give_up

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        if self.refuse:
            raise KafkaTimeoutError("no room in the producer's buffer")
        done = asyncio.get_running_loop().create_future()
        self.sent.append((key, value))
        if self.give_up:  # (once the producer held it: its delivery fails after the send)
            self.give_up -= 1
            asyncio.get_running_loop().call_soon(done.set_exception, NotLeaderForPartitionError())
        else:
            done.set_result(None)
        return done


class Consumer:
    """An executor's consumer as taking a batch uses it: the partitions it owns now, the
    topic's four, and what it committed."""

    def __init__(self, *owned: TopicPartition) -> None:
        self.owned = set(owned)
        self.commits: list[Any] = []

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    async def commit(self, offsets: Any) -> None:
        self.commits.append(offsets)


class Answering(Generate):
    """The generator's work, its calls answered by an OpenAI that names the key's
    organisation (``openai-organization``) and recorded."""

    def __init__(self) -> None:
        super().__init__(chat=None, secrets=None)  # type: ignore[arg-type]
        self.called: list[str] = []

    def job(
        self, command: GenerateText, *, issued_s: float, origin: Any, report: Report
    ) -> Job[Any]:
        job = super().job(command, issued_s=issued_s, origin=origin, report=report)

        async def call() -> tuple[Timed[Completion], Limits]:
            self.called.append(command.request_id)
            return Timed(Completion("A verse.", "gpt-4o-mini", 3, 3), 5), Limits(organization=ORG)

        job.call = call
        return job


class Decoding:
    """The dead letters as an executor's take uses them: every value here decodes."""

    async def decoded(self, decoder: Any, *, value: bytes | None, **_: Any) -> Any:
        return decoder(value)


class Generator(SimpleNamespace):
    executor: Executor
    scheduler: Scheduler
    work: Answering
    generate: Topic
    requests: Topic
    consumer: Consumer


def generator(*owned: TopicPartition, generate: Topic | None = None) -> Generator:
    scheduler = Scheduler(
        "generator",
        max_in_flight=1,
        max_wait_s=600.0,
        refusal_s=60.0,
        pacer_config=PacerConfig(initial_window=16, burst_s=0.0),
    )
    work, requests, generate = Answering(), Topic(), generate or Topic()
    topics = Topics(requests=requests, generate=generate, completions=None, lifecycle=None,
                    deadletter=None)  # fmt: skip
    config = ExecutorConfig("generator", "generate", "g", "worker-generator", {})
    executor = Executor(config, scheduler, work, topics=topics, dead_letters=Decoding(),
                        clock=SystemClock())  # fmt: skip
    consumer = Consumer(*owned)
    executor.consumer = consumer  # type: ignore[assignment]
    return Generator(executor=executor, scheduler=scheduler, work=work, generate=generate,
                     requests=requests, consumer=consumer)  # fmt: skip


def command(request_id: str) -> bytes:
    """A GenerateText command as the ledger issues it, with its key's fingerprint, issued now
    (the executor's clock: a command issued at the builders' T0 has waited past any maximum,
    and is told so, not called)."""
    [generate] = Ledger().send(received(request_id)).commands
    assert isinstance(generate, GenerateText)
    update = {"openai_key_id": KEY_ID, "issued_at_ms": SystemClock().now_ms()}
    return encode(generate.model_copy(update=update))


async def take(g: Generator, tp: TopicPartition, *values: tuple[int, bytes], key: bytes) -> None:
    """A batch of ``tp`` under the record ``key`` taken (committed, then queued or forwarded),
    as the executor's loop does, and its calls made."""
    batch = {
        tp: [
            SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o, key=key, value=v)
            for o, v in values
        ]
    }
    await g.executor._take_batch(g.consumer, batch)  # type: ignore[arg-type]
    await calls(g)
    await g.executor.forwarding.send()  # the loop's, after each batch


async def calls(g: Generator) -> None:
    """Every call the scheduler may start now made, and its result reported."""
    for _ in range(10):
        g.scheduler.dispatch()
        for _ in range(20):
            await asyncio.sleep(0)


async def learned(g: Generator) -> None:
    """The executor called a command of the key, and the answer named its organisation."""
    await take(g, KEY_TP, (0, command("first")), key=KEY_ID.encode())
    assert g.work.called == ["first"] and g.scheduler.organization(f"openai:{KEY_ID}") == ORG


def reported(g: Generator) -> list[str]:
    return [decode_requests(value).request_id for _, value in g.requests.sent]


async def test_a_command_of_an_organisation_another_executor_paces_is_forwarded_there() -> None:
    """Two sites' keys of one organisation in partitions of two workers: each worker paced
    the organisation at its whole limit, together twice it. The executor that knows the
    key's organisation and does not own its partition forwards the key's commands there,
    keyed by the organisation, and calls none of them; none is its to tell lost. A copy of
    one in the key's partition is not called nor forwarded again; the forwarded record
    itself, if this executor is given the organisation's partition, is called."""
    g = generator(KEY_TP)
    await learned(g)
    a, b = command("a"), command("b")
    await take(g, KEY_TP, (1, a), (2, b), key=KEY_ID.encode())
    assert g.generate.sent == [(ORG.encode(), a), (ORG.encode(), b)]
    assert g.work.called == ["first"] and g.scheduler.queued == 0
    assert g.executor._unreported.ranges(KEY_TP) == ()  # handed on: nothing to tell lost
    assert g.executor.commits.marks({KEY_TP: 3}, {})[KEY_TP][1].oldest == 3

    await take(g, KEY_TP, (3, a), key=KEY_ID.encode())  # the ledger's copy of a
    assert len(g.generate.sent) == 2 and g.work.called == ["first"]

    g.consumer.owned.add(ORG_TP)  # a rebalance gave it the organisation's partition
    await take(g, ORG_TP, (7, a), key=ORG.encode())
    assert g.work.called == ["first", "a"] and reported(g) == ["first", "a"]
    await take(g, ORG_TP, (8, a), key=ORG.encode())  # a copy there: called once
    assert g.work.called == ["first", "a"] and len(g.generate.sent) == 2


async def test_a_command_whose_organisations_partition_this_executor_owns_is_called() -> None:
    """One worker owning every partition forwards nothing; nor does one that owns the
    organisation's partition besides the key's."""
    for owned in ((KEY_TP, ORG_TP), tuple(TopicPartition("generate", p) for p in PARTITIONS)):
        g = generator(*owned)
        await learned(g)
        await take(g, KEY_TP, (1, command("a")), key=KEY_ID.encode())
        assert g.generate.sent == [] and g.work.called == ["first", "a"]


async def test_a_command_on_its_organisations_partition_is_called_there() -> None:
    """The executor owning the organisation's partition calls what was forwarded to it (its
    key's organisation unknown to it yet, or known), and whatever else lands there."""
    g = generator(ORG_TP)
    await take(g, ORG_TP, (1, command("a")), key=ORG.encode())  # organisation unknown here
    assert g.scheduler.organization(f"openai:{KEY_ID}") == ORG  # learned from its answer
    await take(g, ORG_TP, (2, command("b")), key=ORG.encode())
    await take(g, ORG_TP, (3, command("c")), key=KEY_ID.encode())
    assert g.generate.sent == [] and g.work.called == ["a", "b", "c"]


async def test_a_forwarded_command_is_paced_with_its_organisation_from_its_first_call() -> None:
    """A command forwarded here is keyed by its key's organisation: its key is paced with the
    organisation's other keys before any answer of its own (not its first call on a pacer of
    its own), and nothing of it goes back; a command keyed by its key names no organisation."""
    g = generator(ORG_TP)
    family = f"openai:{KEY_ID}"
    record = SimpleNamespace(topic=ORG_TP.topic, partition=ORG_TP.partition, offset=1,
                             key=ORG.encode(), value=command("a"))  # fmt: skip
    await g.executor._take_batch(g.consumer, {ORG_TP: [record]})  # type: ignore[arg-type]
    assert g.scheduler.organization(family) == ORG  # before its call's answer
    [target] = [t for t in g.scheduler.targets.values() if t.family == family]
    assert (target.pool or "").startswith(f"{ORG} ")  # the organisation's pacer, for its model
    await calls(g)
    assert g.generate.sent == [] and g.work.called == ["a"]

    plain = generator(ORG_TP)
    record.key, record.value = KEY_ID.encode(), command("b")
    await plain.executor._take_batch(plain.consumer, {ORG_TP: [record]})  # type: ignore[arg-type]
    assert plain.scheduler.organization(family) is None  # (until its answer)


async def test_a_command_of_an_organisation_not_known_yet_is_called_where_it_is_taken() -> None:
    g = generator(KEY_TP)
    await take(g, KEY_TP, (1, command("a")), key=KEY_ID.encode())
    assert g.generate.sent == [] and g.work.called == ["a"]


async def test_commands_queued_before_an_answer_named_the_organisation_are_forwarded() -> None:
    """A campaign's blast is taken at once, before any answer: its commands wait in the key's
    queue. Once the first answer names the key's organisation, paced by another executor,
    those still queued are forwarded there too, not called here."""
    g = generator(KEY_TP)
    blast = [command(f"r{i}") for i in range(5)]
    batch = [SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=offset,
                             key=KEY_ID.encode(), value=value)
             for offset, value in enumerate(blast)]  # fmt: skip
    await g.executor._take_batch(g.consumer, {KEY_TP: batch})  # type: ignore[arg-type]
    await calls(g)  # a new key is asked once first; its answer names the organisation
    assert g.work.called == ["r0"] and reported(g) == ["r0"]  # none called after it
    await g.executor.forwarding.send()  # the loop's, after each batch
    assert g.generate.sent == [(ORG.encode(), value) for value in blast[1:]]
    assert g.scheduler.queued == 0 and g.executor._unreported.ranges(KEY_TP) == ()


class Watched(Topic):
    """[generate] as an executor forwards to it, noting for each forward what the last commit
    of the key's partition named lost when it was sent (``consumer``'s)."""

    def __init__(self) -> None:
        super().__init__()
        self.consumer: Consumer | None = None
        self.named: list[list[int]] = []  # at each send, the offsets the last mark named lost

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        assert self.consumer is not None
        self.named.append(lost_in(self.consumer.commits[-1][KEY_TP][1]))
        return await super().send(key=key, value=value)


def lost_in(metadata: str, offsets: range = range(8)) -> list[int]:
    """The offsets a commit's mark names lost (of the first few)."""
    mark = Mark.parse(metadata)
    assert mark is not None
    return [offset for offset in offsets if mark.lost(offset)]


async def next_owner_told(
    commit: tuple[int, str], *values: tuple[int, bytes], consumer: type[Marked] = Marked
) -> list[Any]:
    """What the partition's next owner tells the ledger was lost, reading ``commit`` (the last
    one a crash left) and the partition's records ``values``; with a ``consumer`` whose group
    the previous run has left, what the mark lists as running in that run too."""
    at, metadata = commit
    mark = Mark.parse(metadata)
    assert mark is not None
    requests = Requests()
    owner = marks_generator(requests)
    owner.consumer = consumer({KEY_TP: (at, mark)})  # type: ignore[assignment]
    await owner.handover.recover(owner.consumer, {KEY_TP})
    if consumer is not Marked:
        await owner.lost.check_elsewhere(owner.consumer, owner.taken)  # type: ignore[arg-type]
    batch = {KEY_TP: [SimpleNamespace(offset=o, value=v) for o, v in values]}
    await owner.lost.past_lost(batch)
    return requests.sent


async def test_a_forward_kafka_acknowledged_is_told_lost_by_no_mark_a_crash_leaves() -> None:
    """A forward counted once Kafka acknowledged it, but the mark still naming it was
    committed again only at the executor's next loop (up to half a second): a worker that
    died meanwhile left it to the partition's next owner, who told the ledger it was lost,
    and the ledger, its attempt current, re-issued it while the organisation's executor called
    it: one OpenAI call made twice, billed twice. The marks are now committed without it
    before it is sent: a crash before then names it (told lost: never forwarded, called once
    when re-issued), and none after."""
    generate = Watched()
    g = generator(KEY_TP, generate=generate)
    generate.consumer = g.consumer
    await learned(g)
    person = Ledger()
    [issued] = person.send(received("a")).commands  # its ledger: generating, attempt 1
    a = encode(issued.model_copy(update={"openai_key_id": KEY_ID, "issued_at_ms": now_ms()}))
    record = SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=1,
                             key=KEY_ID.encode(), value=a)  # fmt: skip
    await g.executor._take_batch(g.consumer, {KEY_TP: [record]})  # type: ignore[arg-type]
    assert g.generate.sent == [(ORG.encode(), a)], "forwarded, acknowledged"

    # the worker dies now, before its loop's next commit: the partition's next owner
    told = await next_owner_told(g.consumer.commits[-1][KEY_TP], (0, command("first")), (1, a))
    for lost in told:  # its ledger, its attempt 1 called at the organisation's
        assert person.send(lost).commands == [], "re-issued while called there"
    assert told == []
    taken, unmarked = g.consumer.commits[-2:]  # the batch's commit, then the forward's
    assert lost_in(taken[KEY_TP][1]) == [1], "taken: named lost until forwarded"
    assert lost_in(unmarked[KEY_TP][1]) == [] and generate.named == [[]], "sent after it"


async def test_a_forward_waits_for_a_commit_of_the_marks_without_it() -> None:
    """The commit before a forward fails (a rebalance, the coordinator moving): the last mark
    still names it, so it is not sent, and stays this run's to report (a crash tells it lost:
    never forwarded); the next send, its commit passed, forwards it."""
    g = generator(KEY_TP)
    await learned(g)
    a = command("a")
    record = SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=1,
                             key=KEY_ID.encode(), value=a)  # fmt: skip

    async def later() -> None:  # (the loop's send, below)
        return None

    forwarding = g.executor.forwarding
    forwarding.send = later  # type: ignore[method-assign]
    await g.executor._take_batch(g.consumer, {KEY_TP: [record]})  # type: ignore[arg-type]
    del forwarding.send
    commit = g.consumer.commit

    async def refused(offsets: Any) -> None:
        raise CommitFailedError("rebalancing")

    g.consumer.commit = refused  # type: ignore[method-assign]
    await forwarding.send()
    assert g.generate.sent == [] and forwarding.held == 1
    assert g.executor._unreported.ranges(KEY_TP) == ((1, 2),)
    assert lost_in(g.consumer.commits[-1][KEY_TP][1]) == [1]
    g.consumer.commit = commit  # type: ignore[method-assign]
    await forwarding.send()
    assert g.generate.sent == [(ORG.encode(), a)] and forwarding.held == 0
    assert g.executor._unreported.ranges(KEY_TP) == ()
    assert lost_in(g.consumer.commits[-1][KEY_TP][1]) == []
    await calls(g)
    assert g.work.called == ["first"]


async def test_a_forward_the_producer_refuses_is_called_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The producer refused the forward (it never held it: Kafka never wrote it): the command
    is not the other executor's; it is called here, paced as before, and this run's to report
    until then; a WARNING says so."""
    g = generator(KEY_TP, generate=Topic(refuse=True))
    await learned(g)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await take(g, KEY_TP, (1, command("a")), key=KEY_ID.encode())
    assert g.work.called == ["first", "a"] and reported(g) == ["first", "a"]
    assert g.generate.sent == [] and g.executor.forwarding.held == 0
    [said] = [(r.levelname, r.getMessage()) for r in caplog.records if "forward" in r.msg]
    assert said[0] == "WARNING" and said[1].startswith("generator could not forward")
    assert said[1].endswith("): called here"), said


async def test_a_forward_kafka_gave_up_on_is_forwarded_again_and_called_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kafka gave up on the forward, yet its partition's leader had written it before it
    stepped down: the executor there takes it. Called here too, the request was two OpenAI
    calls, both billed. It is forwarded again instead (the loop's next send), this run's to
    report until Kafka acknowledges it, and never called here; the executor owning the
    organisation's partition takes both copies and calls the first."""
    g = generator(KEY_TP, generate=Topic(give_up=1))
    await learned(g)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    a = command("a")
    record = SimpleNamespace(topic=KEY_TP.topic, partition=KEY_TP.partition, offset=1,
                             key=KEY_ID.encode(), value=a)  # fmt: skip
    await g.executor._take_batch(g.consumer, {KEY_TP: [record]})  # type: ignore[arg-type]
    await calls(g)
    assert g.generate.sent == [(ORG.encode(), a)]  # written, and not acknowledged
    assert g.work.called == ["first"] and g.scheduler.queued == 0
    g.executor.forwarding._settle()  # Kafka's answer, read first at the loop's next turn
    assert g.executor._unreported.ranges(KEY_TP) == ((1, 2),)  # still this run's to report
    [said] = [r.getMessage() for r in caplog.records if "forward" in r.msg]
    assert said.endswith("): Kafka may hold it: forwarded again, not called here"), said

    await g.executor.forwarding.send()  # the loop's next: acknowledged
    assert g.generate.sent == [(ORG.encode(), a), (ORG.encode(), a)]
    assert g.executor._unreported.ranges(KEY_TP) == () and g.executor.forwarding.held == 0
    await calls(g)
    assert g.work.called == ["first"] and reported(g) == ["first"]

    there = generator(ORG_TP)  # the executor pacing the organisation
    await take(there, ORG_TP, *enumerate(v for _, v in g.generate.sent), key=ORG.encode())
    assert there.work.called == ["a"] and reported(there) == ["a"]


async def test_a_stop_leaves_a_forward_kafka_may_hold_to_be_told_lost_not_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop while Kafka keeps giving up on a forward: it is sent again once more, Kafka's
    answer waited for after the drain, never called here, and left unreported in the stop's
    last mark (the next run tells the ledger it was lost: nothing accepted is lost); a
    WARNING counts it."""
    g = generator(KEY_TP, generate=Topic(give_up=3))
    await learned(g)
    await take(g, KEY_TP, (1, command("a")), key=KEY_ID.encode())  # (sent twice: given up)
    await asyncio.sleep(0)  # (Kafka gives up on the second copy too)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await g.executor.stop(0.0)
    assert len(g.generate.sent) == 3 and g.work.called == ["first"]  # once more in the stop
    at, mark = g.consumer.commits[-1][KEY_TP]  # the stop's last commit
    assert at == 2 and Mark.parse(mark).oldest == 1, mark  # (a: the next run tells it lost)
    said = [r.getMessage() for r in caplog.records if "to tell lost" in r.msg]
    assert said == ["generator stopping: 1 forwards Kafka did not acknowledge are left to the "
                    "next run to tell lost"]  # fmt: skip


async def test_forwards_are_summarised_in_an_info_line_a_minute_each_a_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With several workers an organisation's keys on another worker's partitions are
    forwarded all day, and each send (most carry a command or two) wrote an INFO line: a
    line per command. The first forwards are said at once, then at most one INFO line a
    minute counts them by organisation and partition (a stop says what is left); each
    forward is a DEBUG line with its request."""
    g = generator(KEY_TP)
    now = [1000.0]
    g.executor.forwarding._clock = lambda: now[0]
    await learned(g)
    caplog.set_level(logging.DEBUG, logger="streams.agents.executors")

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == level and " forwarded " in r.getMessage()]  # fmt: skip

    await take(g, KEY_TP, (1, command("a")), (2, command("b")), key=KEY_ID.encode())
    first = (
        "generator forwarded 2 commands to the executors pacing their organisation with its "
        f"other keys: organization={ORG}'s partition {ORG_TP.partition}: 2"
    )
    for offset, request_id in enumerate("cdef", start=3):  # within the minute: counted
        now[0] += 10
        await take(g, KEY_TP, (offset, command(request_id)), key=KEY_ID.encode())
    assert len(said(logging.INFO)) == 1  # five sends, one line
    assert said(logging.INFO) == [first]
    now[0] += 25  # a minute and 5 s after the first line
    await take(g, KEY_TP, (7, command("g")), key=KEY_ID.encode())
    assert said(logging.INFO) == [
        first,
        "generator forwarded 5 commands in 65 s to the executors pacing their organisation "
        f"with its other keys: organization={ORG}'s partition {ORG_TP.partition}: 5",
    ]
    now[0] += 5
    await take(g, KEY_TP, (8, command("h")), key=KEY_ID.encode())
    await g.executor.stop(0.0)  # what is left untold, said as it stops
    assert said(logging.INFO)[2:] == [
        "generator forwarded 1 commands in 5 s to the executors pacing their organisation "
        f"with its other keys: organization={ORG}'s partition {ORG_TP.partition}: 1"
    ]
    assert [m.split(" attempt=")[0] for m in said(logging.DEBUG)] == [
        f"generator forwarded request_id={request_id}" for request_id in "abcdefgh"
    ]
    assert len(g.generate.sent) == 8 and g.work.called == ["first"]


class Sequenced(Topic):
    """[generate] answering each forward as ``outcomes`` say, one by one: "give_up" (written,
    its delivery failed), "refuse" (the producer refused it: this copy not written), "take"."""

    def __init__(self, *outcomes: str) -> None:
        super().__init__()
        self.outcomes = list(outcomes)

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        outcome = self.outcomes.pop(0) if self.outcomes else "take"
        self.refuse, self.give_up = outcome == "refuse", int(outcome == "give_up")
        return await super().send(key=key, value=value)


async def test_a_forward_kafka_may_hold_is_not_called_here_when_its_next_send_is_refused() -> None:
    """Kafka gave up on a forward it may hold, and the producer refused the next send of it
    outright: that copy was never written, but the first may be, and the executor owning the
    organisation's partition calls it. It was called here too (two calls); it is held and
    forwarded again instead, never called here."""
    g = generator(KEY_TP, generate=Sequenced("give_up", "refuse"))
    await learned(g)
    a = command("a")
    # written, its delivery failed; then (the loop's send) refused outright
    await take(g, KEY_TP, (1, a), key=KEY_ID.encode())
    await calls(g)
    assert g.work.called == ["first"], "called here while Kafka may hold a copy"
    assert g.generate.sent == [(ORG.encode(), a)] and g.executor.forwarding.held == 1
    assert g.executor._unreported.ranges(KEY_TP) == ((1, 2),)  # still this run's to report
    await g.executor.forwarding.send()  # taken
    assert g.generate.sent == [(ORG.encode(), a)] * 2 and g.executor.forwarding.held == 0
    await calls(g)
    assert g.work.called == ["first"] and g.executor._unreported.ranges(KEY_TP) == ()


class Unanswered(Topic):
    """[generate] as an executor forwards to it while Kafka does not answer: each delivery
    stays open until the test answers it (Kafka gives up after the producer's request
    timeout, 20 minutes)."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        self.deliveries.append(asyncio.get_running_loop().create_future())
        return self.deliveries[-1]


async def test_the_loop_does_not_wait_for_kafkas_answer_to_a_forward(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor's loop waited for Kafka's answer to each forward: while Kafka did not
    answer (it gives up after the producer's request timeout, 20 minutes) it took nothing of
    any partition, reported nothing, and its stop waited as long. A turn now sends the
    forward and goes on; a later turn reads the answer: acknowledged, counted; given up on,
    forwarded again, never called here. A stop waits for the answers a bounded time; a
    forward still unanswered is named by no mark (called where it went if Kafka takes it,
    else re-issued at its deadline), and a WARNING counts it."""
    generate = Unanswered()
    g = generator(KEY_TP, generate=generate)
    forwarding = g.executor.forwarding
    await learned(g)
    a, b = command("a"), command("b")
    await take(g, KEY_TP, (1, a), key=KEY_ID.encode())  # (waiting, it hung: pytest's timeout)
    assert generate.sent == [(ORG.encode(), a)] and forwarding.held == 1
    await take(g, KEY_TP, (2, b), key=KEY_ID.encode())  # the loop goes on
    assert generate.sent == [(ORG.encode(), a), (ORG.encode(), b)] and forwarding.held == 2
    assert g.executor._unreported.ranges(KEY_TP) == ()  # (as from the commit before a send)

    generate.deliveries[0].set_exception(NotLeaderForPartitionError())  # Kafka gave up on a
    generate.deliveries[1].set_result(None)  # and took b
    await forwarding.send()  # the next turn reads the answers: a forwarded again
    assert generate.sent == [(ORG.encode(), a), (ORG.encode(), b), (ORG.encode(), a)]
    assert forwarding.held == 1 and forwarding.unanswered == 1
    await calls(g)
    assert g.work.called == ["first"] and reported(g) == ["first"]

    monkeypatch.setattr("streams.agents.executors.STOP_WAIT_SECONDS", 0.01)
    caplog.set_level(logging.WARNING, logger="streams.agents.executors")
    await g.executor.stop(0.0)  # a's third copy never answered
    assert len(generate.sent) == 3 and g.work.called == ["first"]
    assert lost_in(g.consumer.commits[-1][KEY_TP][1]) == []  # Kafka's to take, or the deadline's
    said = [r.getMessage() for r in caplog.records if "stopping" in r.msg]
    assert said == ["generator stopping: 1 forwards Kafka has not answered after 0.01s are "
                    "called where they went if it takes them, else re-issued at their "
                    "deadline"]  # fmt: skip


async def test_a_forward_taken_where_it_went_before_kafkas_answer_is_read_is_called() -> None:
    """The loop no longer waits for Kafka's answer to a forward: a rebalance may give this
    executor the organisation's partition, and it may read the forward there, before a turn
    reads the answer. Called where it went from the send on (not a copy of the command taken
    in the key's partition), it is called."""
    generate = Unanswered()
    g = generator(KEY_TP, generate=generate)
    await learned(g)
    a = command("a")
    await take(g, KEY_TP, (1, a), key=KEY_ID.encode())
    assert generate.sent == [(ORG.encode(), a)] and g.executor.forwarding.unanswered == 1
    g.consumer.owned.add(ORG_TP)  # a rebalance gave it the organisation's partition
    await take(g, ORG_TP, (7, a), key=ORG.encode())  # Kafka wrote it, its answer unread
    assert g.work.called == ["first", "a"] and reported(g) == ["first", "a"]
    generate.deliveries[0].set_result(None)
    await take(g, ORG_TP, (8, a), key=ORG.encode())  # a copy there: called once
    assert g.work.called == ["first", "a"] and g.executor.forwarding.held == 0

"""``/readyz`` of the worker and the projector says whether Kafka answers them, from their own
consumers' connections and without a request of its own: a connection up and waiting for
nothing, or answered lately, is a broker answering; none up, or all waiting in silence, is
Kafka out of reach. The fakes hold what ``kafka_unreachable`` reads of aiokafka's consumer
and connection (tests/functional/test_worker_http.py checks the real ones have it)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from streams.observability import KAFKA_SILENCE_SECONDS, kafka_unreachable, ready

NOW = 1000.0


@dataclass
class Connection:
    """What aiokafka's ``AIOKafkaConnection`` is read for."""

    up: bool = True
    waiting: int = 0  # requests sent, not answered
    answered_ago: float = 0.0

    def __post_init__(self) -> None:
        self._requests = deque(range(self.waiting))
        self._last_action = NOW - self.answered_ago

    def connected(self) -> bool:
        return self.up


@dataclass
class Consumer:
    """What aiokafka's ``AIOKafkaConsumer`` is read for: its client's connections."""

    connections: list[Connection] = field(default_factory=list)

    @property
    def _client(self) -> Any:
        return SimpleNamespace(_conns={(i, 0): c for i, c in enumerate(self.connections)})


SILENT = KAFKA_SILENCE_SECONDS + 2


@pytest.mark.parametrize(
    ("consumers", "says"),
    [
        # idle: a fetch long-polls and is answered empty, the coordinator between heartbeats
        ([Consumer([Connection(waiting=1, answered_ago=0.4), Connection()])], None),
        # a heartbeat on its way, answered a moment ago
        ([Consumer([Connection(waiting=1, answered_ago=3)])], None),
        # a rebalance: the coordinator holds the join, the fetch connection waits for nothing
        ([Consumer([Connection(waiting=1, answered_ago=SILENT), Connection()])], None),
        # one consumer answered is enough: the same brokers
        (
            [
                Consumer([Connection(up=False)]),
                Consumer([Connection(waiting=1, answered_ago=1)]),
            ],
            None,
        ),
        # a consumer not made yet beside one that is: judged by the one made
        ([None, Consumer([Connection()])], None),
        # the broker stopped or killed: its connections closed (aiokafka's tries to connect
        # again hold no connection until one is answered)
        ([Consumer([Connection(up=False), Connection(up=False)])], "no connection to a broker"),
        ([Consumer([]), Consumer([])], "no connection to a broker"),
        # the broker hangs (or the network drops everything): every request waits in silence
        (
            [
                Consumer(
                    [
                        Connection(waiting=1, answered_ago=SILENT),
                        Connection(waiting=2, answered_ago=SILENT + 5),
                    ]
                )
            ],
            f"no broker has answered for {SILENT:.0f} s",
        ),
    ],
)
def test_kafka_is_out_of_reach_when_no_connection_answers(
    consumers: list[Consumer | None], says: str | None
) -> None:
    expected = None if says is None else f"Kafka unreachable: {says}"
    assert kafka_unreachable(consumers, NOW) == expected


def test_a_process_whose_consumers_are_not_made_yet_is_connecting() -> None:
    assert kafka_unreachable([None, None], NOW) == "connecting to Kafka"
    assert kafka_unreachable([], NOW) == "connecting to Kafka"


def test_silence_up_to_the_limit_is_not_out_of_reach() -> None:
    waiting = Connection(waiting=1, answered_ago=KAFKA_SILENCE_SECONDS)
    assert kafka_unreachable([Consumer([waiting])], NOW) is None


def app(
    *,
    rebalancing: bool = False,
    recovered: bool = True,
    assigned: tuple[int, ...] = (0, 3),
    unpaired: str | None = None,
    reader: Consumer | None = None,
) -> Any:
    """faust's app: its rebalance and recovery flags, and its consumer's partitions of
    [requests] among the 8 its topics were created with (or past them: added since), and what
    it says of those it holds without their ledger state (``unpaired``)."""
    completed = SimpleNamespace(is_set=lambda: recovered)
    partitions = {TopicPartition("ts-requests", p) for p in assigned}
    return SimpleNamespace(
        rebalancing=rebalancing,
        in_recovery=False,
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=completed)),
        conf=SimpleNamespace(topic_partitions=8),
        _consumer=SimpleNamespace(
            assignment=lambda: partitions,
            unpaired=unpaired,
            _thread=SimpleNamespace(_consumer=reader),  # its consumer thread's aiokafka one
        ),
    )


def owners(*consumers: Consumer | None) -> list[Any]:
    """The executors and the projector: each holds its consumer (None until it runs)."""
    return [SimpleNamespace(consumer=consumer) for consumer in consumers]


ADDED = (
    "partitions added to a deployment's topics: this worker holds ts-requests partition 9, "
    "past the 8 the topics were created with, where no ledger keeps a person's state (a record "
    "there stops the worker that reads it); to change the count, deploy under a new "
    "TALKSTREAM_APP_ID"
)
APART = "ts-requests and the ledger's ts-ledger-changelog assigned apart: ..."
ANSWERING = Consumer([Connection(waiting=1, answered_ago=0.2)])
GONE = Consumer([Connection(up=False)])
STOPPING = SimpleNamespace(consumer=ANSWERING, stopping=True)  # an executor told to stop
REFUSING = "generator cannot commit: GroupAuthorizationFailedError (its Kafka principal ...)"
REFUSED = SimpleNamespace(consumer=ANSWERING, stopping=False, refused=REFUSING)


@pytest.mark.parametrize(
    ("faust", "consumers", "answer"),
    [
        (app(), owners(ANSWERING, ANSWERING), (True, "ready")),
        (app(rebalancing=True), owners(ANSWERING), (False, "rebalancing")),
        (app(recovered=False), owners(ANSWERING), (False, "recovering tables")),
        # Kafka out of reach says so, whatever faust's flags say meanwhile
        (
            app(rebalancing=True),
            owners(GONE, GONE),
            (False, "Kafka unreachable: no connection to a broker"),
        ),
        (app(), owners(GONE), (False, "Kafka unreachable: no connection to a broker")),
        # the projector on its own: no faust, ready while a broker answers it
        (None, owners(ANSWERING), (True, "ready")),
        (None, owners(GONE), (False, "Kafka unreachable: no connection to a broker")),
        (None, owners(None), (False, "connecting to Kafka")),
        # a worker told to stop: its executors drain, then close their consumers
        (app(), [*owners(ANSWERING), STOPPING], (False, "stopping")),
        (app(), [SimpleNamespace(consumer=GONE, stopping=True)], (False, "stopping")),
        # an executor whose commits Kafka refuses until an operator acts: the broker answers,
        # faust is ready, and its partitions are stalled (it said a WARNING every 10 s)
        (app(), [*owners(ANSWERING), REFUSED], (False, REFUSING)),
        (app(), [*owners(ANSWERING), REFUSED, STOPPING], (False, "stopping")),
        # partitions added to [requests] since its topics were created, taken in a rebalance:
        # a record there would stop the worker (it went on saying "ready" until one came)
        (app(assigned=(3, 9)), owners(ANSWERING), (False, ADDED)),
        (app(assigned=(3, 9), rebalancing=True), owners(ANSWERING), (False, "rebalancing")),
        # [requests] partitions held without the changelog's of the same number: the ledger
        # decides none of them (it said "ready", deciding them without their state)
        (app(unpaired=APART), owners(ANSWERING), (False, APART)),
        (app(assigned=(3, 9), unpaired=APART), owners(ANSWERING), (False, f"{ADDED}; and {APART}")),
        # a worker whose executors run in a process of their own: faust's consumer says it
        # (it said "connecting to Kafka" for ever: nothing of its own to read)
        (app(reader=ANSWERING), [], (True, "ready")),
        (app(reader=GONE), [], (False, "Kafka unreachable: no connection to a broker")),
        (app(), [], (False, "connecting to Kafka")),
    ],
)
def test_ready_puts_kafka_out_of_reach_first(
    faust: Any, consumers: list[Any], answer: tuple[bool, str]
) -> None:
    assert ready(faust, consumers, NOW) == answer


DOWN = "database unreachable: OperationalError: connection failed: ... Connection refused"
WAITING = SimpleNamespace(consumer=None, database_error=DOWN)  # no consumer until it is there


@pytest.mark.parametrize(
    ("faust", "consumers", "answer"),
    [
        # the projector on its own waits for its database before it makes its consumer
        (None, [WAITING], (False, DOWN)),
        (None, [SimpleNamespace(consumer=GONE, database_error=DOWN)], (False, DOWN)),
        (None, [SimpleNamespace(consumer=ANSWERING, database_error=None)], (True, "ready")),
        # in the worker it is the projector's alone: the worker's decisions go on
        (app(), [SimpleNamespace(consumer=ANSWERING, database_error=DOWN)], (True, "ready")),
        # ... and with its executors elsewhere (``EXECUTORS=process``), its projector waiting
        # for its database before it makes its consumer: faust's consumer says Kafka answers
        # (it said "connecting to Kafka" for as long as the projector waited)
        (app(reader=ANSWERING), [WAITING], (True, "ready")),
        (app(reader=GONE), [WAITING], (False, "Kafka unreachable: no connection to a broker")),
    ],
)
def test_a_projector_whose_database_takes_nothing_is_not_ready(
    faust: Any, consumers: list[Any], answer: tuple[bool, str]
) -> None:
    assert ready(faust, consumers, NOW) == answer


JOINING = "the generator joining its consumer group"
NOTHING_QUEUED = SimpleNamespace(take_back=lambda origins: [])  # a revoke takes nothing back


@pytest.mark.parametrize(
    ("faust", "consumers", "answer"),
    [
        # the executors' child (no faust): its executors' groups have not given them their
        # partitions yet; it said ready, and the commands waited in their topic meanwhile
        # (seconds on a loaded host: a request past its MAX_WAIT_SECONDS failed)
        (None, [SimpleNamespace(consumer=ANSWERING, joining=JOINING)], (False, JOINING)),
        (None, [SimpleNamespace(consumer=ANSWERING, joining=None)], (True, "ready")),
        # the executors in the worker: the same, whatever faust says
        (
            app(),
            [*owners(ANSWERING), SimpleNamespace(consumer=ANSWERING, joining=JOINING)],
            (False, JOINING),
        ),
        # Kafka out of reach, or a stop, is said first
        (
            None,
            [SimpleNamespace(consumer=GONE, joining=JOINING)],
            (False, "Kafka unreachable: no connection to a broker"),
        ),
        (
            None,
            [SimpleNamespace(consumer=GONE, joining=JOINING, stopping=True)],
            (False, "stopping"),
        ),
    ],
)
def test_an_executor_its_group_has_not_given_its_partitions_is_not_ready(
    faust: Any, consumers: list[Any], answer: tuple[bool, str]
) -> None:
    assert ready(faust, consumers, NOW) == answer


def test_an_executor_is_ready_once_its_group_has_given_it_its_partitions() -> None:
    """A real executor (its consumer's connections answering): joining until its rebalance
    listener is given its assignment, none too (a group with more members than partitions),
    and its partitions' marks read; ready from then on."""
    from streams.agents.handover import OnRebalance
    from tests.unit.test_executor_marks import Requests, generator

    executor = generator(Requests(), scheduler=NOTHING_QUEUED)
    executor.consumer = ANSWERING  # type: ignore[assignment]
    assert ready(None, [executor], NOW) == (False, JOINING)
    listener = OnRebalance(executor.handover, ANSWERING)  # type: ignore[arg-type]
    asyncio.run(listener.on_partitions_revoked(set()))  # aiokafka's first join revokes none
    assert ready(None, [executor], NOW) == (False, JOINING)
    asyncio.run(listener.on_partitions_assigned(set()))
    assert ready(None, [executor], NOW) == (True, "ready")


def test_an_executor_in_a_later_rebalance_is_not_ready_until_it_is_assigned_again() -> None:
    """A revoke after the first assignment (a member joined or left, or this one missed its
    session): the executor takes nothing until its group assigns again, and says so; it said
    ready through every rebalance after its first assignment."""
    from streams.agents.handover import OnRebalance
    from tests.unit.test_executor_marks import Requests, generator

    executor = generator(Requests(), scheduler=NOTHING_QUEUED)
    executor.consumer = ANSWERING  # type: ignore[assignment]
    listener = OnRebalance(executor.handover, ANSWERING)  # type: ignore[arg-type]
    asyncio.run(listener.on_partitions_assigned(set()))
    assert ready(None, [executor], NOW) == (True, "ready")

    asyncio.run(listener.on_partitions_revoked(set()))
    assert ready(None, [executor], NOW) == (
        False,
        "the generator rejoining its consumer group (a rebalance)",
    )
    asyncio.run(listener.on_partitions_assigned(set()))
    assert ready(None, [executor], NOW) == (True, "ready")

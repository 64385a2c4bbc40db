"""A group member's join sends one JoinGroup naming every protocol it offers
(``streams.kafka_join``), the projector's ``talkstream-database`` and ``roundrobin``: aiokafka
0.14 sent one per assignor, the second naming one protocol more, a change its group
rebalanced again for. (Two projectors' joins in different generations then rebalanced their
group without end: ``tests/integration/test_projector_group.py``.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer import group_coordinator
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.protocol.group import JoinGroupRequest

import streams.kafka_options  # noqa: F401  (installs the one JoinGroup on every consumer)
from streams.agents.projector_group import DatabaseAssignor


class _Coordinator:
    """A group coordinator as a join uses it: it answers each JoinGroup (its protocols noted
    as sent) with this member a follower of the group's first generation, and its SyncGroup
    with an assignment."""

    _rebalance_timeout_ms = 10_000
    _group_instance_id = "worker@host-projector"

    def __init__(self) -> None:
        self.member_id, self.generation = "", -1
        self.joins: list[list[str]] = []  # each JoinGroup's protocols, as it was sent
        self.syncs = 0

    async def _send_req(self, request: Any) -> Any:
        if isinstance(request, JoinGroupRequest):
            self.joins.append([name for name, _ in request._group_protocols])
            return SimpleNamespace(
                error_code=0,
                member_id="me",
                generation_id=1,
                group_protocol=self.joins[-1][0],
                leader_id="another",
            )
        self.syncs += 1
        return SimpleNamespace(error_code=0, member_assignment=b"assigned")


def _rebalance(coordinator: Any, assignors: tuple[Any, ...]) -> Any:
    return group_coordinator.CoordinatorGroupRebalance(
        coordinator,
        "app-projector",
        1,
        SimpleNamespace(topics={"app-lifecycle"}, active=True),
        assignors,
        10_000,
        0,
    )


async def _joined(assignors: tuple[Any, ...]) -> tuple[_Coordinator, Any]:
    coordinator = _Coordinator()
    return coordinator, await _rebalance(coordinator, assignors).perform_group_join()


async def test_a_projector_joins_with_one_joingroup_naming_both_its_protocols() -> None:
    assignor = DatabaseAssignor("app-projector", "database-id", lambda: False)
    coordinator, joined = await _joined((assignor, RoundRobinPartitionAssignor))
    assert coordinator.joins == [["talkstream-database", "roundrobin"]]
    assert coordinator.syncs == 1
    assert joined == ("talkstream-database", b"assigned")
    assert (coordinator.member_id, coordinator.generation) == ("me", 1)


async def test_a_consumer_with_one_assignor_joins_as_before() -> None:
    coordinator, joined = await _joined((RoundRobinPartitionAssignor,))
    assert coordinator.joins == [["roundrobin"]]
    assert joined == ("roundrobin", b"assigned")


class _Unanswered(_Coordinator):
    """A coordinator whose JoinGroups are not answered (the group waits for a member that does
    not rejoin), closing as its consumer stops (aiokafka's ``_closing``)."""

    def __init__(self) -> None:
        super().__init__()
        self._closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent = asyncio.Event()
        self.given_up = False

    async def _send_req(self, request: Any) -> Any:
        self.joins.append([name for name, _ in request._group_protocols])
        self.sent.set()
        try:
            await asyncio.get_running_loop().create_future()  # never answered
        except asyncio.CancelledError:
            self.given_up = True
            raise


async def test_a_join_waiting_for_its_answer_ends_as_its_consumer_closes() -> None:
    """aiokafka's close waits for its coordination routine, which waited for the JoinGroup's
    answer: up to the rebalance timeout (a worker stopped so waited for it, and was killed:
    ``tests/integration/test_worker_stop.py``). The join ends as the close begins, not
    joined, its request given up."""
    for assignors in ((RoundRobinPartitionAssignor,), (_database(), RoundRobinPartitionAssignor)):
        coordinator = _Unanswered()
        join = asyncio.ensure_future(_rebalance(coordinator, assignors).perform_group_join())
        await coordinator.sent.wait()
        assert not join.done()
        coordinator._closing.set_result(None)
        assert await asyncio.wait_for(join, 5) is None
        assert coordinator.given_up
        assert len(coordinator.joins) == 1
        # closed before it began: nothing is sent
        coordinator = _Unanswered()
        coordinator._closing.set_result(None)
        assert await _rebalance(coordinator, assignors).perform_group_join() is None
        assert coordinator.joins == []


def _database() -> DatabaseAssignor:
    return DatabaseAssignor("app-projector", "database-id", lambda: False)

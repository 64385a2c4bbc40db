"""A group member joins with one JoinGroup naming every protocol it offers, as Kafka's own
clients do: aiokafka 0.14 sends one per assignor, each naming one protocol more than the one
before (its join loop sits inside its loop over the assignors: aio-libs/aiokafka#1168, open).

Only a consumer with more than one assignor sends more than one, ours the projector (its
group's ``talkstream-database`` and ``roundrobin``, ``streams.agents.projector_group``). Its
first JoinGroup names ``talkstream-database`` alone, and its second, sent once the first is
answered (the group's join phase over), names both: to the coordinator a known member
whose protocols changed, so the group rebalances again. Two projectors whose joins fell in
different generations never got out of it: each one's first JoinGroup ended a join phase,
its second began the next one, which failed the other's SyncGroup, whose first JoinGroup
then ended that phase, and so on (a worker killed while its projector's first join waited
for the other's heartbeat, and started again at once under its static instance id: the
group rebalanced for minutes, its projection stalled). So the JoinGroups before the last
are not sent: only the last, naming them all, is, and what it is answered is what aiokafka
acts on (as it did: the earlier answers were dropped).

And a join ends as its consumer closes (:meth:`_JoinOnce.perform_group_join`): aiokafka's
close waited for a pending JoinGroup's answer, up to the group's rebalance timeout.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer import group_coordinator
from aiokafka.protocol.group import JoinGroupRequest

_Rebalance: Any = group_coordinator.CoordinatorGroupRebalance
# what aiokafka's loop reads of a JoinGroup's answer before its next one: no error
_NOT_SENT = SimpleNamespace(error_code=0)


class _JoinOnce(_Rebalance):  # type: ignore[misc]
    _coordinator: Any  # (aiokafka's GroupCoordinator)
    _assignors: Any

    async def perform_group_join(self) -> Any:
        """The join, given up as its consumer closes (``None``: not joined, and aiokafka's
        coordination routine then sees the close and ends). A JoinGroup is answered once the
        group's join phase ends: once every member rejoined, or missed the rebalance timeout
        (the session, ``streams.kafka_options``). aiokafka's close waits for its routine,
        and so for that answer: a worker told to stop while its executors' joins waited for
        a member that never came back (a deployment stopped at once: a static member leaves
        no group) waited up to the session, 30 s and more, and its supervisor killed it.
        Given up so, a static member is in the group as after any stop of it (its partitions
        wait for its session), and a dynamic one that had joined before leaves it (aiokafka's
        close sends its LeaveGroup)."""
        closing = getattr(self._coordinator, "_closing", None)
        if closing is None:
            return await self._join()
        if closing.done():
            return None
        join = asyncio.ensure_future(self._join())
        try:
            await asyncio.wait([join, closing], return_when=asyncio.FIRST_COMPLETED)
        finally:  # (its routine cancelled, too)
            if not join.done():
                join.cancel()
                await asyncio.gather(join, return_exceptions=True)
        return None if join.cancelled() else join.result()

    async def _join(self) -> Any:
        if len(self._assignors) < 2:
            return await super().perform_group_join()
        coordinator = self._coordinator
        self._coordinator = _LastJoinOnly(coordinator, len(self._assignors))
        try:
            return await super().perform_group_join()
        finally:
            self._coordinator = coordinator


class _LastJoinOnly:
    """The group coordinator as a join sees it (each attribute read and set is the
    coordinator's), but for a JoinGroup naming fewer than all ``protocols``: not sent."""

    def __init__(self, coordinator: Any, protocols: int) -> None:
        object.__setattr__(self, "_coordinator", coordinator)
        object.__setattr__(self, "_protocols", protocols)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coordinator, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._coordinator, name, value)

    async def _send_req(self, request: Any) -> Any:
        if isinstance(request, JoinGroupRequest) and (
            len(request._group_protocols) < self._protocols
        ):
            return _NOT_SENT
        return await self._coordinator._send_req(request)


def install() -> None:
    """Every aiokafka consumer of this process joins so (one with one assignor, faust's and
    the executors', as before); idempotent."""
    group_coordinator.CoordinatorGroupRebalance = _JoinOnce

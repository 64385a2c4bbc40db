"""One database per projector group: a projector writing another database is refused.

Every projector of an app id reads [lifecycle] in the group ``<app>-projector``, which splits
the partitions among them: a projector started with another ``TALKSTREAM_DATABASE_URL`` took
its share of the partitions into its own database, and every database missed them, with no
error anywhere. So each projector joins the group saying which database it writes (the
fingerprint of ``database_identity``, never the URL: it may hold a password), and the group's
leader, which assigns the partitions, gives none to a member writing another database than
the group's: its assignment says it was refused, and it stops with an ERROR before it has
taken anything.

The group's database is the one the members that have projected since they started write (a
projector joining a running group is the one refused); a group whose members have projected
nothing yet (all starting) takes the leader's. A projector that stops and starts again within
its session (static membership) is given its previous assignment by the coordinator without a
rebalance, so no assignor sees it: once assigned, each projector also reads the group's members
from the coordinator, and one holding partitions while another member holding partitions
writes another database holds them back (paused: nothing of them is taken) and joins again
with changed metadata, so that the group rebalances and the leader refuses it. A member of a version
before this one says nothing of its database: the group then assigns with ``roundrobin`` (the
protocol every member has; each projector offers both), and that member is not checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocol,
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from streams.errors import ConfigError
from streams.kafka_options import group_members, member_id

log = logging.getLogger(__name__)

PROTOCOL = "talkstream-database"


class OtherDatabase(ConfigError):
    """A member of the projector's group writes another database than this projector."""


def refusal(group: str, mine: str, theirs: str) -> str:
    """What a refused projector says: the problem, and what to do."""
    return (
        f"another projector of group {group} writes another database (database id {theirs}) "
        f"than this one's TALKSTREAM_DATABASE_URL (database id {mine}): the projectors of an "
        "app id share the partitions of [lifecycle], so each database would miss the requests "
        "of the others' partitions. This projector takes none: start it with the "
        "TALKSTREAM_DATABASE_URL the others use, or stop the others first; to "
        "build another database from the log, use `talkstream replay --database-url`"
    )


class DatabaseAssignor:
    """aiokafka's assignor protocol (duck-typed: its abstract class has class methods, this
    one is a projector's own): round robin among the members writing the group's database,
    nothing to the others, whose assignment names the group's database."""

    name = PROTOCOL
    version = 0

    def __init__(self, group: str, database: str, projected: Callable[[], bool]) -> None:
        # the id of the database it writes (the projector's: set again once its server said it)
        self._group, self.database, self._projected = group, database, projected
        self.refused_for: str | None = None  # the group's database, when this one is refused
        # the rebalances it asked for: its metadata changes, or the coordinator would give a
        # member of a stable group its previous assignment again
        self.rejoins = 0

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        said = {"database": self.database, "projected": self._projected()}
        if self.rejoins:
            said["rejoins"] = self.rejoins
        return ConsumerProtocolMemberMetadata(self.version, list(topics), json.dumps(said).encode())

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        said = {member: _said(metadata.user_data) for member, metadata in members.items()}
        projecting = {
            str(s["database"]) for s in said.values() if s.get("projected") and "database" in s
        }
        group = projecting.pop() if len(projecting) == 1 else self.database
        writing = {m: md for m, md in members.items() if said[m].get("database") in (None, group)}
        assignment: dict[str, ConsumerProtocolMemberAssignment] = (
            RoundRobinPartitionAssignor.assign(cluster, writing)
        )
        for member in members.keys() - writing.keys():
            log.error(
                "projector group %s: member %s writes another database (database id %s) than "
                "the group's (database id %s): given no partition; it stops",
                self._group,
                member,
                said[member].get("database"),
                group,
            )
            note = json.dumps({"refused": group}).encode()
            assignment[member] = ConsumerProtocolMemberAssignment(self.version, [], note)
        return assignment

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        refused = _said(assignment.user_data).get("refused")
        self.refused_for = None if refused is None else str(refused)


async def other_database(consumer: AIOKafkaConsumer, group: str, database: str) -> str | None:
    """The database another member holding partitions writes, if it is not ``database``,
    as the group's coordinator says it now (nothing while the group rebalances: the next
    assignment is the leader's, which checks)."""
    protocol, members = await group_members(consumer, group)
    if protocol != PROTOCOL:
        return None
    me = member_id(consumer)
    for member, metadata, assignment in members:
        if member == me or not metadata or not assignment:
            continue
        if not ConsumerProtocol.ASSIGNMENT.decode(assignment).partitions():
            continue
        theirs = _said(ConsumerProtocol.METADATA.decode(metadata).user_data).get("database")
        if theirs is not None and theirs != database:
            return str(theirs)
    return None


def _said(user_data: bytes | None) -> dict[str, Any]:
    """What a member's metadata (or its assignment) says; nothing from one that says nothing
    of it (a member of an older version) or something else."""
    try:
        said: object = json.loads(user_data or b"{}")
    except ValueError:
        return {}
    return {str(k): v for k, v in said.items()} if isinstance(said, dict) else {}

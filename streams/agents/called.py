"""Which commands an executor took lately, by request and attempt: the topic may hold a command
twice (the ledger sent it again after Kafka gave up on a copy it wrote all the same), and the
executor (``streams.agents.executors``) calls only the first it takes (:class:`Called`); and
which records that do not decode it dead-lettered lately: read again (a batch whose commit
failed), one is not lettered again (:class:`Lettered`).
"""

from __future__ import annotations

from aiokafka import TopicPartition

# how many of the commands it took last an executor knows by request and attempt (``Called``):
# a copy of one further on in the topic is not called again
CALLED_REMEMBERED = 20_000
# how many of the records it dead-lettered last an executor knows by partition and offset
# (``Lettered``): one read again is not lettered again
LETTERED_REMEMBERED = 10_000
FORWARDED = -1  # the offset ``Called`` notes for a command forwarded to a partition


class Called:
    """The commands an executor took lately (its ``size`` last), by request and attempt, with
    where it took each: a command Kafka holds twice is called once. The ledger sends an output
    again when Kafka gave up on it (``streams.agents.ledger.Ledger._undecided``), but Kafka may
    have written it all the same: a node that stops leading the partition between writing a
    record and acknowledging it answers NotLeaderForPartition (a controlled shutdown, on a
    loaded host), and the producer retries it until no leader is left for it and gives up.
    Both copies go to the same partition (a command's key is its target), the second soon
    after the partition has a leader again (when the ledger's batch is decided again), where
    the executor reads them: the copy is close behind the first, far within ``size``
    commands. A command forwarded to its organisation's partition is sent there again the same
    way when Kafka gave up on the forward (``streams.agents.forwarding``): the executor there
    calls the first copy it takes. A command handed back to the topic (a rebalance, a stop)
    is forgotten: whoever takes it back calls it; one forwarded to its organisation's
    partition is called by this executor only if it takes it there."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._taken: dict[tuple[str, int], tuple[TopicPartition, int]] = {}

    def took(
        self, request_id: str, attempt: int, where: tuple[TopicPartition, int]
    ) -> tuple[TopicPartition, int] | None:
        """Where the same command was taken before (this one is a copy), or None: the first."""
        identity = (request_id, attempt)
        first = self._taken.get(identity)
        if first is not None and first not in (where, (where[0], FORWARDED)):  # (forwarded here)
            return first
        self._taken[identity] = where
        if len(self._taken) > self._size:
            del self._taken[next(iter(self._taken))]
        return None

    def forwarded(self, request_id: str, attempt: int, to: TopicPartition) -> None:
        """The command was forwarded to ``to``: taken there, it is called (this executor was
        given that partition since); a copy anywhere else is not."""
        self._taken[(request_id, attempt)] = (to, FORWARDED)

    def forget(self, request_id: str, attempt: int) -> None:
        self._taken.pop((request_id, attempt), None)


class Lettered:
    """The records that do not decode an executor dead-lettered lately (its ``size`` last), by
    partition and offset, each once Kafka acknowledged its letter. A batch whose commit failed
    is read again (``Executor._read_again``), as is one a rebalance gave back to the same run
    (read from the last commit): a poison record of it was lettered again at each take, and
    the dead-letter topic held as many letters of it, each counted and logged
    "dead-lettered". A letter that Kafka did not take is not noted: its record is read again
    to be lettered again. (Another run that reads the record again, the partition's next
    owner or this worker restarted, letters it again: the letters of one record carry the
    same topic, partition and offset, ``docs/consumers.md``.)"""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lettered: dict[tuple[TopicPartition, int], None] = {}

    def __contains__(self, where: tuple[TopicPartition, int]) -> bool:
        """Whether the record at ``where`` (partition, offset) is lettered already."""
        return where in self._lettered

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._lettered[(tp, offset)] = None
        if len(self._lettered) > self._size:
            del self._lettered[next(iter(self._lettered))]

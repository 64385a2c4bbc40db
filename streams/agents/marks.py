"""What an executor's commit says besides its offset, and the offsets it has not reported.

An executor commits what it took before the work starts; each commit's metadata is a
:class:`Mark`: the run that took the records and which of them are not reported yet, kept by
:class:`Unreported`. A restarted run reads the mark back and tells the ledger which attempts
the previous run lost (``streams.agents.lost``). A mark also lists the calls of the
partition that run elsewhere (:class:`Running`): those a run that gave the partition up was
still calling, which its owner tells the ledger were lost once that run left the group.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import TopicPartition

MARK_RANGES = 32  # a mark lists the unreported offsets in at most this many ranges (the
# oldest), however many offsets they hold (far below offset.metadata.max.bytes)

MARK_BYTES = 3072  # a mark's most (the broker's offset.metadata.max.bytes is 4096 by default)
# a broker that refuses a commit for its mark's size (a cluster's offset.metadata.max.bytes set
# below the default) has an executor halve its marks' most, down to this (``Commits.commit``)
MARK_LEAST_BYTES = 64

Ranges = tuple[tuple[int, int], ...]  # half-open offset ranges, ascending


class Running(NamedTuple):
    """Calls of a partition taken by a run that gave the partition up and went on calling
    them: the instance and run, its member id in the group then, the offsets of the calls
    not reported when it did, and when (its clock, in ms)."""

    instance: str
    run: str
    member: str
    offsets: Ranges
    at_ms: int


@dataclass(frozen=True)
class Mark:
    """What an executor's commit of a partition says besides the offset: the instance and the
    run that took the records, the oldest of them not reported yet and the ranges of those not
    reported it lists (:meth:`Unreported.listing`; None, in an earlier version's mark when they
    were many: every offset from the oldest counts as one); and the calls of the partition
    running in runs that gave it up (the oldest hand-over first)."""

    instance: str
    run: str
    oldest: int
    unreported: Ranges | None = None
    running: tuple[Running, ...] = ()

    def encode(self) -> str:
        found: dict[str, Any] = {"instance": self.instance, "run": self.run, "oldest": self.oldest}
        if self.unreported is not None:
            found["unreported"] = self.unreported
        if self.running:
            found["running"] = self.running
        return json.dumps(found, separators=(",", ":"))

    def fitting(self, most: int = MARK_BYTES) -> Mark:
        """This mark within ``most`` bytes, shortened by what only spares the ledger a wait:
        first without as many of the oldest hand-overs' calls as it takes, then without as
        many of the newest ranges not reported as it takes (down to none: the mark names the
        oldest offset not reported and no offset as lost). What it leaves out is not told
        lost but re-issued by the ledger at its deadline, as before the marks; nothing it keeps
        says more than the whole mark did (it never names an offset lost that was not, as a
        mark naming only the oldest would: a forwarded command, taken out of the marks before
        it is sent, re-issued while called elsewhere; no executor writes one now). At its
        least (instance, run and oldest), a mark may exceed ``most``."""
        mark = self
        while mark.running and len(mark.encode()) > most:
            mark = dataclasses.replace(mark, running=mark.running[1:])
        while mark.unreported and len(mark.encode()) > most:
            mark = dataclasses.replace(mark, unreported=mark.unreported[:-1])
        return mark

    @classmethod
    def parse(cls, metadata: str) -> Mark | None:
        """None for a commit without a mark (an earlier version's) or with another's."""
        try:
            found = json.loads(metadata)
            listed = found.get("unreported")
            return cls(
                str(found["instance"]),
                str(found["run"]),
                int(found["oldest"]),
                None if listed is None else _ranges(listed),
                tuple(
                    Running(str(instance), str(run), str(member), _ranges(offsets), int(at))
                    for instance, run, member, offsets, at in found.get("running", ())
                ),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def lost(self, offset: int) -> bool:
        """Whether the record at ``offset`` (below the committed one) was left unreported."""
        if offset < self.oldest:
            return False
        return self.unreported is None or any(a <= offset < b for a, b in self.unreported)


def _ranges(listed: Any) -> Ranges:
    return tuple((int(a), int(b)) for a, b in listed)


def listed(spans: Iterable[tuple[int, int]]) -> Ranges:
    """Ascending half-open ``spans`` as a mark lists them (adjacent ones joined): the oldest
    :data:`MARK_RANGES` ranges they make (a mark names lost no offset it leaves out)."""
    return _joined(spans)[:MARK_RANGES]


def _joined(spans: Iterable[tuple[int, int]], most: int | None = None) -> Ranges:
    """Ascending ``spans``, adjacent ones joined; read no further than a range past the
    ``most``-th (``most`` ranges at most: whether there are more is all a mark needs)."""
    ranges: list[list[int]] = []
    for start, stop in spans:
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = stop
        elif most is not None and len(ranges) >= most:
            break
        else:
            ranges.append([start, stop])
    return tuple((a, b) for a, b in ranges)


class Unreported:
    """The offsets an executor took and has not reported, per partition in ascending order
    (the oldest first, even if a partition were read again from further back), and by request:
    a report of an attempt settles every earlier attempt of the request taken here (a newer
    attempt takes the place of one still queued)."""

    def __init__(self) -> None:
        self._offsets: dict[TopicPartition, dict[int, None]] = {}
        self._requests: dict[str, list[tuple[TopicPartition, int, int]]] = {}

    def took(self, tp: TopicPartition, offset: int, request_id: str, attempt: int) -> None:
        offsets = self._offsets.setdefault(tp, {})
        if offsets and offset < next(reversed(offsets)):  # read again from further back
            self._offsets[tp] = dict.fromkeys(sorted([*offsets, offset]))
        else:
            offsets[offset] = None
        self._requests.setdefault(request_id, []).append((tp, offset, attempt))

    def reported(self, request_id: str, attempt: int) -> list[tuple[TopicPartition, int, int]]:
        """``request_id``'s ``attempt`` (and its earlier attempts taken here) no longer this
        run's to report; returns what it settles (partition, offset, attempt) of the partitions
        this run still holds, to :meth:`restore` if it is this run's to report again."""
        later, settled = [], []
        for tp, offset, taken_attempt in self._requests.pop(request_id, []):
            if taken_attempt > attempt:
                later.append((tp, offset, taken_attempt))
                continue
            offsets = self._offsets.get(tp, {})
            if offset in offsets:  # (not of a partition given up since)
                del offsets[offset]
                settled.append((tp, offset, taken_attempt))
        if later:
            self._requests[request_id] = later
        return settled

    def restore(self, request_id: str, settled: list[tuple[TopicPartition, int, int]]) -> None:
        """What :meth:`reported` settled of ``request_id`` this run's to report again (a forward
        not sent)."""
        for tp, offset, attempt in settled:
            self.took(tp, offset, request_id, attempt)

    def oldest(self, tp: TopicPartition, otherwise: int) -> int:
        offsets = self._offsets.get(tp)
        return next(iter(offsets)) if offsets else otherwise

    def ranges(
        self, tp: TopicPartition, taking: range = range(0), but: Collection[int] = ()
    ) -> Ranges:
        """The offsets of ``tp`` not reported (but those in ``but``), and those being
        ``taking`` now, as ranges: all of them while they make at most :data:`MARK_RANGES`
        ranges (however many offsets those hold), else the oldest ranges, and ``taking`` the
        last of them (:meth:`listing`)."""
        return self.listing(tp, taking, but)[0]

    def listing(
        self, tp: TopicPartition, taking: range = range(0), but: Collection[int] = ()
    ) -> tuple[Ranges, bool]:
        """:meth:`ranges`, and whether they are all the offsets not reported. What they leave
        out a mark does not name lost (the ledger re-issues it at its deadline): a mark naming
        every offset from the oldest had the next owner tell the ledger that commands this run
        forwarded to their organisation's partition, or handed back, were lost while they were
        called there; the ledger, their attempt current, re-issued them (two calls). They were
        also cut at the oldest 256 offsets: a campaign's blast on a paced key, hundreds of
        commands queued in one run of offsets, had those past the 256th wait for their
        deadline (the queue wait and the call: 17 minutes by default) when the worker was
        killed, though one range named them all. The offsets are read up to a range one too
        many, no further."""
        offsets = (offset for offset in self._offsets.get(tp, {}) if offset not in but)
        spans = _joined(((offset, offset + 1) for offset in offsets), MARK_RANGES + 1)
        last = [(taking.start, taking.stop)] if taking else []
        ranges = _joined([*spans, *last])
        whole = len(ranges) <= MARK_RANGES
        if not whole:
            ranges = _joined([*spans[: MARK_RANGES - len(last)], *last])
        return ranges, whole

    def offsets(self, tp: TopicPartition, request_id: str, attempt: int) -> list[int]:
        """The offsets of ``tp`` at which this run took ``request_id``'s ``attempt`` and has
        not reported it."""
        return [
            offset
            for taken_tp, offset, taken_attempt in self._requests.get(request_id, [])
            if taken_tp == tp and taken_attempt == attempt and offset in self._offsets.get(tp, {})
        ]

    def partitions(self) -> set[TopicPartition]:
        """The partitions with offsets not reported."""
        return {tp for tp, offsets in self._offsets.items() if offsets}

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._offsets.pop(tp, None)


class Elsewhere:
    """The calls of an executor's partitions that other runs went on with after giving them
    up (:class:`Running`, read from the marks), carried on in this run's marks until their
    run is no member of the group any more (they are then told lost) or until their deadline
    has passed (the ledger's from then on)."""

    def __init__(self) -> None:
        self._running: dict[TopicPartition, tuple[Running, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._running)

    def of(self, tp: TopicPartition) -> tuple[Running, ...]:
        return self._running.get(tp, ())

    def carry(self, tp: TopicPartition, running: tuple[Running, ...]) -> None:
        """What ``tp``'s marks list as running elsewhere from now on (nothing: forgotten)."""
        if running:
            self._running[tp] = running
        else:
            self._running.pop(tp, None)

    def expire(self, since_ms: int) -> list[tuple[TopicPartition, Running]]:
        """Forgets the hand-overs made before ``since_ms``, and returns them."""
        expired = []
        for tp, running in list(self._running.items()):
            expired += [(tp, r) for r in running if r.at_ms < since_ms]
            self.carry(tp, tuple(r for r in running if r.at_ms >= since_ms))
        return expired

    def gone(self, members: set[str]) -> dict[TopicPartition, Running]:
        """Of each partition, the first run listed that is no member of the group now."""
        found = {}
        for tp, running in self._running.items():
            gone = [r for r in running if r.member not in members]
            if gone:
                found[tp] = gone[0]
        return found

    def told(self, tp: TopicPartition, running: Running) -> None:
        """``running``'s calls of ``tp`` are told lost: no longer listed."""
        self.carry(tp, tuple(r for r in self.of(tp) if r != running))

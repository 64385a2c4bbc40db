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
import itertools
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import TopicPartition

MARK_RANGES = 32  # a mark lists the unreported offsets in at most this many ranges (the
# oldest), however many offsets they hold (far below offset.metadata.max.bytes)

# a commit lists its marks: past this many ranges of offsets not reported (a paced key's blast
# parted by the calls of quicker keys that ended between its commands), those after them are
# neither read nor joined, and left to their deadline (each commit's cost bounded: a few ms)
BRIDGED_RANGES = 1024

MARK_BYTES = 3072  # a mark's most (the broker's offset.metadata.max.bytes is 4096 by default)
# a broker that refuses a commit for its mark's size (a cluster's offset.metadata.max.bytes set
# below the default) has an executor halve its marks' most, down to this (``Commits.commit``)
MARK_LEAST_BYTES = 64

Ranges = tuple[tuple[int, int], ...]  # half-open offset ranges, ascending
# a partition's offsets resulted are pruned of those below its oldest not reported once they
# are twice as many as the last pruning kept, or as this
PRUNED_LEAST = 1024


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
        """Whether the record at ``offset`` (below the committed one) was left unreported (or
        was reported by its result, in a gap a mark joined: news of its loss the ledger
        ignores)."""
        if offset < self.oldest:
            return False
        return self.unreported is None or any(a <= offset < b for a, b in self.unreported)


def _ranges(listed: Any) -> Ranges:
    return tuple((int(a), int(b)) for a, b in listed)


def listed(spans: Iterable[tuple[int, int]]) -> Ranges:
    """Ascending half-open ``spans`` as a mark lists them (adjacent ones joined): the oldest
    :data:`MARK_RANGES` ranges they make (a mark names lost no offset it leaves out)."""
    return _joined(spans)[:MARK_RANGES]


def _runs(offsets: list[int], most: int) -> tuple[list[tuple[int, int]], bool]:
    """Ascending offsets, each once, as half-open ranges of consecutive ones, at most ``most``
    of them (the oldest), and whether they are all. Each range's end is found by galloping,
    then bisection (``offsets[j] - offsets[i] == j - i`` holds exactly while the offsets from
    ``i`` to ``j`` are consecutive), so a blast's thousands of commands queued in one run of
    offsets cost a few dozen steps, not one each: a mark is listed at every commit."""
    runs: list[tuple[int, int]] = []
    i, count = 0, len(offsets)
    while i < count:
        if len(runs) == most:
            return runs, False
        start, low, step = offsets[i], i, 1  # ``low``: in the run from ``i``
        while low + step < count and offsets[low + step] - start == low + step - i:
            low += step
            step *= 2
        high = min(low + step, count) - 1
        while low < high:  # the last index of the run, between them
            middle = (low + high + 1) // 2
            if offsets[middle] - start == middle - i:
                low = middle
            else:
                high = middle - 1
        runs.append((start, offsets[low] + 1))
        i = low + 1
    return runs, True


def _joined(spans: Iterable[tuple[int, int]]) -> Ranges:
    ranges: list[list[int]] = []
    for start, stop in spans:
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = stop
        else:
            ranges.append([start, stop])
    return tuple((a, b) for a, b in ranges)


class Unreported:
    """The offsets an executor took and has not reported, per partition in ascending order
    (the oldest first, even if a partition were read again from further back), and by request:
    a report of an attempt settles every earlier attempt of the request taken here (a newer
    attempt takes the place of one still queued). And of each partition, the offsets above the
    oldest not reported whose result Kafka acknowledged (:meth:`reported`, ``resulted``): a
    mark may name them lost with those around them (:meth:`listing`)."""

    def __init__(self) -> None:
        self._offsets: dict[TopicPartition, dict[int, None]] = {}
        self._requests: dict[str, list[tuple[TopicPartition, int, int]]] = {}
        self._resulted: dict[TopicPartition, set[int]] = {}
        self._kept: dict[TopicPartition, int] = {}  # how many the last pruning kept

    def took(self, tp: TopicPartition, offset: int, request_id: str, attempt: int) -> None:
        self._resulted.get(tp, set()).discard(offset)  # (taken again: not reported now)
        offsets = self._offsets.setdefault(tp, {})
        if offsets and offset < next(reversed(offsets)):  # read again from further back
            self._offsets[tp] = dict.fromkeys(sorted([*offsets, offset]))
        else:
            offsets[offset] = None
        self._requests.setdefault(request_id, []).append((tp, offset, attempt))

    def reported(
        self, request_id: str, attempt: int, *, resulted: bool = False
    ) -> list[tuple[TopicPartition, int, int]]:
        """``request_id``'s ``attempt`` (and its earlier attempts taken here) no longer this
        run's to report; returns what it settles (partition, offset, attempt) of the partitions
        this run still holds, to :meth:`restore` if it is this run's to report again.
        ``resulted``: reported by its result, which Kafka acknowledged in the person's
        partition of [requests], before any news of its loss a later run writes there (the
        ledger reads the result first: the news changes nothing). Not so a command forwarded
        or handed back: called elsewhere, its result to come."""
        later, settled = [], []
        for tp, offset, taken_attempt in self._requests.pop(request_id, []):
            if taken_attempt > attempt:
                later.append((tp, offset, taken_attempt))
                continue
            offsets = self._offsets.get(tp, {})
            if offset in offsets:  # (not of a partition given up since)
                del offsets[offset]
                settled.append((tp, offset, taken_attempt))
                if resulted:
                    self._resulted.setdefault(tp, set()).add(offset)
                self._prune(tp)
        if later:
            self._requests[request_id] = later
        return settled

    def _prune(self, tp: TopicPartition) -> None:
        """``tp``'s offsets resulted that no gap between offsets not reported holds any more:
        all of them once none is left, else those below the oldest once they are twice as
        many as the last pruning kept (each pruned offset read once, or about)."""
        resulted = self._resulted.get(tp)
        if resulted is None:
            return
        offsets = self._offsets.get(tp)
        if not offsets:
            self._resulted.pop(tp, None)
            self._kept.pop(tp, None)
        elif len(resulted) > 2 * self._kept.get(tp, PRUNED_LEAST):
            oldest = next(iter(offsets))
            self._resulted[tp] = kept = {offset for offset in resulted if offset > oldest}
            self._kept[tp] = max(len(kept), PRUNED_LEAST)

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
        ranges (however many offsets those hold, gaps of offsets reported by their result
        joined where it takes that), else the oldest ranges, and ``taking`` the last of them
        (:meth:`listing`)."""
        return self.listing(tp, taking, but)[0]

    def listing(
        self, tp: TopicPartition, taking: range = range(0), but: Collection[int] = ()
    ) -> tuple[Ranges, bool]:
        """:meth:`ranges`, and whether they name all the offsets not reported (past
        :data:`MARK_RANGES`, with the gaps between them that hold only offsets reported by
        their result joined: :meth:`_bridged`). What they leave out a mark does not name lost
        (the ledger re-issues it at its deadline): a mark naming every offset from the oldest
        had the next owner tell the ledger that commands this run forwarded to their
        organisation's partition, or handed back, were lost while they were called there; the
        ledger, their attempt current, re-issued them (two calls). They were
        also cut at the oldest 256 offsets: a campaign's blast on a paced key, hundreds of
        commands queued in one run of offsets, had those past the 256th wait for their
        deadline (the queue wait and the call: 17 minutes by default) when the worker was
        killed, though one range named them all. Past :data:`BRIDGED_RANGES` ranges, those
        after them are not read (each commit lists its marks: its cost stays bounded)."""
        offsets = list(self._offsets.get(tp, {}))
        if but:
            offsets = [offset for offset in offsets if offset not in but]
        last = [(taking.start, taking.stop)] if taking else []
        runs, complete = _runs(offsets, BRIDGED_RANGES)
        ranges = _joined([*runs, *last])
        if len(ranges) > MARK_RANGES:  # those a resulted gap parts, joined
            ranges = self._bridged(tp, ranges)
        if len(ranges) <= MARK_RANGES:
            return ranges, complete
        if last:  # the oldest, and the batch being taken the last of them
            return (*ranges[: MARK_RANGES - 1], ranges[-1]), False
        return ranges[:MARK_RANGES], False

    def _bridged(self, tp: TopicPartition, ranges: Ranges) -> Ranges:
        """``ranges`` (of ``tp``'s offsets not reported, more than :data:`MARK_RANGES`) with as
        many of the gaps between them joined as it takes, the shortest first, of the gaps whose
        every offset is resulted (:meth:`reported`): a mark names those lost too, which the
        ledger ignores (it has their results), so that it names every offset not reported
        where the commands of other targets that ended between them parted them into more
        ranges than it lists (a paced key's blast in a partition it shares with a quick one).
        A gap holding anything else (a command forwarded or handed back, the copy of one
        called elsewhere, a record that did not decode, an offset another run took) is never
        joined: named lost, a command forwarded was called twice."""
        resulted = self._resulted.get(tp, set())
        gaps = sorted(
            (after[0] - before[1], i)
            for i, (before, after) in enumerate(itertools.pairwise(ranges))
            if all(offset in resulted for offset in range(before[1], after[0]))
        )
        joined = {i for _, i in gaps[: len(ranges) - MARK_RANGES]}
        bridged: list[tuple[int, int]] = []
        for i, (start, stop) in enumerate(ranges):
            if i - 1 in joined:
                bridged[-1] = (bridged[-1][0], stop)
            else:
                bridged.append((start, stop))
        return tuple(bridged)

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
            self._resulted.pop(tp, None)
            self._kept.pop(tp, None)


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

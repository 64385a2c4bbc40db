"""Which people the ledger may delete from its table: those whose state its rules already
treat as never heard of (``models.state.forgettable_at``), a margin after that.

Without it the table (and its compacted changelog, which a recovering worker reads whole)
kept every person ever seen: one who sent a single webhook stayed for good, with a fingerprint
past its retention, since only the person's own next webhook pruned their state. A week of
ten new people a second is six million entries.

A table is written only in stream context, and the changelog partition comes from the event
being decided: so each partition's people are deleted while one of its batches is stored,
never by a timer. A quiet partition waits for its next message (it grows no more meanwhile).
The index is built as the ledger stores states, and from the table after a recovery
(:meth:`Forgetting.track_raw`), by when each person falls due; a batch costs what is due. The
scan does not know a person's partition (the table's keys come without it), and working it
out (the producers' murmur2 of the key, in Python) would double the scan's time: it is worked
out when the person falls due.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable

from models.ledger import PersonState, Policy
from models.state import forgettable_at
from streams.codecs import decode

# deleted this long after the rules forget a person: a message older than that (the time it
# carries) would be judged against a state the table no longer has, where a replay still
# has it; a day is far more than any message waits in [requests]
MARGIN_MS = 24 * 3600 * 1000

# a stored state with nothing in flight and nothing parked holds no text of a webhook, only
# numbers and hex ids: its times can be read without decoding it (a scan of a million people)
NOTHING_PARKED = b'"parked":{}'
_TIMES = re.compile(rb'"at_ms":(\d+)')
_WINDOW_START = re.compile(rb'"window":\{"start":(\d+)')


class Forgetting:
    """By partition, the people that fall due (a heap by when, with the latest due of each
    person; an entry that a later store replaced is dropped when it surfaces, and the heap is
    rebuilt when such entries outnumber the live ones)."""

    def __init__(
        self,
        policy: Policy,
        partition_of: Callable[[bytes], int] | None = None,
        margin_ms: int = MARGIN_MS,
    ) -> None:
        self._policy = policy
        self._partition_of = partition_of
        self._margin_ms = margin_ms
        # by partition; None: found by the scan, partition not worked out yet
        self._due: dict[int | None, dict[bytes, int]] = {}
        self._heaps: dict[int | None, list[tuple[int, bytes]]] = {}

    def __len__(self) -> int:
        return sum(len(people) for people in self._due.values())

    def track(self, partition: int | None, person: bytes, state: PersonState) -> None:
        """The person's state as stored now."""
        at = forgettable_at(state, self._policy)
        self._set(partition, person, None if at is None else at + self._margin_ms)

    def track_raw(self, person: bytes, raw: bytes) -> None:
        """As :meth:`track`, from the state's stored bytes (a scan of the recovered table;
        its partition is worked out once it falls due). Without ``partition_of``: nothing."""
        if self._partition_of is None or b'"inflight":{}' not in raw:
            return  # (in flight: the ledger tracks the person again when it ends)
        partition = None
        if NOTHING_PARKED not in raw:
            self.track(partition, person, decode(PersonState, raw))
            return
        times = [int(t) for t in _TIMES.findall(raw)]
        start = _WINDOW_START.search(raw)
        if start is not None:
            times.append(int(start.group(1)) * 1000)
        at = max(times, default=0) + self._policy.fingerprint_retention_ms
        self._set(partition, person, at + self._margin_ms)

    def ripe(self, state: PersonState, now_ms: int) -> bool:
        """Whether the person may be deleted now, as their state stands."""
        at = forgettable_at(state, self._policy)
        return at is not None and now_ms >= at + self._margin_ms

    def due(self, partition: int, now_ms: int) -> list[bytes]:
        """The people of ``partition`` to delete now (each once: they leave the index)."""
        scanned, unplaced = self._heaps.get(None), self._due.get(None, {})
        while scanned and scanned[0][0] <= now_ms and self._partition_of is not None:
            at, person = heapq.heappop(scanned)
            if unplaced.get(person) == at:
                del unplaced[person]
                self._set(self._partition_of(person), person, at)
        heap, people = self._heaps.get(partition), self._due.get(partition)
        found: list[bytes] = []
        while heap and people is not None and heap[0][0] <= now_ms:
            at, person = heapq.heappop(heap)
            if people.get(person) == at:
                del people[person]
                found.append(person)
        return found

    def clear(self) -> None:
        """Forget everything (a rebalance: a scan of the recovered table tracks them again)."""
        self._due.clear()
        self._heaps.clear()

    def _set(self, partition: int | None, person: bytes, at: int | None) -> None:
        if partition is not None:  # known now: the scan's entry, if any, is stale
            self._due.get(None, {}).pop(person, None)
        people = self._due.setdefault(partition, {})
        if at is None:
            people.pop(person, None)
            return
        if people.get(person) == at:
            return
        people[person] = at
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (at, person))
        if len(heap) > 2 * len(people) + 1024:  # mostly entries replaced since: rebuild
            heap[:] = [(due, who) for who, due in people.items()]
            heapq.heapify(heap)

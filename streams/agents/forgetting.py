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
(:meth:`Forgetting.scan`), by when each person falls due; a tick costs what is due.
"""

from __future__ import annotations

import heapq
import re

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

    def __init__(self, policy: Policy, margin_ms: int = MARGIN_MS) -> None:
        self._policy = policy
        self._margin_ms = margin_ms
        self._due: dict[int, dict[bytes, int]] = {}
        self._heaps: dict[int, list[tuple[int, bytes]]] = {}

    def __len__(self) -> int:
        return sum(len(people) for people in self._due.values())

    def track(self, partition: int, person: bytes, state: PersonState) -> None:
        """The person's state as stored now."""
        at = forgettable_at(state, self._policy)
        self._set(partition, person, None if at is None else at + self._margin_ms)

    def track_raw(self, partition: int, person: bytes, raw: bytes) -> None:
        """As :meth:`track`, from the state's stored bytes (a scan of the recovered table)."""
        if b'"inflight":{}' not in raw:
            self._set(partition, person, None)
            return
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

    def _set(self, partition: int, person: bytes, at: int | None) -> None:
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

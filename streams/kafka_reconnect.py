"""Reconnects to a broker that cannot be reached, spaced out: Kafka's own clients'
``reconnect.backoff.ms`` and ``reconnect.backoff.max.ms`` (KIP-144), which aiokafka lacks.

aiokafka connects again at every request to a broker it has no connection to, and every retry
loop of a client (the producer's sender, a consumer's fetcher, its group coordinator, the
metadata refresh) tries again after ``retry_backoff_ms`` (100 ms) at most. While a broker was
down a worker made about 115 connection attempts a second (its consumers, producers and
projector: 37 of them the projector's), an ingress holding a webhook about 20, each an ERROR
line of aiokafka's. ``retry_backoff_ms`` is no bound to raise: it spaces every retry, those of
a broker that answers (a leader moving, a coordinator loading) too.

So a client that failed to connect to a broker does not try it again for :data:`BASE_SECONDS`,
doubled at each failure in a row up to :data:`MAX_SECONDS`, each ±20% (clients started together
spread out), as Kafka's Java client does with its defaults (50 ms, 1 s). Meanwhile a request to
that broker waits out what is left of it and fails as if it had tried (aiokafka's callers go on
as after a failed connect: they retry, or wait for a broker to answer). A connection made ends
the back-off: a broker back is connected to within :data:`MAX_SECONDS` (and 20%) of its return.
Per client and broker; a client's connections to one broker (its coordinator's, its own) share
one back-off.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient, ConnectionGroup

BASE_SECONDS = 0.05
MAX_SECONDS = 1.0
JITTER = 0.2
_DOUBLINGS_TO_MAX = math.ceil(math.log2(MAX_SECONDS / BASE_SECONDS))


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0  # time.monotonic() before which no connection is tried
    tries: int = 0  # the pauses whose one try was taken


def delay(failures: int) -> float:
    """The pause after ``failures`` failed connects in a row, before its jitter. (A broker down
    for a quarter of an hour is a thousand failures: 2.0 ** 1024 is no float.)"""
    doublings = min(max(failures - 1, 0), _DOUBLINGS_TO_MAX)
    return min(BASE_SECONDS * 2.0**doublings, MAX_SECONDS)


_connect = AIOKafkaClient._get_conn


async def _get_conn(
    self: Any, node_id: Any, *, group: Any = ConnectionGroup.DEFAULT, no_hint: bool = False
) -> Any:
    conn = self._conns.get((node_id, group))
    if conn is not None and conn.connected():
        return conn
    backoffs: dict[Any, _Backoff] = self.__dict__.setdefault("_talkstream_backoffs", {})
    backoff = backoffs.get(node_id)
    if backoff is not None:
        left = backoff.until - time.monotonic()
        if left > 0:
            tries = backoff.tries
            await asyncio.sleep(left)
            conn = self._conns.get((node_id, group))
            if conn is not None and conn.connected():  # another request connected meanwhile
                return conn
            if backoffs.get(node_id) is not backoff or backoff.tries != tries:
                # another request waiting for this pause woke first and took its try (or a
                # connection ended the back-off): its outcome is this one's. (Every request
                # that waited tried at the pause's end: a consumer's fetcher, coordinator and
                # metadata refresh made two or three attempts at each pause, not one.)
                return None
        # the one try of this pause; requests waiting for it or arriving meanwhile wait for
        # the next
        backoff.tries += 1
        backoff.until = time.monotonic() + delay(backoff.failures + 1)
    conn = await _connect(self, node_id, group=group, no_hint=no_hint)
    if conn is not None:
        backoffs.pop(node_id, None)
        return conn
    backoff = backoffs.setdefault(node_id, _Backoff())
    backoff.failures += 1
    backoff.until = time.monotonic() + delay(backoff.failures) * random.uniform(
        1 - JITTER, 1 + JITTER
    )
    return None


def install() -> None:
    """Every aiokafka client of this process (ours, faust's) backs off so; idempotent."""
    AIOKafkaClient._get_conn = _get_conn

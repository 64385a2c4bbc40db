"""Reconnects to a broker that cannot be reached, spaced out: Kafka's own clients'
``reconnect.backoff.ms`` and ``reconnect.backoff.max.ms`` (KIP-144), which aiokafka lacks.

aiokafka connects again at every request to a broker it has no connection to, and every retry loop
of a client (the producer's sender, a consumer's fetcher, its group coordinator, the metadata
refresh) tries again after ``retry_backoff_ms`` (100 ms) at most (the producer's sender asking for
metadata while a partition has no leader: after none, but for our producers'
:func:`space_metadata_updates`). While a broker was down a worker made about 115 connection attempts
a second (its consumers, producers and projector: 37 of them the projector's), an ingress holding a
webhook about 20, each an ERROR line of aiokafka's. ``retry_backoff_ms`` is no bound to raise: it
spaces every retry, those of a broker that answers (a leader moving, a coordinator loading) too.

So a client that failed to connect to a broker does not try it again for :data:`BASE_SECONDS`,
doubled at each failure in a row up to :data:`MAX_SECONDS`, each ±20% (clients started together
spread out), as Kafka's Java client does with its defaults (50 ms, 1 s). Meanwhile a request to
that broker waits out what is left of it and fails as if it had tried (aiokafka's callers go on
as after a failed connect: they retry, or wait for a broker to answer). A connection made ends
the back-off: a broker back is connected to within :data:`MAX_SECONDS` (and 20%) of its return.
Per client and broker; a client's connections to one broker (its coordinator's, its own) share
one back-off.

A broker that answers is asked for metadata again after ``retry_backoff_ms`` at the soonest by
our producers (:func:`space_metadata_updates`).
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


def space_metadata_updates(client: Any) -> None:
    """``client``'s forced metadata updates start ``retry_backoff_ms`` (100 ms) after the last
    one was answered at the soonest; a caller asking meanwhile waits for the next one, which
    starts when that time is up, and has its answer, as does every caller that asked with it
    (one update for them all). The first after a quiet while starts at once, as does
    aiokafka's. (Spaced from the last one's start, two requests could go closer than that: a
    request goes on the synchronizer's next turn after its update starts, later on a busy host,
    and the next update's time did not wait for it: 83 ms apart, seen on a loaded host.)

    aiokafka's producer sender, while it holds a record for a partition with no known leader (a
    leader being elected, a partition offline), forces a metadata update and waits for it (or any
    other event) before it looks again; the comment says "wait backoff time", but an answer that
    still names no leader ends the wait at once, and it asks again: about 2,000 metadata requests a
    second from one producer on localhost (20,857 in 10 s), from every producer of every ingress and
    worker, to brokers busy electing a leader. Spaced, it asks ten times a second, as Kafka's Java
    client (``retry.backoff.ms``); a record whose leader is back is sent within ``retry_backoff_ms``
    (and a round trip) of it. An update already under way (aiokafka's own, every
    ``metadata_max_age_ms``, or one asked for) is joined, as aiokafka does."""
    force = client.force_metadata_update
    backoff = client._retry_backoff  # retry_backoff_ms, in seconds
    answered = -math.inf  # the loop's time at which the last forced update was answered
    pending: asyncio.Future[Any] | None = None  # the next one, asked for meanwhile

    def start() -> asyncio.Future[Any]:
        update: asyncio.Future[Any] = force()
        update.add_done_callback(answered_now)  # (before any caller awaits it: called first)
        return update

    def answered_now(_: asyncio.Future[Any]) -> None:
        nonlocal answered
        answered = asyncio.get_running_loop().time()

    def start_pending() -> None:
        nonlocal pending
        waiting, pending = pending, None
        if waiting is None:
            return

        def relay(update: asyncio.Future[Any]) -> None:
            if waiting.done():
                return
            if update.cancelled():
                waiting.cancel()
            elif (failed := update.exception()) is not None:
                waiting.set_exception(failed)
            else:
                waiting.set_result(update.result())

        start().add_done_callback(relay)

    def force_metadata_update() -> asyncio.Future[Any]:
        nonlocal pending
        if client._md_update_fut is not None or pending is not None:  # one already asked for
            return force() if pending is None else asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        left = answered + backoff - loop.time()
        if left <= 0:
            return start()
        pending = loop.create_future()
        loop.call_later(left, start_pending)
        return asyncio.shield(pending)

    client.force_metadata_update = force_metadata_update


def install() -> None:
    """Every aiokafka client of this process (ours, faust's) backs off so; idempotent."""
    AIOKafkaClient._get_conn = _get_conn

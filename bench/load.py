"""Webhook load from concurrent aiohttp clients, and the statistics the report uses.

Two shapes of load: :func:`blast` (closed loop: ``concurrency`` clients, each sends its next
webhook as soon as the previous one is answered: the highest rate the server sustains) and
:func:`paced` (open loop: webhook ``i`` leaves at ``start + i / rate`` whatever the server
does: latency at a given rate). Bodies are serialized before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

Tick = Callable[[int], None]
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Shot:
    """One webhook: when it left (epoch s), how long until its answer (s), and the answer."""

    index: int
    sent_at: float
    ack_seconds: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    request_id: str | None


def webhook(
    run: str,
    i: int,
    *,
    site: str,
    email: str,
    now: int,
    limit: int,
    llm_words: int = 150,
) -> dict[str, Any]:
    """A seed-shaped webhook with a usage limit; unique per ``(run, i)``."""
    return {
        "site": site,
        "email": email,
        "api_key": f"talkable-key-{run}",
        "openai": {
            "messages": [
                {"role": "user", "content": f"A humorous verse for customer {i} of run {run}."}
            ],
            "api_key": f"sk-bench-{run}",
            "model": "gpt-3.5-turbo",
            "max_tokens": str(llm_words),
        },
        "usage_limit": {
            "amount": str(limit),
            "duration_in_seconds": "3600",
            "start_time": str(now),
            "current_time": str(now),
            "current_usage_amount": "0",
        },
        "trigger_criteria": "true",
    }


def encode_all(bodies: Sequence[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(body).encode() for body in bodies]


def _session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def _post(session: aiohttp.ClientSession, url: str, i: int, body: bytes) -> Shot:
    sent_at, started = time.time(), time.perf_counter()
    request_id = None
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            status = response.status
            payload = await response.json(content_type=None)
            if isinstance(payload, dict):
                request_id = payload.get("request_id")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        status = 0
    return Shot(i, sent_at, time.perf_counter() - started, status, request_id)


async def blast(url: str, bodies: Sequence[bytes], concurrency: int, tick: Tick) -> list[Shot]:
    """Closed loop: ``concurrency`` clients send ``bodies`` in order, each as fast as answered."""
    shots: list[Shot] = []
    next_index = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            i = next_index
            next_index += 1
            shots.append(await _post(session, url, i, bodies[i]))
            tick(1)

    async with _session(concurrency) as session:
        await asyncio.gather(*(client(session) for _ in range(min(concurrency, len(bodies)))))
    return sorted(shots, key=lambda s: s.index)


async def paced(url: str, bodies: Sequence[bytes], rate: float, tick: Tick) -> list[Shot]:
    """Open loop: body ``i`` leaves at ``start + i / rate``, answered or not."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(session: aiohttp.ClientSession, i: int) -> Shot:
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        shot = await _post(session, url, i, bodies[i])
        tick(1)
        return shot

    async with _session(4096) as session:
        return list(await asyncio.gather(*(one(session, i) for i in range(len(bodies)))))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p99/max in milliseconds, rounded to 0.1 ms."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "p50_ms": ms(percentile(seconds, 50)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 and count else None


def ingress_summary(shots: Sequence[Shot], ok_status: int) -> dict[str, Any]:
    """Answer rate and acknowledgement latency of the webhooks that got ``ok_status``."""
    ok = [s for s in shots if s.status == ok_status]
    span = max(s.sent_at + s.ack_seconds for s in shots) - min(s.sent_at for s in shots)
    return {
        "sent": len(shots),
        "accepted": len(ok),
        "errors": len(shots) - len(ok),
        "seconds": round(span, 3),
        "answers_per_second": rate(len(ok), span),
        "ack": ms_summary([s.ack_seconds for s in ok]),
    }

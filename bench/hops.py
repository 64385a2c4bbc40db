"""Where the end-to-end time goes: one request's path, hop by hop, from Kafka timestamps.

Every record carries its producer's create time, so reading [requests], [generate] and
[completions] from a phase's start gives, per request: webhook sent → RequestReceived
(ingress) → GenerateText (ledger) → GenerationAttemptSucceeded (generator, LLM included) →
PublishCompletion (ledger) → the Talkable stand-in's receipt (publisher). Each hop includes
the wait before its consumer read the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.load import ms_summary
from streams.observability import BATCH_PHASES

# (hop, record it starts at, record it ends at); "sent"/"talkable" are measured over HTTP
PATH = (
    ("ingress", "sent", "requests/request_received"),
    ("ledger: admit", "requests/request_received", "generate/generate_text"),
    ("generator (LLM included)", "generate/generate_text", "requests/generation_succeeded"),
    ("ledger: completion", "requests/generation_succeeded", "completions/publish_completion"),
    ("publisher to Talkable", "completions/publish_completion", "talkable"),
)


async def record_times(
    options: Mapping[str, Any],
    topics: Mapping[str, str],
    partitions: int,
    since: float,
    wanted: set[str],
) -> dict[str, dict[str, float]]:
    """request_id → {"<topic name>/<kind>": first create time (epoch s)} from ``since`` on.

    ``options``: the Kafka client options (``client_options(settings)``).
    """
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await consumer.start()
    times: dict[str, dict[str, float]] = {}
    try:
        for short, topic in topics.items():
            parts = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(parts)
            starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in parts})
            ends = await consumer.end_offsets(parts)
            left = {}
            for tp in parts:
                found = starts.get(tp)
                offset = found.offset if found is not None else ends[tp]
                consumer.seek(tp, offset)
                if offset < ends[tp]:
                    left[tp] = ends[tp]
            while left:
                for tp, records in (await consumer.getmany(*left, timeout_ms=500)).items():
                    for record in records:
                        _note(times, wanted, short, record.value, record.timestamp / 1000)
                    if records and records[-1].offset + 1 >= left[tp]:
                        del left[tp]
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()
    return times


def _note(
    times: dict[str, dict[str, float]], wanted: set[str], topic: str, raw: Any, at: float
) -> None:
    try:
        value = json.loads(raw)
        request_id, kind = value["request_id"], value["kind"]
    except (ValueError, TypeError, KeyError):
        return
    if request_id in wanted:
        times.setdefault(request_id, {}).setdefault(f"{topic}/{kind}", at)


def breakdown(
    times: Mapping[str, Mapping[str, float]],
    sent: Mapping[str, float],
    published: Mapping[str, float],
    llm_latency: float,
) -> dict[str, Any]:
    """p50/p99/max per hop; the generator's also without the LLM latency."""
    found: dict[str, Any] = {}
    for hop, start, end in PATH:
        spans = []
        for request_id, at in times.items():
            begin = _moment(start, request_id, at, sent, published)
            finish = _moment(end, request_id, at, sent, published)
            if begin is not None and finish is not None:
                spans.append(finish - begin)
        found[hop] = ms_summary(spans)
        if hop.startswith("generator"):
            found["generator without the LLM"] = ms_summary([s - llm_latency for s in spans])
    return found


def _moment(
    name: str,
    request_id: str,
    at: Mapping[str, float],
    sent: Mapping[str, float],
    published: Mapping[str, float],
) -> float | None:
    if name == "sent":
        return sent.get(request_id)
    if name == "talkable":
        return published.get(request_id)
    return at.get(name)


def ledger_batches(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """What the ledgers' batches were in a phase, from the workers' running totals at its start
    and end (``Deployment.ledger_batches``): how many, their records on average, and the
    milliseconds each phase of a batch took on average (``talkstream_ledger_batch_seconds``:
    deciding its records, awaiting Kafka's acknowledgement of its outputs, then of its
    changelog writes). A record that arrives during a batch waits for it to end."""
    batches = round(after.get("batches", 0.0) - before.get("batches", 0.0))
    if batches <= 0:
        return {"batches": 0}

    def per_batch(name: str, scale: float = 1.0) -> float:
        return round((after.get(name, 0.0) - before.get(name, 0.0)) * scale / batches, 2)

    return {
        "batches": batches,
        "records": round(after.get("records", 0.0) - before.get("records", 0.0)),
        "records_per_batch": per_batch("records"),
        **{f"{phase}_ms": per_batch(phase, 1000) for phase in BATCH_PHASES},
    }

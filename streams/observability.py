"""Worker metrics (Prometheus) and health: ``/healthz`` (alive), ``/readyz`` (partitions
assigned and tables recovered, so the worker is taking decisions), ``/metrics``.

Every metric name starts with ``talkstream_``. Nothing here ever carries a secret: labels are
states, stages, services and topics only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models.events import LifecycleEvent

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.transitions = Counter(
            "talkstream_transitions",
            "Lifecycle transitions by state reached",
            ["state"],
            registry=r,
        )
        self.reissues = Counter(
            "talkstream_reissues",
            "In-flight work re-issued (deadline or retriable failure)",
            ["stage"],
            registry=r,
        )
        self.generation_latency = Histogram(
            "talkstream_generation_latency_seconds",
            "OpenAI generation time, retries included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("talkstream_tokens", "Tokens used", ["kind"], registry=r)
        self.in_flight = Gauge(
            "talkstream_in_flight", "Calls in flight in this worker", ["executor"], registry=r
        )
        self.upstream_retries = Counter(
            "talkstream_upstream_retries",
            "Retries inside one attempt (429/5xx/timeouts)",
            ["service"],
            registry=r,
        )
        self.gaps_repaired = Counter(
            "talkstream_gap_messages_repaired",
            "Messages the consumer skipped (rebalance) that the ledger read back and processed",
            registry=r,
        )
        self.dead_letters = Counter(
            "talkstream_dead_letters",
            "Messages sent to the dead-letter topic",
            ["topic"],
            registry=r,
        )

    def observe(self, event: LifecycleEvent) -> None:
        self.transitions.labels(state=event.state.value).inc()
        if event.previous_state is event.state:
            self.reissues.labels(stage=event.state.value).inc()
        if event.type == "TextGenerated":
            if event.latency_ms is not None:
                self.generation_latency.observe(event.latency_ms / 1000)
            self.tokens.labels(kind="prompt").inc(event.prompt_tokens or 0)
            self.tokens.labels(kind="completion").inc(event.completion_tokens or 0)


class ConsumerLag(Collector):
    """Lag per assigned partition, read from the faust consumer at scrape time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "talkstream_consumer_lag",
            "Messages behind the high watermark",
            labels=["topic", "partition"],
        )
        consumer = getattr(self.app, "_consumer", None)
        if consumer is not None:
            # faust keeps the last offset it read per partition (no public accessor)
            read = getattr(consumer, "_read_offset", {})
            for tp in sorted(consumer.assignment()):
                try:
                    highwater = consumer.highwater(tp)
                except Exception:  # not fetched yet
                    continue
                last = read.get(tp)
                position = last + 1 if last is not None else 0
                family.add_metric([tp.topic, str(tp.partition)], max(highwater - position, 0))
        yield family


def ready(app: Any) -> tuple[bool, str]:
    if getattr(app, "rebalancing", False):
        return False, "rebalancing"
    recovery = app.tables.recovery
    if getattr(app, "in_recovery", False) or not recovery.completed.is_set():
        return False, "recovering tables"
    return True, "ready"


async def serve_worker_http(
    app: Any, metrics: WorkerMetrics, host: str, port: int
) -> web.AppRunner:
    metrics.registry.register(ConsumerLag(app))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready(app)
        return web.json_response({"ready": ok, "status": why}, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    http = web.Application()
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    http.router.add_get("/metrics", metrics_view)
    runner = web.AppRunner(http, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("worker http on http://%s:%s (healthz, readyz, metrics)", host, bound)
    return runner

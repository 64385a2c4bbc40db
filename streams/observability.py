"""Worker metrics (Prometheus) and health: ``/healthz`` (alive), ``/readyz`` (a Kafka broker
answers, partitions assigned and tables recovered, so the worker is taking decisions, and its
executors' child ready too where they run in one; the projector on its own: a broker answers
and its database takes its writes), ``/metrics``.

Every metric name starts with ``talkstream_``. Nothing here ever carries a secret: labels are
states, stages, services and topics only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.events import LifecycleEvent
from streams import logs
from streams.settings import LISTEN_FIELDS, Settings, url_host
from streams.topics import partitions_added

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
# a ledger batch's phases: a few ms each on a quiet host; Kafka's acknowledgements run to its
# request timeout when it is out of reach
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30)
BATCH_RECORDS = (1, 2, 5, 10, 25, 50, 100, 250, 500)
# the ``phase`` label of talkstream_ledger_batch_seconds, in a batch's order (the bench reads them)
BATCH_PHASES = ("deciding", "outputs", "changelog")


class ProcessMetrics:
    """What every process that serves ``/metrics`` measures: its consumers' lag (at scrape
    time, :class:`ConsumerLag`) and its dead letters. The projector on its own serves only
    these: a worker's series there, always 0, would read as a worker that does nothing."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.consumers: list[Any] = []  # our own consumers (executors, projector): lag()
        self.dead_letters = Counter(
            "talkstream_dead_letters",
            "Messages sent to the dead-letter topic",
            ["topic"],
            registry=self.registry,
        )


class ExecutorMetrics(ProcessMetrics):
    """What the executors measure (their upstream calls, waits and targets): served by the
    worker that runs them, or by their own process (``TALKSTREAM_EXECUTORS=process``), which
    serves only these: a worker's series there, always 0, would read as a worker that does
    nothing."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.upstream_calls = Counter(
            "talkstream_upstream_calls",
            "Upstream calls by what their answer meant: answered, throttled (429), failed "
            "(outage: 5xx, connection, timeout), refused (no retry fixes it), resent (refused "
            "as sent, sent again as the answer asked: max_completion_tokens)",
            ["upstream", "outcome"],
            registry=r,
        )
        self.upstream_wait = Histogram(
            "talkstream_upstream_wait_seconds",
            "Time a command waited for its target (queue, pacing, circuit) before its outcome",
            ["upstream"],
            buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.targets = UpstreamTargets()
        r.register(self.targets)

    def without_upstream(self) -> None:
        """No executor series here (a worker whose executors run in a process of their own,
        which serves them): at 0 they would read as executors that call nothing."""
        for collector in (self.upstream_calls, self.upstream_wait, self.targets):
            self.registry.unregister(collector)

    def watch(self, executor: Any) -> None:
        """Per-target gauges of this executor's scheduler at scrape time; its calls counted."""
        upstream = UPSTREAM[executor.config.name]
        self.targets.executors.append(executor)
        self.consumers.append(executor)
        calls = self.upstream_calls
        executor.scheduler.on_call = lambda _, outcome: calls.labels(upstream, outcome).inc()
        wait = self.upstream_wait.labels(upstream)
        executor.on_outcome = lambda outcome: wait.observe(outcome.waited_s)


class WorkerMetrics(ExecutorMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
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
        self.gaps_repaired = Counter(
            "talkstream_gap_messages_repaired",
            "Messages the consumer skipped (rebalance) that the ledger read back and processed",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "talkstream_ledger_batch_seconds",
            "A ledger batch stored: deciding its records, then awaiting Kafka's acknowledgement "
            "of its outputs, then of its changelog writes",
            ["phase"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "talkstream_ledger_batch_records",
            "Records decided in a ledger batch stored (those read back included)",
            buckets=BATCH_RECORDS,
            registry=r,
        )

    def stored_batch(self, records: int, deciding: float, outputs: float, changelog: float) -> None:
        """A ledger batch stored, and the seconds each of its phases took."""
        self.batch_records.observe(records)
        for phase, seconds in zip(BATCH_PHASES, (deciding, outputs, changelog), strict=True):
            self.batch_seconds.labels(phase=phase).observe(seconds)

    def observe(self, event: LifecycleEvent) -> None:
        self.transitions.labels(state=event.state.value).inc()
        if event.previous_state is event.state:
            self.reissues.labels(stage=event.state.value).inc()
        if event.type == "TextGenerated":
            if event.latency_ms is not None:
                self.generation_latency.observe(event.latency_ms / 1000)
            self.tokens.labels(kind="prompt").inc(event.prompt_tokens or 0)
            self.tokens.labels(kind="completion").inc(event.completion_tokens or 0)


UPSTREAM = {"generator": "openai", "publisher": "talkable"}
MAX_TARGETS = 50  # labelled targets per upstream; the rest are summed as target=":other"
# the rest's label: a value no target's can be (a site slug has no ":", a key's fingerprint is
# hex), so a Talkable site named ``other`` is not read as the bucket, nor summed into it
OTHER_TARGETS = ":other"


class UpstreamTargets(Collector):
    """Per upstream target: queue depth, calls in flight, the pacing rate, 429s and the circuit.

    Labels are bounded: the ``MAX_TARGETS`` busiest targets of each executor by name (an OpenAI
    key's short fingerprint, never the key, and the model: OpenAI limits each model apart; a
    Talkable site, its model ""), the rest summed as ``OTHER_TARGETS`` (``:other``).
    """

    def __init__(self) -> None:
        self.executors: list[Any] = []

    def collect(self) -> Iterator[Metric]:
        labels = ["upstream", "target", "model"]
        queued = GaugeMetricFamily(
            "talkstream_upstream_queue_depth", "Commands waiting for their target", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "talkstream_upstream_in_flight", "Calls in flight to the target", labels=labels
        )
        rate = GaugeMetricFamily(
            "talkstream_upstream_rate",
            "Calls per second the target's pacing allows (learned from its limits)",
            labels=labels,
        )
        throttled = CounterMetricFamily(
            "talkstream_upstream_throttled", "429 answers from the target", labels=labels
        )
        circuit = GaugeMetricFamily(
            "talkstream_upstream_circuit",
            "The target's circuit: 0 closed, 1 half open (probing), 2 open (outage)",
            labels=labels,
        )
        total = GaugeMetricFamily(
            "talkstream_in_flight", "Calls in flight in this worker", labels=["executor"]
        )
        for executor in self.executors:
            upstream = UPSTREAM[executor.config.name]
            scheduler = executor.scheduler
            snaps, rest = scheduler.busiest(MAX_TARGETS)
            total.add_metric([executor.config.name], scheduler.in_flight)
            for snap in snaps:
                name = _labels(upstream, snap["target"])
                queued.add_metric(name, snap["queued"])
                in_flight.add_metric(name, snap["in_flight"])
                throttled.add_metric(name, snap["throttled"])
                circuit.add_metric(name, CIRCUIT[snap["circuit"]])
                if snap["rate"] is not None:
                    rate.add_metric(name, snap["rate"])
            if len(scheduler.targets) > MAX_TARGETS:
                other = [upstream, OTHER_TARGETS, ""]
                queued.add_metric(other, rest["queued"])
                in_flight.add_metric(other, rest["in_flight"])
                throttled.add_metric(other, rest["throttled"])
        yield from (queued, in_flight, rate, throttled, circuit, total)


CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}


MODEL_CHARS = 64  # of an OpenAI target's model, in its label


def _labels(upstream: str, target: str) -> list[str]:
    """``openai:<fingerprint>/<model>`` → the fingerprint and the model (which may hold a
    "/" itself); ``talkable:<site>`` → the site, whole (at most 200 characters: two sites
    alike in their first 16, an agency's ``brand-store-us`` and ``-eu``, were one label set)."""
    name = target.split(":", 1)[-1]
    if upstream == "openai":
        fingerprint, _, model = name.partition("/")
        return [upstream, fingerprint[:16], model[:MODEL_CHARS]]
    return [upstream, name, ""]


class ConsumerLag(Collector):
    """Lag per assigned partition, read at scrape time from the faust consumer (the ledger)
    and from each consumer of our own (the executors: what they took; the projector: what it
    applied)."""

    def __init__(self, app: Any, consumers: list[Any]) -> None:
        self.app = app
        self.consumers = consumers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "talkstream_consumer_lag",
            "Messages behind the high watermark",
            labels=["topic", "partition"],
        )
        consumer = getattr(self.app, "_consumer", None)
        if consumer is not None:
            # faust keeps an offset per partition (no public accessor): the last it read, or,
            # until it reads one after an assignment, the one it was sought to (its commit,
            # the next to read), which counted as read made a partition given to this worker
            # look one short of its backlog; our consumer notes the last it took since the
            # assignment (``taken``). A table's changelog is not read as a stream: the
            # table's own offset says how far it has applied (or, where it is the writer,
            # written) that partition
            read = getattr(consumer, "_read_offset", {})
            taken = getattr(consumer, "_taken", {})
            tables = {t.changelog_topic_name: t for t in self.app.tables.values()}
            for tp in sorted(consumer.assignment()):
                try:
                    highwater = consumer.highwater(tp)
                except Exception:  # not fetched yet
                    continue
                if highwater is None:  # not fetched yet (a changelog is fetched only to recover)
                    continue
                table = tables.get(tp.topic)
                if table is not None:
                    last = table.persisted_offset(tp)
                    position = last + 1 if last is not None else 0
                elif tp in taken:
                    position = taken[tp] + 1
                else:  # nothing taken since it was assigned: where it was sought to
                    position = read.get(tp) or 0
                family.add_metric([tp.topic, str(tp.partition)], max(highwater - position, 0))
        for own in self.consumers:
            for (topic, partition), lag in own.lag().items():
                family.add_metric([topic, str(partition)], lag)
        yield family


# a connection whose request has waited this long for any answer is to a broker that does not
# answer (a consumer's fetch is answered within its fetch_max_wait, 0.5 s, and a heartbeat in
# milliseconds, every 3 s)
KAFKA_SILENCE_SECONDS = 10.0


def kafka_unreachable(consumers: Iterable[Any], now: float | None = None) -> str | None:
    """None while a Kafka broker answers this process; otherwise why not, for ``/readyz``.

    Read, without a request of its own, from the connections of the process's own aiokafka
    consumers (the executors', the projector's: ``consumer._client._conns``, each with aiokafka's
    ``connected()``, its requests awaiting an answer, ``_requests``, and the time of its last
    answer, ``_last_action``). A consumer in a group always has a request on its way: a fetch
    long-polls (an idle partition is answered empty: no records is not no Kafka) and a heartbeat
    goes every 3 s. So a connection that is up and waits for nothing, or was answered within
    :data:`KAFKA_SILENCE_SECONDS`, is a broker answering. A broker stopped or killed closes
    them at once (aiokafka then tries to connect again, and holds a connection only once one
    answers); a broker that hangs, or a network that drops everything, leaves their requests
    unanswered. Any one consumer answered is enough: they all talk to the same brokers.
    ``consumers``: None for one not made yet."""
    now = time.monotonic() if now is None else now
    made = [consumer for consumer in consumers if consumer is not None]
    if not made:
        return "connecting to Kafka"
    up = [
        conn
        for consumer in made
        for conn in list(consumer._client._conns.values())
        if conn.connected()
    ]
    if not up:
        return "Kafka unreachable: no connection to a broker"
    silent = [now - conn._last_action for conn in up if conn._requests]
    if len(silent) < len(up) or min(silent) <= KAFKA_SILENCE_SECONDS:
        return None
    return f"Kafka unreachable: no broker has answered for {min(silent):.0f} s"


def ready(app: Any, consumers: Iterable[Any], now: float | None = None) -> tuple[bool, str]:
    """Whether this process takes decisions now, and if not why: Kafka out of reach of its own
    consumers (the executors and projector in ``consumers``) first, then faust's rebalance and
    table recovery; ``app`` None: a process without faust (the projector on its own), whose
    database must take its writes too (the worker's decisions go on without it). A worker
    told to stop says so first: its executors take nothing more, then close their consumers,
    which would read as Kafka out of reach. An executor whose commits Kafka refuses for good
    (``Executor.refused``) says so next: its partitions are stalled while the broker answers.
    An executor whose group has not given it its partitions yet (``Executor.joining``) is not
    ready either, once Kafka answers: the commands in its topic wait for it."""
    consumers = list(consumers)
    if any(getattr(own, "stopping", False) for own in consumers):
        return False, "stopping"
    refused = [why for own in consumers if (why := getattr(own, "refused", None))]
    if refused:  # an executor whose commits Kafka refuses until an operator acts: stalled
        return False, refused[0]
    if app is None:
        failing = [why for own in consumers if (why := getattr(own, "database_error", None))]
        if failing:  # first: a projector waiting for its database has no consumer yet
            return False, failing[0]
    readers = [own.consumer for own in consumers]
    if app is not None:  # a worker: those of its own consumers made so far say it, or else
        # faust's (its thread's): its executors run elsewhere (``EXECUTORS=process``, ``off``)
        # and its projector, if any, has none yet while it waits for its database (its None
        # read as "connecting to Kafka" for as long as it waited: the worker, deciding all the
        # same, was never ready)
        readers = [reader for reader in readers if reader is not None] or [_faust_consumer(app)]
    unreachable = kafka_unreachable(readers, now)
    if unreachable is not None:
        return False, unreachable
    joining = [why for own in consumers if (why := getattr(own, "joining", None))]
    if joining:  # an executor its group has not given its partitions yet: it takes nothing
        return False, joining[0]
    if app is None:
        return True, "ready"
    if getattr(app, "rebalancing", False):
        return False, "rebalancing"
    recovery = app.tables.recovery
    if getattr(app, "in_recovery", False) or not recovery.completed.is_set():
        return False, "recovering tables"
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        added = partitions_added(consumer.assignment(), app.conf.topic_partitions)
        apart = getattr(consumer, "unpaired", None)  # some of [requests] decided by no one
        if added or apart:
            return False, "; and ".join(why for why in (added, apart) if why)
    return True, "ready"


def _faust_consumer(app: Any) -> Any:
    """The aiokafka consumer of faust's consumer thread (None until it has one): its
    connections, read as :func:`kafka_unreachable` reads the executors'."""
    thread = getattr(getattr(app, "_consumer", None), "_thread", None)
    return getattr(thread, "_consumer", None)


# how long the worker's /readyz waits for its executors child's (``EXECUTORS=process``): a
# load balancer's probe waits 2 s (the ingress's and the console's /readyz answer within it)
CHILD_READY_SECONDS = 1.0


def executors_child_readyz(settings: Settings) -> str | None:
    """The ``/readyz`` of the worker's executors child (``EXECUTORS=process``), which the
    worker's own includes; None where they run in the worker, nowhere (``off``: another
    process's, not this worker's), or on any free port (``EXECUTORS_HTTP_PORT`` 0: not known
    here)."""
    if settings.executors != "process" or not settings.executors_http_port:
        return None
    host = url_host(settings.worker_http_host, to_reach=True)
    return f"http://{host}:{settings.executors_http_port}/readyz"


async def child_unready(url: str, timeout: float = CHILD_READY_SECONDS) -> str | None:
    """None while the child's ``/readyz`` at ``url`` says ready; otherwise why not: its own
    status (``stopping``, ``Kafka unreachable: ...``), or that it does not answer (starting,
    started again after an exit, frozen) within ``timeout``."""
    limit = aiohttp.ClientTimeout(total=timeout)
    try:
        async with aiohttp.ClientSession(timeout=limit) as http, http.get(url) as response:
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ClientError):
                body = None
            body = body if isinstance(body, dict) else {}
            parent = body.get("parent")
            if parent is not None and parent != os.getpid():
                # its port taken by another worker's child (two workers on one host, the
                # default port each): that one's readiness said as this one's
                return (
                    f"{url} answers for another worker's executors (pid {parent}'s), not this "
                    "one's: give each worker on a host its own TALKSTREAM_EXECUTORS_HTTP_PORT"
                )
            if response.status == 200:
                return None
            said = body.get("status")
            return str(said) if said else f"its /readyz answered {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"its /readyz does not answer ({type(exc).__name__})"


async def serve_or_log(
    app: Any, metrics: ProcessMetrics, settings: Settings, server: str
) -> web.AppRunner | None:
    """:func:`serve_worker_http` on ``server``'s address (``worker``, ``projector``); one it
    cannot have (a second one on this host) is logged with the setting to change, and the
    process keeps working, unobserved: None. A worker's ``/readyz`` includes its executors
    child's (:func:`executors_child_readyz`)."""
    host_field, port_field = LISTEN_FIELDS[server]
    host, port = getattr(settings, host_field), getattr(settings, port_field)
    child = executors_child_readyz(settings) if server == "worker" else None
    try:
        return await serve_worker_http(app, metrics, host, port, name=server, child=child)
    except OSError as exc:
        # a host that is no address of this machine's: not the port's fault
        field = host_field if isinstance(exc, socket.gaierror) else port_field
        log.error(
            "%s http not started on %s:%s (%s); set TALKSTREAM_%s",
            server,
            host,
            port,
            exc,
            field.upper(),
        )
        return None


async def serve_worker_http(
    app: Any,
    metrics: ProcessMetrics,
    host: str,
    port: int,
    *,
    name: str = "worker",
    child: str | None = None,
) -> web.AppRunner:
    """``/healthz``, ``/readyz`` and ``/metrics``; ``app`` None: a process without faust (the
    projector on its own), ready while a broker answers its consumer and its database takes
    its writes. ``child``: the ``/readyz`` of the worker's executors child, asked once the
    worker is ready itself: until it says ready, neither is the worker (``executors not ready:
    <why>``), its commands taken by no one here (it said ready before its executors' consumers
    had a broker, and while the child was down)."""
    metrics.registry.register(ConsumerLag(app, metrics.consumers))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready(app, metrics.consumers)
        if ok and child is not None:
            unready = await child_unready(child)
            if unready is not None:
                ok, why = False, f"executors not ready: {unready}"
        said: dict[str, Any] = {"ready": ok, "status": why}
        if name == "executors":  # whose: a worker asks its own child's (child_unready)
            said["parent"] = os.getppid()
        return web.json_response(said, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    from streams.refusals import AppRunner, refusals

    # what aiohttp refuses itself in JSON, quoting nothing (its text quotes the request line)
    http = web.Application(middlewares=[refusals])
    logs.redact_aiohttp_server_log()
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    http.router.add_get("/metrics", metrics_view)
    runner = AppRunner(http, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("%s http on http://%s:%s (healthz, readyz, metrics)", name, host, bound)
    return runner

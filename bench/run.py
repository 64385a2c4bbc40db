"""One benchmark run: the pipeline's phases, then the baselines, on one broker, in one run.

Order: warm-up (until the worker joined, then ``warm_requests`` webhooks for the broker's
JIT; their CPU is the cold start) → throughput (webhooks as fast as ``clients`` clients get
answers) → latency (an open-loop rate, a fraction of the measured throughput) → burst (usage
limits) → capacity (slow LLM) → noisy neighbours (a blast on a rate-limited key beside a
quiet site) → raw relay → inline handler (throughput, latency at the same rate, burst). The
result is one JSON document (:mod:`bench.report` renders it).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, NonEmptyGroup, for_code
from aiokafka.protocol.admin import DeleteGroupsRequest

from bench import baselines, machine, relay, report
from bench.config import BenchConfig
from bench.observe import LifecycleWatch
from bench.pipeline import Context, Pipeline, Progress, no_progress
from bench.system import PROJECT_ROOT, Broker, Deployment
from streams.kafka_options import client_options
from streams.settings import Settings
from streams.topics import ensure_topics

IDLE_SECONDS = 3.0


def run_bench(
    config: BenchConfig,
    *,
    progress: Progress = no_progress,
    say: Callable[[str], None] = lambda _: None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run every phase; return the result document. Processes are stopped in any case."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="talkstream-bench-"))
    # the environment's TALKSTREAM_KAFKA_* (version; TLS/SASL for --bootstrap) apply
    broker = Broker(root, config.bootstrap, Settings().kafka_version)
    described = machine.describe(broker.describe)  # now: its load average is the neighbours'
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    meter = machine.CpuMeter()
    failed = True
    made = False  # the run made its topics on the broker
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        app_id=f"bench{uuid.uuid4().hex[:8]}",
        partitions=config.partitions,
    )
    try:
        say("starting Kafka" if broker.embedded else f"using Kafka at {broker.bootstrap}")
        broker.start()
        meter.watch("kafka", broker.pid)
        system = Deployment(root, settings, workers=config.workers, executors=config.executors)
        asyncio.run(ensure_topics(settings))
        made = True  # one request makes them all
        if config.baselines:
            asyncio.run(
                relay.create_topics(
                    system.kafka_options,
                    system.relay_prefix,
                    config.relay_hops,
                    config.partitions,
                )
            )
        say(f"starting talkstream (app id {system.app_id}, logs in {root})")
        try:
            system.start()
            for name in system.processes.procs:
                meter.watch(name, system.processes.pid(name))
            ctx = Context(config, uuid.uuid4().hex[:8], int(time.time()), progress)
            result = asyncio.run(_measure(ctx, system, meter, say))
        finally:
            system.stop()
        failed = False
    finally:
        if made and not broker.embedded and not keep:  # its own broker goes with its data
            said = _remove_topics(settings)
            if said:
                say(said)
        broker.stop()
        if keep or (failed and any(root.iterdir())):  # a run that started nothing has none
            say(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["meta"] = {
        "started_at": started_at,
        "mode": config.mode,
        "seconds": round(time.monotonic() - started, 1),
        "argv": None,  # the command fills in how it was called
        "tree": machine.source_tree(PROJECT_ROOT),
    }
    result["machine"] = described
    result["config"] = config.as_dict()
    result["cpu_by_phase"] = meter.phases
    result["summary"] = report.summarize(result)
    return result


def _remove_topics(settings: Settings) -> str | None:
    """Delete the run's topics (its app id's, the relay's among them) and its consumer groups
    from a broker it did not start, where every run would otherwise leave a dozen topics and
    its groups' offsets behind; what was done, or why not."""

    async def remove() -> tuple[int, int, list[str]]:
        admin = AIOKafkaAdminClient(**client_options(settings))
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(f"{settings.app_id}-")]
            if ours:
                await admin.delete_topics(ours)
            groups, kept = await _remove_groups(admin, settings)
            return len(ours), groups, kept
        finally:
            await admin.close()

    where = f"{settings.app_id}-* from {settings.kafka_bootstrap}"
    try:
        count, groups, kept = asyncio.run(remove())
    except (KafkaError, OSError) as exc:
        return f"could not remove the run's topics {where}: {type(exc).__name__}: {exc}"
    if not (count or groups or kept):
        return None
    said = f"removed the run's {count} topics and {groups} consumer groups {where}"
    if kept:  # a member still in it (a process that did not leave): its offsets expire
        said += f"; left {', '.join(kept)} (offsets.retention.minutes removes them)"
    return said


async def _remove_groups(admin: AIOKafkaAdminClient, settings: Settings) -> tuple[int, list[str]]:
    """Delete the consumer groups the run's processes used (its app id, or starting with it
    and a dash); how many went, and those the broker kept. aiokafka's admin client has no call
    for it: a DeleteGroups request to each group's coordinator. The executors and the projector
    are static members, which do not leave their groups when they stop: a group is refused as
    not empty until their session times out, so it is asked again until then."""
    app_id = settings.app_id
    listed = await admin.list_consumer_groups()
    left = sorted({g for g, *_ in listed if g == app_id or g.startswith(f"{app_id}-")})
    removed, kept = 0, []
    deadline = time.monotonic() + settings.session_timeout_seconds + 5
    while left:
        refused: dict[str, str] = {}
        for group in left:
            node = await admin.find_coordinator(group)
            answer = await admin._client.send(node, DeleteGroupsRequest([group]))
            for name, code in answer.results:
                if code == 0:
                    removed += 1
                else:
                    refused[name] = for_code(code).__name__
        waiting = [g for g, why in refused.items() if why == NonEmptyGroup.__name__]
        kept = [f"{g} ({why})" for g, why in refused.items() if g not in waiting]
        if not waiting or time.monotonic() > deadline:
            kept += [f"{g} (NonEmptyGroup)" for g in waiting]
            break
        left = waiting
        await asyncio.sleep(1)  # its members' sessions end by the deadline: ask again
    return removed, kept


async def _idle(seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {}


async def _measure(
    ctx: Context, system: Deployment, meter: machine.CpuMeter, say: Callable[[str], None]
) -> dict[str, Any]:
    cfg = ctx.config
    watch = LifecycleWatch(system.kafka_options, system.topic("lifecycle"), cfg.partitions)
    await watch.start()
    pipeline: dict[str, Any] = {}
    found: dict[str, Any] = {"pipeline": pipeline, "baselines": {}}

    async def phase(name: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        meter.begin()
        outcome = await work()
        meter.end(name)
        return outcome

    try:
        pipe = Pipeline(ctx, system, watch)
        pipeline["warm_up_s"] = await pipe.warm_up()
        say(f"talkstream is up (first requests through in {pipeline['warm_up_s']} s)")
        if cfg.warm_requests:
            pipeline["warm"] = await phase("warm", pipe.warm)
        await phase("idle", lambda: _idle(IDLE_SECONDS))  # CPU the processes use doing nothing
        pipeline["throughput"] = await phase("throughput", pipe.throughput)
        measured = pipeline["throughput"]["end_to_end"]["published_per_second"] or 1.0
        rate = cfg.latency_rate(measured)
        pipeline["latency"] = await phase("latency", lambda: pipe.latency(rate))
        pipeline["burst"] = await phase("burst", pipe.burst)
        pipeline["capacity"] = await phase("capacity", pipe.capacity)
        pipeline["neighbours"] = await phase("neighbours", pipe.neighbours)
    finally:
        await watch.stop()
    if not cfg.baselines:
        return found
    driver = relay.Driver(
        system.processes,
        system.env,
        options=system.kafka_options,
        prefix=system.relay_prefix,
        hops=cfg.relay_hops,
        partitions=cfg.partitions,
    )
    await driver.start()
    meter.watch("relay", driver.pid)
    try:
        with ctx.progress("raw relay", cfg.relay_messages + cfg.paced_requests) as tick:
            found["baselines"]["raw_relay"] = await phase(
                "raw_relay",
                lambda: driver.measure(cfg.relay_messages, cfg.paced_requests, rate, tick),
            )
    finally:
        await driver.stop()
    inline = baselines.Inline(ctx, system)
    inline.start()
    meter.watch("inline", system.processes.pid("inline"))
    try:
        found["baselines"]["inline"] = {
            "throughput": await phase("inline_throughput", inline.throughput),
            "latency": await phase("inline_latency", lambda: inline.latency(rate)),
            "burst": await phase("inline_burst", inline.burst),
        }
    finally:
        inline.stop()
    return found

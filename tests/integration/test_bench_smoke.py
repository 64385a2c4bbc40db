"""A tiny ``talkstream bench`` on the session broker: every section of the report is there and
the pipeline's correctness counters are 0; SIGTERM ends a run with every process it started. No
speed is asserted: numbers are the report's business (BENCHMARKS.md), and this machine's load
is not a test's to judge."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import markdown
from bench.config import BenchConfig
from bench.machine import children
from bench.observe import wait_caught_up
from bench.report import COUNTERS, SECTIONS, _cpu_ms
from bench.run import run_bench
from streams.dev.kafka import EmbeddedKafka
from tests.integration.conftest import create_topic, produce, read_topic
from tests.support import streams_process

pytestmark = pytest.mark.integration


def topics(bootstrap: str) -> set[str]:
    async def listed() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return {t for t in await admin.list_topics() if not t.startswith("__")}  # Kafka's
        finally:
            await admin.close()

    return asyncio.run(listed())


def groups(bootstrap: str) -> set[str]:
    async def listed() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return {group for group, *_ in await admin.list_consumer_groups()}
        finally:
            await admin.close()

    return asyncio.run(listed())


def test_a_tiny_bench_reports_every_section_and_loses_nothing(
    kafka: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the executors and the projector are static members, whose groups can be deleted only
    # once their sessions end: the shortest a broker allows, for the run to clean up soon
    monkeypatch.setenv("TALKSTREAM_SESSION_TIMEOUT_SECONDS", "6")
    config = BenchConfig.preset("tiny", bootstrap=kafka.bootstrap, workers=2)
    before, groups_before = topics(kafka.bootstrap), groups(kafka.bootstrap)
    said: list[str] = []
    result = run_bench(config, say=said.append)
    # a broker it did not start is left with the topics and consumer groups it had (a dozen
    # topics a run, before, and the groups' offsets until they expired)
    assert topics(kafka.bootstrap) - before == set()
    assert groups(kafka.bootstrap) - groups_before == set(), said
    removed = [line for line in said if line.startswith("removed the run's 12 topics and ")]
    assert removed and "consumer groups bench" in removed[0] and "left" not in removed[0], said

    summary = result["summary"]
    assert set(SECTIONS) <= set(summary)
    assert {name: summary["correctness"][name] for name in COUNTERS} == dict.fromkeys(COUNTERS, 0)

    pipeline = result["pipeline"]
    # once a phase's requests ended, every consumer group committed all it read: with two
    # workers the second joins during the warm-up and takes partitions the first decided
    # but had not committed (what aiokafka fetched of them while the newcomer recovered its
    # table never reached the ledger, and its group stayed behind until their next message)
    caught_up = {
        phase: figures["worker_caught_up_s"]
        for phase, figures in pipeline.items()
        if isinstance(figures, dict) and "worker_caught_up_s" in figures
    }
    assert {"warm", "throughput", "latency", "burst", "capacity"} <= set(caught_up)
    assert None not in caught_up.values(), caught_up
    assert pipeline["throughput"]["states"] == {"published": config.requests}
    # the ledgers' batches, read off both workers' /metrics: each webhook's three records
    # (received, its text generated, published) were decided in the phase
    batches = pipeline["throughput"]["ledger_batches"]
    assert batches["batches"] > 0 and batches["records"] >= 3 * config.requests, batches
    assert pipeline["latency"]["ledger_batches"]["batches"] > 0
    assert pipeline["capacity"]["states"] == {"published": config.capacity_requests}
    burst = pipeline["burst"]
    assert burst["published"] == config.burst_people * config.burst_limit
    assert burst["states"]["limited"] == config.burst_people * (
        config.burst_size - config.burst_limit
    )
    # the blast key's calls are its own (the stand-in tells keys by their last 4 characters):
    # each published one was called once, plus the calls that were answered 429
    blast = pipeline["neighbours"]["blast"]
    assert blast["published"] == config.neighbour_requests
    assert blast["calls"] - blast["throttled_429"] == blast["published"]

    # CPU per webhook counts every worker process, not the first one only
    assert {"worker0", "worker1"} <= set(result["cpu_by_phase"]["throughput"]["cpu_s"])
    workers = [_cpu_ms(result, "throughput", (w,), config.requests) for w in ("worker0", "worker1")]
    by_process = summary["cpu_ms_per_request"]["talkstream_by_process"]
    assert by_process["worker"] == pytest.approx(sum(ms or 0.0 for ms in workers), abs=0.02)
    assert summary["cpu_ms_per_request"]["cold_start"] is not None  # the warm-up's own figure

    # the baselines ran in the same run, and the inline handler shows the flaw it stands for
    assert set(summary["baselines"]) == {"raw_relay", "inline"}
    assert summary["baselines"]["inline"]["limit_violations"] == config.burst_people * (
        config.burst_size - config.burst_limit
    )
    assert "| end-to-end throughput" in markdown.document({"quick": result})


def test_sigterm_ends_a_run_and_stops_every_process_it_started(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A CI job's timeout or a ``kill`` sends SIGTERM: the run stops its stand-ins, workers,
    projector and ingress as Ctrl-C does, rather than leaving them running without it."""
    options = ["--tiny", "--no-baselines", "--bootstrap", kafka.bootstrap]
    proc, out = streams_process(
        "bench", *options, "--results-dir", str(tmp_path), stderr=subprocess.STDOUT
    )
    try:
        out.until("talkstream is up", timeout=180)
        started = _descendants(proc.pid)
        commands = " ".join(_command(pid) for pid in started)
        assert all(f"streams {name}" in commands for name in ("worker", "ingress", "standin"))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=180)
    printed = out.rest(timeout=10)
    assert code != 0, printed
    assert not [pid for pid in started if _running(pid)]
    # it says where the interrupted run's logs are (and the test removes them)
    kept = [line.removeprefix("logs kept in ") for line in printed if "logs kept in " in line]
    assert len(kept) == 1 and (Path(kept[0]) / "worker0.log").exists(), printed
    shutil.rmtree(kept[0])


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (the harness's own ``children``, followed down)."""
    found, todo = set(), [root]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


def _command(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an ended child nobody has reaped yet)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_group_that_stays_behind_is_named_when_the_wait_for_it_ends(
    kafka: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """The bench waits after each phase until every consumer group committed all it read; a
    wait that runs out says which group and which partitions were still behind, and by how
    much (the figure alone, None, said nothing of where to look)."""
    topic, group = f"behind-{uuid.uuid4().hex[:8]}", f"behind-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(kafka.bootstrap, topic, 2))
    for _ in range(3):
        produce(kafka.bootstrap, topic, b"k", b"v")  # one partition gets all three
    [(partition, _, _, _), *_] = read_topic(kafka.bootstrap, topic)
    options = {"bootstrap_servers": kafka.bootstrap}

    async def commit(offset: int) -> None:
        consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, partition)])
            await consumer.commit({TopicPartition(topic, partition): offset})
        finally:
            await consumer.stop()

    asyncio.run(commit(1))
    with caplog.at_level(logging.WARNING, logger="bench.observe"):
        assert asyncio.run(wait_caught_up(options, {group: [topic]}, 2, timeout=1.0)) is None
    assert f"{group}': {{'{topic}[{partition}]': 2}}" in caplog.text, caplog.text
    asyncio.run(commit(3))
    assert asyncio.run(wait_caught_up(options, {group: [topic]}, 2, timeout=30.0)) is not None

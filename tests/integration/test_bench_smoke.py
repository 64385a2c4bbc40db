"""A tiny ``talkstream bench`` on the session broker: every section of the report is there and
the pipeline's correctness counters are 0. No speed is asserted: numbers are the report's
business (BENCHMARKS.md), and this machine's load is not a test's to judge."""

from __future__ import annotations

import pytest

from bench import markdown
from bench.config import BenchConfig
from bench.report import COUNTERS, SECTIONS, _cpu_ms
from bench.run import run_bench
from streams.dev.kafka import EmbeddedKafka

pytestmark = pytest.mark.integration


def test_a_tiny_bench_reports_every_section_and_loses_nothing(kafka: EmbeddedKafka) -> None:
    config = BenchConfig.preset("tiny", bootstrap=kafka.bootstrap, workers=2)
    result = run_bench(config)

    summary = result["summary"]
    assert set(SECTIONS) <= set(summary)
    assert {name: summary["correctness"][name] for name in COUNTERS} == dict.fromkeys(COUNTERS, 0)

    pipeline = result["pipeline"]
    assert pipeline["throughput"]["states"] == {"published": config.requests}
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

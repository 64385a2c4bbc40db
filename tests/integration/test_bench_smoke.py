"""A tiny ``talkstream bench`` on the session broker: every section of the report is there and
the pipeline's correctness counters are 0. No speed is asserted: numbers are the report's
business (BENCHMARKS.md), and this machine's load is not a test's to judge."""

from __future__ import annotations

import pytest

from bench import markdown
from bench.config import BenchConfig
from bench.report import COUNTERS, SECTIONS
from bench.run import run_bench
from streams.dev.kafka import EmbeddedKafka

pytestmark = pytest.mark.integration


def test_a_tiny_bench_reports_every_section_and_loses_nothing(kafka: EmbeddedKafka) -> None:
    config = BenchConfig.preset("tiny", bootstrap=kafka.bootstrap)
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

    # the baselines ran in the same run, and the inline handler shows the flaw it stands for
    assert set(summary["baselines"]) == {"raw_relay", "inline"}
    assert summary["baselines"]["inline"]["limit_violations"] == config.burst_people * (
        config.burst_size - config.burst_limit
    )
    assert "| end-to-end throughput" in markdown.document({"quick": result})

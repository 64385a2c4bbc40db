"""The benchmark's latency phase runs at half the measured throughput, or at the rate given
(``--latency-rate``), so that two trees or two settings can be compared at one load."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.command import bench
from bench.config import BenchConfig


def test_the_latency_rate_is_half_the_throughput_unless_one_is_given() -> None:
    assert BenchConfig.preset("quick").latency_rate(301.0) == pytest.approx(150.5)
    assert BenchConfig.preset("quick").latency_rate(0.4) == 1.0  # an open loop needs a rate
    fixed = BenchConfig.preset("quick", paced_rate=160.0, paced_requests=2_000)
    assert fixed.latency_rate(301.0) == 160.0
    assert fixed.paced_requests == 2_000


@pytest.mark.parametrize(
    ("option", "value"), [("--latency-rate", "0"), ("--latency-requests", "0")]
)
def test_a_latency_rate_or_size_below_one_webhook_is_refused_naming_the_option(
    option: str, value: str
) -> None:
    result = CliRunner().invoke(bench, ["--tiny", option, value])
    assert result.exit_code == 2
    assert option in result.output

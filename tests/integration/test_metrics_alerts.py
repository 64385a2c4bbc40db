"""What README's alert table says the metrics show, against a running worker on the real
broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import System, http, samples
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def worker_samples(system: System, name: str) -> list[tuple[dict[str, str], float]]:
    status, text = http("GET", f"{system.worker_url()}/metrics")
    assert status == 200
    return [(sample.labels, sample.value) for sample in samples(text, name)]


def test_a_slow_openai_shows_in_flight_and_not_as_consumer_lag(system: System) -> None:
    """README said ``talkstream_consumer_lag`` grows with a slow OpenAI ("check OpenAI
    latency"): the executors take every command from [generate] at once and queue it by
    target, so their lag stays 0 however slow OpenAI is; the calls waiting show in
    ``talkstream_in_flight`` and ``talkstream_upstream_queue_depth``."""
    system.wait_ready()
    system.openai("POST", "/_control", {"latency_seconds": 20})
    try:
        for n in range(6):
            status, body = system.post(seed_params(f"slow-{n}@example.com"))
            assert status == 202, body

        def waiting() -> float | None:
            found = sum(
                value
                for name in ("talkstream_upstream_in_flight", "talkstream_upstream_queue_depth")
                for labels, value in worker_samples(system, name)
                if labels["upstream"] == "openai"
            )
            return found if found == 6 else None

        wait_until(waiting, 60, what="the six slow calls in the generator")
        generate = f"{system.app_id}-generate"
        lags = [v for labels, v in worker_samples(system, "talkstream_consumer_lag")
                if labels["topic"] == generate]  # fmt: skip
        assert lags and all(lag == 0 for lag in lags)
    finally:
        system.openai("POST", "/_control", {"latency_seconds": 0})
    alerts = README.read_text(encoding="utf-8").split("**Alerts**", 1)[1]
    [row] = [line for line in alerts.splitlines() if line.startswith("| `talkstream_consumer_lag")]
    assert "slow OpenAI" not in row.split("A slow OpenAI")[0]
    assert "`talkstream_upstream_queue_depth`" in row

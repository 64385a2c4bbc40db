"""What the benchmark reports of the ledgers' batches in a phase: the difference of the
workers' running totals (``talkstream_ledger_batch_seconds``, ``..._records``) at its start and
end, on average a batch, and the table BENCHMARKS.md shows of it."""

from __future__ import annotations

import json
from typing import Any

from bench import markdown
from bench.hops import ledger_batches
from bench.report import RESULTS_DIR
from bench.system import LEDGER_BATCH_SAMPLES, LEDGER_BATCH_SECONDS
from streams.observability import WorkerMetrics

BEFORE = {"batches": 10.0, "records": 100.0, "deciding": 1.0, "outputs": 0.5, "changelog": 0.6}
AFTER = {"batches": 60.0, "records": 2600.0, "deciding": 2.0, "outputs": 0.8, "changelog": 1.1}


def test_a_phases_batches_are_the_difference_of_the_totals_on_average() -> None:
    assert ledger_batches(BEFORE, AFTER) == {
        "batches": 50,
        "records": 2500,
        "records_per_batch": 50.0,
        "deciding_ms": 20.0,
        "outputs_ms": 6.0,
        "changelog_ms": 10.0,
    }
    assert ledger_batches(AFTER, AFTER) == {"batches": 0}  # none stored: nothing to divide
    assert ledger_batches({}, {}) == {"batches": 0}


def test_the_samples_summed_are_what_a_worker_serves() -> None:
    """The names the bench reads off /metrics are the worker's own series (a renamed metric
    would leave every phase at 0 batches, and the table out, with no error)."""
    metrics = WorkerMetrics()
    metrics.stored_batch(12, 0.01, 0.002, 0.003)
    served = {
        sample.name: sample for family in metrics.registry.collect() for sample in family.samples
    }
    assert {*LEDGER_BATCH_SAMPLES, LEDGER_BATCH_SECONDS} <= set(served)
    assert served["talkstream_ledger_batch_records_sum"].value == 12
    phases = {
        s.labels["phase"]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == LEDGER_BATCH_SECONDS
    }
    assert phases == {"deciding", "outputs", "changelog"}


def test_the_table_shows_the_phases_measured_and_nothing_for_results_without_them() -> None:
    result: dict[str, Any] = json.loads((RESULTS_DIR / "full-2026-12-07T102642Z.json").read_text())
    assert markdown.batches_table(result) == ""  # written before the bench read them
    assert "A ledger batch" not in markdown.section(result)
    result["pipeline"]["throughput"]["ledger_batches"] = ledger_batches(BEFORE, AFTER)
    result["pipeline"]["latency"]["ledger_batches"] = {"batches": 0}
    table = markdown.batches_table(result)
    assert table.splitlines()[2:] == ["| throughput | 50 | 50.0 | 20.0 ms | 6.0 ms | 10.0 ms |"]
    assert table in markdown.section(result)

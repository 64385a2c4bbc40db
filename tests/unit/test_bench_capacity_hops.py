"""Issue 14 asks for a thousand generations in flight *with flat overhead*: the capacity run's
webhooks queue before the ledger, so its end to end measures the queue; the run says instead
what a generation took beyond the LLM with its neighbours in flight, beside the latency
phase's (a few dozen in flight)."""

from __future__ import annotations

import copy
import json
from typing import Any

from bench import markdown
from bench.report import RESULTS_DIR, summarize

RESULT: dict[str, Any] = json.loads((RESULTS_DIR / "full-2026-12-07T113847Z.json").read_text())
HOP = "generator without the LLM"


def with_capacity_hops(p50: float, p99: float) -> dict[str, Any]:
    result = copy.deepcopy(RESULT)
    hops = copy.deepcopy(result["pipeline"]["latency"]["hops"])
    hops[HOP] = {**hops[HOP], "p50_ms": p50, "p99_ms": p99}
    result["pipeline"]["capacity"]["hops"] = hops
    result["summary"] = summarize(result)
    return result


def test_the_capacity_phase_says_a_generations_time_beyond_the_llm_beside_the_paced_ones() -> None:
    result = with_capacity_hops(61.0, 140.0)
    cap = result["summary"]["capacity"]
    paced = result["pipeline"]["latency"]["hops"][HOP]
    assert cap["generation_beyond_llm_p50_ms"] == 61.0
    assert cap["generation_beyond_llm_p99_ms"] == 140.0
    assert cap["paced_generation_beyond_llm_p50_ms"] == paced["p50_ms"]
    assert cap["paced_generation_beyond_llm_p99_ms"] == paced["p99_ms"]
    rate = result["pipeline"]["latency"]["offered_per_second"]
    row = next(line for line in markdown.table(result).splitlines() if "beyond the LLM" in line)
    assert row.startswith("| capacity: a generation's time beyond the LLM p50 / p99 ")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:] == [
        "61.0 / 140.0 ms",
        "—",
        "—",
        f"{paced['p50_ms']:.1f} / {paced['p99_ms']:.1f} ms at {rate:,.0f}/s",
    ]


def test_runs_recorded_before_the_capacity_phase_had_hops_show_no_such_row() -> None:
    assert "hops" not in RESULT["pipeline"]["capacity"]
    result = copy.deepcopy(RESULT)
    result["summary"] = summarize(result)
    assert "generation_beyond_llm_p50_ms" not in result["summary"]["capacity"]
    assert "beyond the LLM" not in markdown.table(result)

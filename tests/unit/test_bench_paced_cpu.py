"""What a webhook of the latency phase (the paced rate) cost beside one at saturation: at the
paced rate each process wakes for a few records at a time, and the 2-core machine the bench
runs on is nearly full at half the pipeline's throughput. The run's section says so."""

from __future__ import annotations

import copy
import json
from typing import Any

from bench import markdown
from bench.report import RESULTS_DIR, summarize

RESULT: dict[str, Any] = json.loads((RESULTS_DIR / "full-2026-12-07T113847Z.json").read_text())


def test_the_paced_phases_cpu_is_summarized_per_webhook_and_by_process() -> None:
    result = copy.deepcopy(RESULT)
    lat = result["cpu_by_phase"]["latency"]
    lat["cpu_s"] = {"ingress": 1.0, "kafka": 1.5, "worker0": 2.0, "worker0-executors": 1.5,
                    "bench": 9.0, "openai": 9.0, "inline": 9.0}  # fmt: skip
    result["cpu_by_phase"]["idle"] = {"cpu_s": {}, "wall_s": 3.0}  # nothing burnt idle
    result["cpu_by_phase"]["inline_latency"]["cpu_s"] = {"inline": 1.6, "kafka": 9.0}
    requests = result["pipeline"]["latency"]["requests"]  # 1,000
    cpu = summarize(result)["cpu_ms_per_request"]
    assert requests == 1000
    assert cpu["paced"] == 6.0  # worker(s), ingress and kafka; not stand-ins, not the load
    assert cpu["paced_by_process"] == {"worker": 3.5, "ingress": 1.0, "kafka": 1.5}
    assert cpu["inline_paced"] == 1.6


def test_the_section_says_it_beside_the_cost_at_saturation_and_the_cores_asked_for() -> None:
    result = copy.deepcopy(RESULT)
    result["summary"] = summarize(result)
    cpu = result["summary"]["cpu_ms_per_request"]
    text = markdown.section(result)
    rate = result["pipeline"]["latency"]["offered_per_second"]
    paced, inline = markdown._n(cpu["paced"], " ms"), markdown._n(cpu["inline_paced"], " ms")
    assert f"At the paced rate ({rate:,.0f}/s) a webhook cost talkstream {paced}" in text
    assert f"{cpu['paced'] / cpu['talkstream']:.1f}x its cost at saturation" in text
    assert f"the inline handler's {inline}" in text
    assert f"ask for {cpu['paced'] * rate / 1000:.2f} of the machine's 2 cores" in text


def test_results_summarized_before_it_show_nothing_of_it() -> None:
    assert "paced" not in RESULT["summary"]["cpu_ms_per_request"]
    assert "At the paced rate" not in markdown.section(RESULT)

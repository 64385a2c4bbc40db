"""The result document: its summary, its JSON file, and BENCHMARKS.md rendered from it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.system import PROJECT_ROOT

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DOC = PROJECT_ROOT / "BENCHMARKS.md"
SECTIONS = ("ingress", "end_to_end", "capacity", "correctness", "baselines", "ratios")
# and "neighbours" (the noisy-neighbour phase) in runs that have it
COUNTERS = ("lost", "duplicate_events", "limit_violations")  # must all be 0


def _get(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _pct(part: float | None, whole: float | None) -> float | None:
    return round(100 * part / whole, 1) if part and whole else None


def _times(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _cpu_ms(result: Mapping[str, Any], phase: str, names: tuple[str, ...], count: int) -> Any:
    """CPU milliseconds per item the named processes (prefixes) spent in a phase, less what
    they burn when idle (measured before the phases: timers, polling, the JVM)."""
    usage = _get(result, f"cpu_by_phase.{phase}") or {}
    idle = _get(result, "cpu_by_phase.idle") or {"cpu_s": {}, "wall_s": 1.0}
    spent = 0.0
    for name, seconds in usage.get("cpu_s", {}).items():
        if name.startswith(names):
            idle_rate = idle["cpu_s"].get(name, 0.0) / idle["wall_s"]
            spent += max(0.0, seconds - idle_rate * usage["wall_s"])
    return round(1000 * spent / count, 2) if spent and count else None


# talkstream's processes, as the CPU table names them (prefixes): the workers (their children
# too), the ingress, the embedded broker; not the stand-ins, not the load generator
SYSTEM = ("worker", "ingress", "kafka")


def _beyond_the_llm(capacity: Mapping[str, Any], latency: Mapping[str, Any]) -> dict[str, Any]:
    """A generation's time beyond the LLM's (the generator's hop: its command's creation to its
    result's) in the capacity phase, a thousand or more in flight, and in the latency phase,
    a few dozen: flat if they are alike. Runs recorded before the capacity phase had its hops
    have none."""
    hop = "generator without the LLM"
    if hop not in capacity.get("hops", {}):
        return {}
    ours, paced = capacity["hops"][hop], latency["hops"][hop]
    return {
        "generation_beyond_llm_p50_ms": ours["p50_ms"],
        "generation_beyond_llm_p99_ms": ours["p99_ms"],
        "paced_generation_beyond_llm_p50_ms": paced["p50_ms"],
        "paced_generation_beyond_llm_p99_ms": paced["p99_ms"],
    }


def _by_process(result: Mapping[str, Any], phase: str, count: int) -> dict[str, Any]:
    """:func:`_cpu_ms` of each of talkstream's processes apart."""
    return {name: _cpu_ms(result, phase, (name,), count) for name in SYSTEM}


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    p, b = result["pipeline"], result.get("baselines", {})
    thr, lat, burst, cap = p["throughput"], p["latency"], p["burst"], p["capacity"]
    nb = p.get("neighbours")  # runs recorded before this phase existed have none
    warm = p.get("warm")  # runs recorded before the long warm-up have none
    phases = [thr, lat, burst, cap] + [ph for ph in (nb, warm) if ph]
    relay, inline = b.get("raw_relay"), b.get("inline")
    ours_tput = thr["end_to_end"]["published_per_second"]
    summary: dict[str, Any] = {
        "ingress": {
            "clients": thr["clients"],
            "acks_per_second": thr["ingress"]["answers_per_second"],
            "ack_p50_ms": thr["ingress"]["ack"]["p50_ms"],
            "ack_p99_ms": thr["ingress"]["ack"]["p99_ms"],
            "paced_rate": lat["offered_per_second"],
            "paced_ack_p50_ms": lat["ingress"]["ack"]["p50_ms"],
            "paced_ack_p99_ms": lat["ingress"]["ack"]["p99_ms"],
            "errors": sum(ph.get("ingress", {}).get("errors", 0) for ph in phases),
        },
        "end_to_end": {
            "llm_latency_s": thr["llm_latency_s"],
            "published_per_second": ours_tput,
            "paced_rate": lat["offered_per_second"],
            "e2e_p50_ms": lat["end_to_end"]["p50_ms"],
            "e2e_p99_ms": lat["end_to_end"]["p99_ms"],
            "overhead_p50_ms": lat["overhead"]["p50_ms"],
            "overhead_p99_ms": lat["overhead"]["p99_ms"],
        },
        "capacity": {
            k: cap[k]
            for k in ("requests", "llm_latency_s", "max_generations_in_flight", "total_seconds")
        }
        | {"published_per_second": cap["published_per_second"]}
        | _beyond_the_llm(cap, lat),
        "correctness": {
            "lost": sum(ph["correctness"]["lost"] for ph in phases),
            "duplicate_events": sum(ph["correctness"]["duplicate_events"] for ph in phases),
            "limit_violations": burst["correctness"]["limit_violations"],
            "repeated_terminal_transitions": sum(
                ph["correctness"]["repeated_terminal_transitions"] for ph in phases
            ),
            "resent_publications_deduplicated": sum(
                ph["correctness"]["resent_publications_deduplicated"] for ph in phases
            ),
        },
        "cpu_ms_per_request": {
            "talkstream": _cpu_ms(result, "throughput", SYSTEM, thr["requests"]),
            "processes": "worker(s) + ingress + kafka (if embedded); not stand-ins, not load",
            "talkstream_by_process": _by_process(result, "throughput", thr["requests"]),
            # the warm-up's webhooks on freshly started processes (the broker's JIT at work)
            "cold_start": _cpu_ms(result, "warm", SYSTEM, warm["requests"]) if warm else None,
            "cold_start_by_process": _by_process(result, "warm", warm["requests"]) if warm else {},
            # the latency phase's webhooks, sent at the paced rate: each process wakes for a
            # few records at a time, and a webhook costs it more than at saturation
            "paced": _cpu_ms(result, "latency", SYSTEM, lat["requests"]),
            "paced_by_process": _by_process(result, "latency", lat["requests"]),
        },
        "baselines": {},
        "ratios": {},
    }
    if nb:
        summary["neighbours"] = {
            "requests": nb["requests"],
            "key_rps": nb["key_rps"],
            "llm_latency_s": nb["llm_latency_s"],
            "blast_seconds": nb["blast"]["seconds"],
            "seconds_the_limit_allows": nb["blast"]["seconds_the_limit_allows"],
            "blast_of_the_limit": nb["blast"]["of_the_limit"],
            "blast_published": nb["blast"]["published"],
            "throttled_share": nb["blast"]["throttled_share"],
            "quiet_requests": nb["quiet"]["requests"],
            "quiet_worst_over_llm_s": nb["quiet"]["worst_over_llm_s"],
            "quiet_e2e_p50_ms": nb["quiet"]["end_to_end"]["p50_ms"],
        }
    ours_cpu = summary["cpu_ms_per_request"]["talkstream"]
    if relay:
        summary["baselines"]["raw_relay"] = {
            "hops": relay["hops"],
            "messages_per_second": relay["messages_per_second"],
            "e2e_p50_ms": relay["end_to_end"]["p50_ms"],
            "e2e_p99_ms": relay["end_to_end"]["p99_ms"],
        }
        count = relay["messages"] + relay["paced_messages"]
        relay_cpu = _cpu_ms(result, "raw_relay", ("relay", "kafka"), count)
        summary["cpu_ms_per_request"]["raw_relay"] = relay_cpu
        summary["ratios"]["cpu_per_request_x_raw_relay"] = _times(ours_cpu, relay_cpu)
        summary["ratios"]["throughput_pct_of_raw_relay"] = _pct(
            ours_tput, relay["messages_per_second"]
        )
        summary["ratios"]["overhead_p50_x_relay_latency"] = _times(
            lat["overhead"]["p50_ms"], relay["end_to_end"]["p50_ms"]
        )
    if inline:
        it, il, ib = inline["throughput"], inline["latency"], inline["burst"]
        summary["baselines"]["inline"] = {
            "clients": it["clients"],
            "published_per_second": it["end_to_end"]["published_per_second"],
            "answers_per_second": it["answers"]["answers_per_second"],
            "answer_p50_ms": it["answers"]["ack"]["p50_ms"],
            "answer_p99_ms": it["answers"]["ack"]["p99_ms"],
            "e2e_p50_ms": il["end_to_end"]["p50_ms"],
            "e2e_p99_ms": il["end_to_end"]["p99_ms"],
            "overhead_p50_ms": il["overhead"]["p50_ms"],
            "overhead_p99_ms": il["overhead"]["p99_ms"],
            "errors": it["answers"]["errors"] + il["answers"]["errors"],
            "duplicate_events": sum(x["correctness"]["duplicate_events"] for x in (it, il, ib)),
            "limit_violations": ib["correctness"]["limit_violations"],
            "burst_published": ib["published"],
        }
        inline_cpu = _cpu_ms(result, "inline_throughput", ("inline",), it["requests"])
        summary["cpu_ms_per_request"]["inline"] = inline_cpu
        summary["cpu_ms_per_request"]["inline_paced"] = _cpu_ms(
            result, "inline_latency", ("inline",), il["requests"]
        )
        summary["ratios"]["cpu_per_request_x_inline"] = _times(ours_cpu, inline_cpu)
        summary["ratios"]["throughput_pct_of_inline"] = _pct(
            ours_tput, it["end_to_end"]["published_per_second"]
        )
        summary["ratios"]["overhead_p50_x_inline"] = _times(
            lat["overhead"]["p50_ms"], il["overhead"]["p50_ms"]
        )
        summary["ratios"]["overhead_p99_x_inline"] = _times(
            lat["overhead"]["p99_ms"], il["overhead"]["p99_ms"]
        )
    return summary


def save(result: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """``<mode>-<timestamp>.json`` plus ``latest-<mode>.json`` (what the document shows)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result["meta"]["started_at"].replace(":", "").replace("+0000", "Z")
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    path = directory / f"{result['meta']['mode']}-{stamp}.json"
    path.write_text(text)
    (directory / f"latest-{result['meta']['mode']}.json").write_text(text)
    return path


def load_latest(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    found = {}
    for mode in ("full", "quick"):
        path = directory / f"latest-{mode}.json"
        if path.exists():
            found[mode] = json.loads(path.read_text())
    return found


def document_results(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """What BENCHMARKS.md shows: each mode's latest result in ``directory``, and for a mode it
    has none of, the one in bench/results, so that rendering a run written elsewhere
    (``--results-dir``) replaces that run's section and drops no other."""
    return {**load_latest(RESULTS_DIR), **load_latest(directory)}

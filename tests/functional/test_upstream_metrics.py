"""The upstream targets on /metrics: the busiest ``MAX_TARGETS`` of each executor by name, the
rest summed as ``:other``, and every call in flight counted once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from streams.console.pacing import Pacing, parse
from streams.observability import MAX_TARGETS, OTHER_TARGETS, UpstreamTargets
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Job, Outcome, Scheduler


class Held:
    """A generator's scheduler whose calls all wait for ``release``, and the collector of its
    targets' metrics."""

    def __init__(
        self, max_in_flight: int, pacer_config: PacerConfig, executor: str = "generator"
    ) -> None:
        self.scheduler = Scheduler(executor, max_in_flight=max_in_flight, max_wait_s=600,
                                   refusal_s=60, pacer_config=pacer_config)  # fmt: skip
        self.release = asyncio.Event()
        self.registry = CollectorRegistry()
        collector = UpstreamTargets()
        collector.executors.append(SimpleNamespace(config=SimpleNamespace(name=executor),
                                                   scheduler=self.scheduler))  # fmt: skip
        self.registry.register(collector)

    def submit(self, target: str, key: str) -> None:
        async def call() -> tuple[str, Any]:
            await self.release.wait()
            return "ok", None

        async def report(_: Outcome[Any]) -> None:
            pass

        job = Job(key=key, attempt=1, scope="model", cost=0,
                  issued_s=self.scheduler.now(), call=call, report=report)  # fmt: skip
        self.scheduler.submit(target, job)

    async def dispatch(self) -> None:
        self.scheduler.dispatch()
        for _ in range(5):
            await asyncio.sleep(0)

    async def end(self) -> None:
        self.release.set()
        for _ in range(5):
            await asyncio.sleep(0)


async def test_a_site_named_other_is_not_the_rest_of_the_targets() -> None:
    """The targets past the busiest were labelled ``target="other"``, the very label of a
    Talkable site named ``other``: the console read that site as the bucket (its figures the
    rest's), and a site named ``other`` among the busiest beside the bucket was two series of
    one label set. The bucket's label is one no site slug can have (it has no ":")."""
    held = Held(1024, PacerConfig(initial_window=1), executor="publisher")
    for n in range(3):  # the busiest: 1 in flight, 2 queued
        held.submit("talkable:other", f"other-{n}")
    for i in range(MAX_TARGETS):  # a command each: the site named other is among the busiest
        held.submit(f"talkable:site{i:04d}", f"s{i}")
    await held.dispatch()
    text = generate_latest(held.registry).decode()
    lines = text.splitlines()
    depth = 'talkstream_upstream_queue_depth{model="",target="%s",upstream="talkable"} '
    [site] = [line for line in lines if line.startswith(depth % "other")]
    [rest] = [line for line in lines if line.startswith(depth % OTHER_TARGETS)]
    assert (float(site.split()[-1]), float(rest.split()[-1])) == (2.0, 0.0)
    pacing = Pacing()
    parse(text, pacing)
    pacing.reached.append("http://127.0.0.1:9101/metrics")
    found = pacing.site("other")
    assert found is not None and found.queue_depth == 2
    assert pacing.targets[("talkable", OTHER_TARGETS, "")].queue_depth == 0
    await held.end()


async def test_the_busiest_targets_by_name_and_the_rest_as_other() -> None:
    held = Held(1024, PacerConfig(initial_window=1))
    # target i has i + 1 commands: one in flight (its first call), the others queued
    targets = MAX_TARGETS + 30
    for i in range(targets):
        for n in range(i + 1):
            held.submit(f"openai:key{i:04d}/gpt-{i % 2}", f"t{i}-{n}")
    await held.dispatch()

    lines = generate_latest(held.registry).decode().splitlines()

    def value(metric: str, target: str, model: str) -> float:
        label = f'{metric}{{model="{model}",target="{target}",upstream="openai"}}'
        [found] = [line for line in lines if line.startswith(label + " ")]
        return float(found.split()[-1])

    named = {line.split('target="')[1].split('"')[0] for line in lines
             if line.startswith("talkstream_upstream_queue_depth{")}  # fmt: skip
    busiest = {f"key{i:04d}" for i in range(targets - MAX_TARGETS, targets)}
    assert named == busiest | {":other"}
    quiet = range(targets - MAX_TARGETS)  # the 30 least busy: i queued and 1 in flight each
    assert value("talkstream_upstream_queue_depth", ":other", "") == sum(quiet)
    assert value("talkstream_upstream_in_flight", ":other", "") == len(quiet)
    busiest_model = f"gpt-{(targets - 1) % 2}"  # a target is a key and a model, both labelled
    assert value("talkstream_upstream_in_flight", f"key{targets - 1:04d}", busiest_model) == 1
    assert (
        value("talkstream_upstream_queue_depth", f"key{targets - 1:04d}", busiest_model)
        == targets - 1
    )
    assert f'talkstream_in_flight{{executor="generator"}} {float(targets)}' in lines
    await held.end()


README = Path(__file__).resolve().parents[2] / "README.md"


async def test_one_busy_target_holds_the_generator_at_the_in_flight_level_the_alert_names() -> None:
    """README's alert on ``talkstream_in_flight`` named ``GENERATOR_MAX_IN_FLIGHT`` itself,
    which one busy key never reaches: the scheduler keeps the last sixteenth of the slots for
    targets running few calls (32 slots: 30 taken, 10 commands queued, the gauge at 30). The
    alert names the level the gauge reaches."""
    held = Held(32, PacerConfig(initial_window=64, probe_wait=0))
    for n in range(40):
        held.submit("openai:key0001/gpt-4o", f"j{n}")
    await held.dispatch()

    saturated = held.registry.get_sample_value("talkstream_in_flight", {"executor": "generator"})
    assert saturated == 32 - 32 // 16 == 30
    alerts = README.read_text(encoding="utf-8").split("**Alerts**", 1)[1]
    [row] = [line for line in alerts.splitlines() if line.startswith("| `talkstream_in_flight")]
    assert "15/16 of `GENERATOR_MAX_IN_FLIGHT`" in row
    await held.end()


async def test_two_sites_alike_in_their_first_16_characters_are_two_targets() -> None:
    """A Talkable target was labelled by its site's first 16 characters, so an agency's
    ``agency-brand-store-us`` and ``agency-brand-store-eu`` were two series of one label set
    (a scrape Prometheus refuses as duplicates), and the console, reading each site by those
    16 characters, showed both sites the two's queues and 429s summed."""
    held = Held(64, PacerConfig(initial_window=1), executor="publisher")
    us, eu = "agency-brand-store-us", "agency-brand-store-eu"
    for n in range(3):  # one in flight (the window), two queued
        held.submit(f"talkable:{us}", f"us-{n}")
    held.submit(f"talkable:{eu}", "eu-0")
    await held.dispatch()

    text = generate_latest(held.registry).decode()
    samples = [line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    assert len(samples) == len(set(samples)), text  # no two series of one label set
    pacing = Pacing()
    parse(text, pacing)
    shown = {site: pacing.site(site) for site in (us, eu)}
    assert {site: (t.queue_depth, t.in_flight) for site, t in shown.items() if t} == {
        us: (2, 1),
        eu: (0, 1),
    }
    await held.end()

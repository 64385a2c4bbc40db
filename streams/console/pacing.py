"""Pacing per upstream target, as the workers expose it on ``/metrics``.

The console scrapes every URL of ``TALKSTREAM_CONSOLE_WORKER_URLS`` (Prometheus text, parsed
with prometheus_client's parser) and sums the workers' figures per target: queue depth, calls
in flight and 429s. A target's pace and circuit are one executor's (its topic is keyed by
target, so one worker calls it at a time; another may still report what it learned before a
rebalance moved the partition): those of the worker where it has work, else the highest rate
and the worst circuit, never a sum. Talkable targets are sites (the metric label holds the
whole slug, lower-cased: one site in any case); OpenAI targets are a key's fingerprint (never
the key) and a model (OpenAI limits each model of a key apart). A worker that
does not answer is named, and its figures are "—". A site that the workers which answered do
not report was sent nothing since they started (their figures live in memory), unless one of
them has more sites than it names (:meth:`Pacing.unreported` says which).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from models.params import site_identity
from streams.observability import OTHER_TARGETS

TIMEOUT_SECONDS = 1.5
CIRCUIT = {0: "closed", 1: "half open", 2: "open"}
REPORTED_TARGETS = 50  # a worker's busiest targets of an upstream it names (the rest: ":other")


@dataclass
class Target:
    upstream: str  # "talkable" or "openai"
    target: str  # a site or an OpenAI key's fingerprint
    model: str = ""  # an OpenAI target's model
    queue_depth: float = 0
    in_flight: float = 0
    throttled: float = 0  # 429s since the workers started
    rate: float | None = None  # calls per second the pacing allows
    circuit: int = 0

    @property
    def circuit_name(self) -> str:
        return CIRCUIT.get(self.circuit, str(self.circuit))


@dataclass
class Pacing:
    targets: dict[tuple[str, str, str], Target] = field(default_factory=dict)
    reached: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    def site(self, site: str) -> Target | None:
        """The site's Talkable target, when a worker that answered knows it: the site in any
        case (the workers pace and label ``Shop`` and ``shop`` as one: ``site_identity``)."""
        return self.targets.get(("talkable", site_identity(site), ""))

    def unreported(self) -> str | None:
        """Why a site no worker reports has no 429s, queue or circuit to show; None when no
        worker answered (nothing is known: "—"). A worker keeps a target's figures in memory
        from the first command for it on, so after a restart a site no one has sent anything
        since is absent: that is no 429 and no queue since then, not an outage of ours. A
        worker past ``REPORTED_TARGETS`` Talkable targets names its busiest only (the others
        summed as ``:other``, a label no site has); a worker that did not answer may be the
        one calling it."""
        if not self.reached:
            return None
        workers = "worker" if len(self.reached) == 1 else "workers"
        if self.unreachable:
            workers += " that answered"
        if ("talkable", OTHER_TARGETS, "") in self.targets:
            return (
                f"not reported: no Talkable calls since the {workers} started, or not among the "
                f"{REPORTED_TARGETS} busiest sites each names"
            )
        # "Talkable": a site whose requests all failed at OpenAI (or were limited) was never
        # sent to Talkable, though OpenAI was called for it ("no calls" read as none at all)
        return f"no Talkable calls since the {workers} started"

    def openai(self) -> list[Target]:
        """An OpenAI key's models, each its own row: the busiest first."""
        return sorted(
            (t for t in self.targets.values() if t.upstream == "openai"),
            key=lambda t: (-t.queue_depth, -t.throttled, t.target, t.model),
        )


_FIELDS = {
    "talkstream_upstream_queue_depth": "queue_depth",
    "talkstream_upstream_in_flight": "in_flight",
    "talkstream_upstream_throttled": "throttled",
    "talkstream_upstream_rate": "rate",
    "talkstream_upstream_circuit": "circuit",
}


def parse(text: str, into: Pacing) -> None:
    """Add one worker's figures to ``into``."""
    own: dict[tuple[str, str, str], Target] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            attribute = _FIELDS.get(sample.name.removesuffix("_total"))
            if attribute is None:
                continue
            labels = sample.labels
            key = (labels.get("upstream", ""), labels.get("target", ""), labels.get("model", ""))
            target = own.setdefault(key, Target(*key))
            if attribute == "circuit":
                target.circuit = max(target.circuit, int(sample.value))
            else:
                setattr(target, attribute, (getattr(target, attribute) or 0) + sample.value)
    for key, target in own.items():
        _merge(into.targets.setdefault(key, Target(*key)), target)


def _busy(target: Target) -> bool:
    return target.queue_depth + target.in_flight > 0


def _merge(total: Target, worker: Target) -> None:
    """One worker's figures of a target into the others': counts add up; the pace and the
    circuit are the caller's (the worker with work), else the highest and the worst."""
    if _busy(total) != _busy(worker):
        owner = total if _busy(total) else worker
        rate, circuit = owner.rate, owner.circuit
    else:
        rates = [r for r in (total.rate, worker.rate) if r is not None]
        rate, circuit = max(rates, default=None), max(total.circuit, worker.circuit)
    total.queue_depth += worker.queue_depth
    total.in_flight += worker.in_flight
    total.throttled += worker.throttled
    total.rate, total.circuit = rate, circuit


async def scrape(urls: Sequence[str], session: aiohttp.ClientSession | None = None) -> Pacing:
    pacing = Pacing()
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        answers = await asyncio.gather(*(_get(client, url) for url in urls))
    finally:
        if own:
            await client.close()
    for url, text in zip(urls, answers, strict=True):
        if text is None:
            pacing.unreachable.append(shown(url))
            continue
        try:
            parse(text, pacing)
        except ValueError:
            pacing.unreachable.append(shown(url))
            continue
        pacing.reached.append(shown(url))
    return pacing


def shown(url: str) -> str:
    """A worker's URL as the overview names it: a password in it (``CONSOLE_WORKER_URLS``'s
    ``http://user:password@host``, a basic-auth proxy before the workers' ``/metrics``) hidden,
    as every URL talkstream shows is; the overview printed it whole."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


async def _get(client: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with client.get(
            url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS), allow_redirects=False
        ) as response:
            if response.status != 200:
                return None
            return await response.text()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None

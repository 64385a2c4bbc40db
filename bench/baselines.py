"""Driving the baselines with the same webhooks, rates and stand-ins as the pipeline.

The inline handler (:mod:`bench.inline`) answers when the work is done, so its
answer rate is its throughput; its Talkable events are timed by the same receipt clock.
The raw relay (:mod:`bench.relay`) is measured by its own driver there.
"""

from __future__ import annotations

import collections
from typing import Any

from bench import load
from bench.load import Shot
from bench.observe import Talkable, duplicate_events
from bench.pipeline import Context, limit_violations
from bench.system import Deployment, free_port


class Inline:
    def __init__(self, ctx: Context, system: Deployment) -> None:
        self.ctx, self.system = ctx, system
        self.port = free_port()
        self.talkable = Talkable(system.talkable_root)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/chat-gpt/generate"

    def start(self) -> None:
        args = ["-m", "bench.inline", "--port", str(self.port)]
        args += ["--openai-url", self.system.openai_url]
        args += ["--talkable-url", self.system.talkable_url]
        self.system.processes.spawn("inline", args, self.system.env)
        healthz = f"http://127.0.0.1:{self.port}/healthz"
        self.system.processes.wait_http(healthz, 30, "the inline handler")

    def stop(self) -> None:
        self.system.processes.stop("inline")

    def _bodies(self, phase: str, count: int, people: int | None = None, limit: int = 100) -> Any:
        people = people or count
        site = self.site(phase)
        return load.encode_all(
            [
                load.webhook(
                    f"{self.ctx.run}-inline-{phase}",
                    i,
                    site=site,
                    email=f"p{i % people}@{phase}.example.com",
                    now=self.ctx.now,
                    limit=limit,
                )
                for i in range(count)
            ]
        )

    def site(self, phase: str) -> str:
        return f"bench-inline-{phase}"

    async def _published(self, phase: str, shots: list[Shot]) -> tuple[dict[str, float], int]:
        site = self.site(phase)
        receipts = await self.talkable.receipts(site)
        ids = {s.request_id for s in shots if s.request_id}
        at = {rid: t for rid in ids if (t := receipts.published_at(site, rid)) is not None}
        return at, duplicate_events(await self.talkable.events(site))

    async def throughput(self) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.llm_latency)
        bodies = self._bodies("throughput", cfg.requests)
        with self.ctx.progress("inline throughput", len(bodies)) as tick:
            shots = await load.blast(self.url, bodies, cfg.inline_clients, tick)
        published_at, duplicates = await self._published("throughput", shots)
        first_sent = min(s.sent_at for s in shots)
        span = max(published_at.values(), default=first_sent) - first_sent
        return {
            "requests": cfg.requests,
            "clients": cfg.inline_clients,
            "llm_latency_s": cfg.llm_latency,
            "answers": load.ingress_summary(shots, 200),
            "end_to_end": {
                "published": len(published_at),
                "seconds": round(span, 3),
                "published_per_second": load.rate(len(published_at), span),
            },
            "correctness": {"duplicate_events": duplicates},
        }

    async def latency(self, rate: float) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.llm_latency)
        bodies = self._bodies("latency", cfg.paced_requests)
        with self.ctx.progress(f"inline latency: {rate:.0f}/s", len(bodies)) as tick:
            shots = await load.paced(self.url, bodies, rate, tick)
        published_at, duplicates = await self._published("latency", shots)
        sent = {s.request_id: s.sent_at for s in shots if s.request_id}
        e2e = [t - sent[rid] for rid, t in published_at.items()]
        return {
            "requests": cfg.paced_requests,
            "offered_per_second": round(rate, 1),
            "llm_latency_s": cfg.llm_latency,
            "answers": load.ingress_summary(shots, 200),
            "end_to_end": load.ms_summary(e2e),
            "overhead": load.ms_summary([t - cfg.llm_latency for t in e2e]),
            "correctness": {"duplicate_events": duplicates},
        }

    async def burst(self) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.llm_latency)
        people, size = cfg.burst_people, cfg.burst_size
        bodies = self._bodies("burst", people * size, people, cfg.burst_limit)
        with self.ctx.progress("inline burst", len(bodies)) as tick:
            shots = await load.blast(self.url, bodies, cfg.inline_clients, tick)
        published_at, duplicates = await self._published("burst", shots)
        index = {s.request_id: s.index for s in shots if s.request_id}
        published = collections.Counter(index[rid] % people for rid in published_at)
        return {
            "people": people,
            "webhooks_per_person": size,
            "limit": cfg.burst_limit,
            "published": len(published_at),
            "answers": load.ingress_summary(shots, 200),
            "correctness": {
                "duplicate_events": duplicates,
                "limit_violations": limit_violations(published, cfg.burst_limit),
            },
        }

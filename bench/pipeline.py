"""The phases that measure talkstream itself: webhooks in, Talkable events out.

Every phase sends webhooks to the real ingress, waits until each accepted request is terminal
on the lifecycle topic, and reads the Talkable stand-in's receipt clock. End to end = from the
webhook leaving the client to the Talkable stand-in receiving the event; overhead = end to
end minus the OpenAI stand-in's configured latency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench import hops, load
from bench.config import BenchConfig
from bench.load import Shot, Tick
from bench.observe import (
    InFlight,
    LifecycleWatch,
    Talkable,
    duplicate_events,
    wait_caught_up,
)
from bench.system import Deployment
from streams.ingress import RETRY_AFTER_SECONDS

CATCH_UP_TIMEOUT = 120.0  # for the worker's projector after the last terminal state
WARM_UP_TRIES = 12  # sends of a warm-up webhook not yet accepted
RETRY_AFTER_S = float(RETRY_AFTER_SECONDS)  # between them: what the ingress's 503 asks
Progress = Callable[[str, int], contextlib.AbstractContextManager[Tick]]


@contextlib.contextmanager
def no_progress(label: str, total: int) -> Iterator[Tick]:
    yield lambda _: None


@dataclass
class Context:
    config: BenchConfig
    run: str  # unique per run: every webhook differs from earlier runs' (no dedupe)
    now: int  # epoch seconds, the usage snapshot's time
    progress: Progress


@dataclass
class Settled:
    """A phase's webhooks after every accepted one ended (or the drain timeout passed)."""

    shots: list[Shot]
    accepted: dict[str, int]  # request_id → index of its webhook
    states: collections.Counter[str]
    published_at: dict[str, float]  # request_id → first Talkable receipt (epoch s)
    caught_up_s: float | None  # after the last terminal state, until the worker was idle
    correctness: dict[str, int]


class Pipeline:
    def __init__(self, ctx: Context, system: Deployment, watch: LifecycleWatch) -> None:
        self.ctx, self.system, self.watch = ctx, system, watch
        self.talkable = Talkable(system.talkable_root)

    def bodies(
        self,
        phase: str,
        count: int,
        *,
        people: int | None = None,
        limit: int = 100,
        openai_key: str | None = None,
    ) -> list[bytes]:
        people = people or count
        webhooks = [
            load.webhook(
                f"{self.ctx.run}-{phase}",
                i,
                site=self.site(phase),
                email=f"p{i % people}@{phase}.example.com",
                now=self.ctx.now,
                limit=limit,
            )
            for i in range(count)
        ]
        # one OpenAI key for every phase unless told (as one site's traffic uses one): a key
        # new to the worker is asked once before it is asked many times (streams/upstream),
        # a start-up wait of one LLM call that a phase would otherwise measure as overhead
        for webhook in webhooks:
            webhook["openai"]["api_key"] = openai_key or f"sk-bench-{self.ctx.run}"
        return load.encode_all(webhooks)

    def site(self, phase: str) -> str:
        return f"bench-{phase}"

    async def hops(self, done: Settled, shots: list[Shot], llm_latency: float) -> dict[str, Any]:
        """Where a phase's accepted webhooks spent their time, hop by hop (``bench.hops``),
        from the create times of their records since the first was sent."""
        sent = {rid: shots[i].sent_at for rid, i in done.accepted.items()}
        times = await hops.record_times(
            self.system.kafka_options,
            {name: self.system.topic(name) for name in ("requests", "generate", "completions")},
            self.ctx.config.partitions,
            min(sent.values(), default=time.time()) - 1,
            set(sent),
        )
        return hops.breakdown(times, sent, done.published_at, llm_latency)

    async def settle(self, phase: str, shots: list[Shot]) -> Settled:
        accepted = {s.request_id: s.index for s in shots if s.status == 202 and s.request_id}
        with self.ctx.progress(f"{phase}: waiting for terminal states", len(accepted)) as tick:
            missing = await self.watch.wait_terminal(accepted, self.ctx.config.drain_timeout, tick)
        app_id, topic = self.system.app_id, self.system.topic
        caught_up_s = await wait_caught_up(
            self.system.kafka_options,
            {  # faust's group (the ledger) is the app id; the others read in groups of their own
                app_id: [topic("requests")],
                f"{app_id}-projector": [topic("lifecycle")],
                f"{app_id}-generator": [topic("generate")],
                f"{app_id}-publisher": [topic("completions")],
            },
            self.ctx.config.partitions,
            CATCH_UP_TIMEOUT,
        )
        site = self.site(phase)
        receipts = await self.talkable.receipts(site)
        published_at = {
            rid: t for rid in accepted if (t := receipts.published_at(site, rid)) is not None
        }
        resent = sum(n - 1 for n in receipts.accepted_calls.values())
        return Settled(
            shots=shots,
            accepted=accepted,
            states=self.watch.states(accepted),
            caught_up_s=caught_up_s,
            published_at=published_at,
            correctness={
                "lost": len(missing),
                "duplicate_events": duplicate_events(await self.talkable.events(site)),
                "repeated_terminal_transitions": self.watch.repeated_terminals(accepted),
                "resent_publications_deduplicated": resent,
            },
        )

    async def warm_up(self, count: int = 20) -> float:
        """Until a first batch went all the way (the worker joined its group): seconds. A
        webhook answered otherwise than 202 is sent again, as Talkable does: the first ones
        after the topics were made can find a partition without a leader yet, and a 503 then
        means nothing was written."""
        started = time.monotonic()
        self.system.set_llm_latency(self.ctx.config.llm_latency)
        bodies = self.bodies("warmup", count)
        accepted: dict[int, str] = {}
        answers: collections.Counter[int] = collections.Counter()
        for _ in range(WARM_UP_TRIES):
            todo = [i for i in range(count) if i not in accepted]
            shots = await load.blast(self.system.ingress_url, [bodies[i] for i in todo], 4, _no)
            for shot in shots:
                if shot.status == 202 and shot.request_id:
                    accepted[todo[shot.index]] = shot.request_id
                else:
                    answers[shot.status] += 1
            if len(accepted) == count:
                break
            await asyncio.sleep(RETRY_AFTER_S)  # the pause a 503's Retry-After asks for
        else:
            raise RuntimeError(
                f"warm-up: only {len(accepted)} of {count} webhooks accepted in {WARM_UP_TRIES} "
                f"tries (other answers by status, 0 for none: {dict(answers)})"
            )
        ids = list(accepted.values())
        missing = await self.watch.wait_terminal(ids, 180, _no)
        if missing:
            raise RuntimeError(f"warm-up: {len(missing)} requests never ended; see worker log")
        return round(time.monotonic() - started, 1)

    async def warm(self) -> dict[str, Any]:
        """``warm_requests`` webhooks as in the throughput phase, not measured beyond their
        CPU: a long-running broker has compiled its hot paths, a fresh one has not."""
        cfg = self.ctx.config
        bodies = self.bodies("warm", cfg.warm_requests)
        started = time.monotonic()
        with self.ctx.progress("warm-up: sending", len(bodies)) as tick:
            shots = await load.blast(self.system.ingress_url, bodies, cfg.clients, tick)
        done = await self.settle("warm", shots)
        return {
            "requests": cfg.warm_requests,
            "seconds": round(time.monotonic() - started, 1),
            "states": dict(done.states),
            "worker_caught_up_s": done.caught_up_s,
            "correctness": done.correctness,
        }

    async def throughput(self) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.llm_latency)
        bodies = self.bodies("throughput", cfg.requests)
        batches = await asyncio.to_thread(self.system.ledger_batches)
        with self.ctx.progress("throughput: sending", len(bodies)) as tick:
            shots = await load.blast(self.system.ingress_url, bodies, cfg.clients, tick)
        done = await self.settle("throughput", shots)
        batches = hops.ledger_batches(batches, await asyncio.to_thread(self.system.ledger_batches))
        first_sent = min(s.sent_at for s in shots)
        span = max(done.published_at.values(), default=first_sent) - first_sent
        return {
            "requests": cfg.requests,
            "clients": cfg.clients,
            "llm_latency_s": cfg.llm_latency,
            "ingress": load.ingress_summary(shots, 202),
            "end_to_end": {
                "published": len(done.published_at),
                "seconds": round(span, 3),
                "published_per_second": load.rate(len(done.published_at), span),
            },
            "states": dict(done.states),
            "worker_caught_up_s": done.caught_up_s,
            "correctness": done.correctness,
            "ledger_batches": batches,
        }

    async def latency(self, rate: float) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.llm_latency)
        bodies = self.bodies("latency", cfg.paced_requests)
        batches = await asyncio.to_thread(self.system.ledger_batches)
        with self.ctx.progress(f"latency: {rate:.0f}/s", len(bodies)) as tick:
            shots = await load.paced(self.system.ingress_url, bodies, rate, tick)
        done = await self.settle("latency", shots)
        batches = hops.ledger_batches(batches, await asyncio.to_thread(self.system.ledger_batches))
        return {
            "requests": cfg.paced_requests,
            "offered_per_second": round(rate, 1),
            "llm_latency_s": cfg.llm_latency,
            "ingress": load.ingress_summary(shots, 202),
            "end_to_end": load.ms_summary(end_to_end(done, shots)),
            "overhead": load.ms_summary([t - cfg.llm_latency for t in end_to_end(done, shots)]),
            "hops": await self.hops(done, shots, cfg.llm_latency),
            "ledger_batches": batches,
            "states": dict(done.states),
            "worker_caught_up_s": done.caught_up_s,
            "correctness": done.correctness,
        }

    async def burst(self) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.llm_latency)
        people, size = cfg.burst_people, cfg.burst_size
        # person p's webhooks are p, p + people, ...: each person's burst is in flight at once
        bodies = self.bodies("burst", people * size, people=people, limit=cfg.burst_limit)
        with self.ctx.progress("burst: sending", len(bodies)) as tick:
            shots = await load.blast(self.system.ingress_url, bodies, cfg.clients, tick)
        done = await self.settle("burst", shots)
        published = collections.Counter(done.accepted[rid] % people for rid in done.published_at)
        return {
            "people": people,
            "webhooks_per_person": size,
            "limit": cfg.burst_limit,
            "published": len(done.published_at),
            "states": dict(done.states),
            "worker_caught_up_s": done.caught_up_s,
            "correctness": {
                **done.correctness,
                "limit_violations": limit_violations(published, cfg.burst_limit),
            },
        }

    async def capacity(self) -> dict[str, Any]:
        cfg = self.ctx.config
        self.system.set_llm_latency(cfg.capacity_latency)
        sampler = InFlight(self.system.openai_root)
        sampler.start()
        try:
            bodies = self.bodies("capacity", cfg.capacity_requests)
            with self.ctx.progress("capacity: sending", len(bodies)) as tick:
                shots = await load.blast(self.system.ingress_url, bodies, cfg.clients, tick)
            done = await self.settle("capacity", shots)
        finally:
            await sampler.stop()
            self.system.set_llm_latency(cfg.llm_latency)
        first_sent = min(s.sent_at for s in shots)
        span = max(done.published_at.values(), default=first_sent) - first_sent
        return {
            "requests": cfg.capacity_requests,
            "people": cfg.capacity_requests,
            "llm_latency_s": cfg.capacity_latency,
            "max_generations_in_flight": sampler.peak,
            "in_flight_samples": sampler.samples,
            "total_seconds": round(span, 2),
            "published_per_second": load.rate(len(done.published_at), span),
            # whether a generation's own time stays flat with its thousand neighbours in flight
            # (the webhooks queue before the ledger: end to end is not the measure)
            "hops": await self.hops(done, shots, cfg.capacity_latency),
            "states": dict(done.states),
            "worker_caught_up_s": done.caught_up_s,
            "correctness": done.correctness,
        }

    async def neighbours(self) -> dict[str, Any]:
        """A campaign blast on a rate-limited OpenAI key, and a quiet site on a key of its own
        that starts a few seconds into it: the blast paced to its key's limit, few 429s, and
        the quiet site served at its own upstream's latency meanwhile."""
        cfg = self.ctx.config
        # the stand-in records a key's last 4 characters: the two keys must differ there
        blast_key, quiet_key = f"sk-bench-{self.ctx.run}-blast", f"sk-bench-{self.ctx.run}-quiet"
        self.system.configure_openai(
            {
                "latency_seconds": cfg.neighbour_latency,
                "key_limits": {blast_key: {"rpm": cfg.neighbour_rps * 60}},
            }
        )
        blast = self.bodies("blast", cfg.neighbour_requests, openai_key=blast_key)
        quiet = self.bodies("quiet", cfg.neighbour_quiet, openai_key=quiet_key)

        async def later() -> list[Shot]:
            await asyncio.sleep(cfg.neighbour_delay)  # the scenario: the quiet site comes later
            return await load.blast(self.system.ingress_url, quiet, 4, _no)

        try:
            with self.ctx.progress("neighbours: sending", len(blast)) as tick:
                blast_shots, quiet_shots = await asyncio.gather(
                    load.blast(self.system.ingress_url, blast, cfg.clients, tick), later()
                )
            blasted = await self.settle("blast", blast_shots)
            calm = await self.settle("quiet", quiet_shots)
            calls = [c for c in self.system.openai_calls() if c.get("key_tail") == blast_key[-4:]]
        finally:
            self.system.configure_openai({"latency_seconds": cfg.llm_latency, "key_limits": {}})
        first_sent = min(s.sent_at for s in blast_shots)
        span = max(blasted.published_at.values(), default=first_sent) - first_sent
        allowed = cfg.neighbour_requests / cfg.neighbour_rps
        throttled = sum(1 for c in calls if c.get("status") == 429)
        quiet_e2e = end_to_end(calm, quiet_shots)
        return {
            "requests": cfg.neighbour_requests,
            "key_rps": cfg.neighbour_rps,
            "llm_latency_s": cfg.neighbour_latency,
            "blast": {
                "published": len(blasted.published_at),
                "seconds": round(span, 2),
                "seconds_the_limit_allows": round(allowed, 2),
                "of_the_limit": round(span / allowed, 3) if allowed else None,
                "calls": len(calls),
                "throttled_429": throttled,
                "throttled_share": round(throttled / len(calls), 3) if calls else None,
                "states": dict(blasted.states),
            },
            "quiet": {
                "requests": cfg.neighbour_quiet,
                "published": len(calm.published_at),
                "end_to_end": load.ms_summary(quiet_e2e),
                "worst_over_llm_s": round(max(quiet_e2e) - cfg.neighbour_latency, 3)
                if quiet_e2e
                else None,
                "states": dict(calm.states),
            },
            "correctness": {
                name: blasted.correctness[name] + calm.correctness[name]
                for name in blasted.correctness
            },
        }


def end_to_end(done: Settled, shots: Sequence[Shot]) -> list[float]:
    by_index = {s.index: s for s in shots}
    return [t - by_index[done.accepted[rid]].sent_at for rid, t in done.published_at.items()]


def limit_violations(published_per_person: collections.Counter[Any], limit: int) -> int:
    """Publications beyond the limit, summed over people."""
    return sum(max(0, n - limit) for n in published_per_person.values())


def _no(_: int) -> None:
    pass

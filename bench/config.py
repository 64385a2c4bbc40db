"""What a benchmark run does: sizes of each phase, for the three presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["full", "quick", "tiny"]


@dataclass(frozen=True)
class BenchConfig:
    mode: Mode = "full"
    # warm-up: webhooks sent before any phase is measured, so that the broker's JIT compiler
    # is done (a cold JVM spends more CPU compiling than serving: a steady figure needs it
    # warm); the CPU they cost is reported as the cold start
    warm_requests: int = 3_000
    # throughput: webhooks sent as fast as `clients` concurrent clients get answers
    requests: int = 5_000
    clients: int = 64
    llm_latency: float = 0.1  # the OpenAI stand-in's latency outside the capacity phase
    # latency: an open-loop rate, this fraction of the pipeline's measured throughput, or a
    # fixed rate (to compare two trees, or two settings, at the same load)
    paced_requests: int = 1_000
    paced_fraction: float = 0.5
    paced_rate: float | None = None
    # burst: `burst_people` people get `burst_size` webhooks each, one stale snapshot, a limit
    burst_people: int = 40
    burst_size: int = 50
    burst_limit: int = 3
    # capacity: many people, a slow LLM; how many generations run at once, how long it takes
    capacity_requests: int = 10_000
    capacity_latency: float = 1.0
    # noisy neighbours: a site blasts webhooks on an OpenAI key limited to `neighbour_rps`
    # (OpenAI-style 429s, no retry-after); another site on its own key sends `neighbour_quiet`
    # webhooks `neighbour_delay` seconds into the blast
    neighbour_requests: int = 400
    neighbour_rps: float = 5.0
    neighbour_latency: float = 0.5
    neighbour_quiet: int = 20
    neighbour_delay: float = 3.0
    # baselines
    relay_messages: int = 20_000
    relay_hops: int = 5
    inline_clients: int = 256  # concurrent clients of the inline handler
    baselines: bool = True
    # the deployment
    partitions: int = 8
    workers: int = 1
    # where each worker runs its executors (TALKSTREAM_EXECUTORS): in it, or in its child
    executors: str = "process"
    bootstrap: str | None = None  # None: start an embedded broker on free ports
    drain_timeout: float = 900.0  # seconds to wait for every accepted request to end

    @classmethod
    def preset(cls, mode: Mode, **overrides: Any) -> BenchConfig:
        sizes: dict[str, Any] = {}
        if mode == "quick":
            sizes = dict(
                warm_requests=1_000,
                requests=500,
                paced_requests=100,
                burst_people=6,
                capacity_requests=1_000,
                neighbour_requests=100,
                relay_messages=2_000,
                drain_timeout=120.0,
            )
        elif mode == "tiny":
            sizes = dict(
                warm_requests=50,
                requests=50,
                clients=8,
                paced_requests=20,
                burst_people=2,
                capacity_requests=50,
                capacity_latency=0.2,
                neighbour_requests=20,
                neighbour_rps=10.0,
                neighbour_latency=0.1,
                neighbour_quiet=4,
                neighbour_delay=0.5,
                relay_messages=100,
                inline_clients=16,
                partitions=4,
                drain_timeout=120.0,
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(mode=mode, **{**sizes, **given})

    def latency_rate(self, measured: float) -> float:
        """The latency phase's rate (webhooks/s) after a throughput of ``measured``/s."""
        if self.paced_rate is not None:
            return self.paced_rate
        return max(1.0, measured * self.paced_fraction)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

"""Helpers of the scenarios on their own brokers: run ``talkstream`` commands as a user would
(a separate process, settings from the environment), and a client that retries 503s as
Talkable does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.dev.kafka_cluster import KafkaCluster
from tests.integration.conftest import System, session_kafka_version
from tests.support import free_port, streams_run

ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def three_nodes(root: Path) -> Iterator[KafkaCluster]:
    """A 3-node KRaft cluster on free ports under ``root``, started; stopped after."""
    nodes = KafkaCluster(
        root,
        3,
        ports=[(free_port(), free_port()) for _ in range(3)],
        version=session_kafka_version(),
    )
    nodes.start(timeout=180)
    try:
        yield nodes
    finally:
        nodes.stop()


@dataclass
class Ran:
    args: tuple[str, ...]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"$ talkstream {' '.join(self.args)}  -> exit {self.code} in {self.seconds:.1f}s\n"
            f"{self.out}{self.err}"
        )


def talkstream(env: dict[str, str], *args: str, timeout: float = 300) -> Ran:
    """``talkstream ARGS`` in a process of its own, with ``env`` as its whole environment."""
    started = time.monotonic()
    done = streams_run(*args, env=env, timeout=timeout)
    return Ran(args, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@dataclass
class Delivery:
    """One webhook, sent until the ingress answered 202 (Talkable retries anything else)."""

    body: dict[str, Any]
    request_id: str | None = None
    answers: list[int] = field(default_factory=list)  # every status seen (0: no answer)


def deliver(system: System, body: dict[str, Any], deadline: float = 180) -> Delivery:
    """POST until 202: a 503 (Kafka did not acknowledge) or a dropped connection is retried,
    as Talkable retries a webhook until it gets a 2xx; anything else fails the test."""
    delivery = Delivery(body)
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        try:
            status, answer = system.post(body, timeout=30)
        except OSError:
            status, answer = 0, None
        delivery.answers.append(status)
        if status == 202:
            delivery.request_id = answer["request_id"]
            return delivery
        assert status in (0, 503), f"webhook answered {status}: {answer}"
        time.sleep(0.2)  # the client's retry pace (Talkable's own backoff is longer)
    raise AssertionError(f"no 202 within {deadline:.0f}s; answers {delivery.answers}")

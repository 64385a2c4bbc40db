"""The system under test: broker, stand-ins, worker(s) and ingress as processes.

Started the way ``talkstream`` starts them (``python -m streams ...``) on a private app id, so
the benchmark measures the real processes. The Talkable stand-in is the real one with a
receipt recorder (:mod:`bench.standin`), because its call log has no timestamps. The
baselines' processes are started here too, so one run measures everything on one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.dev.kafka import EmbeddedKafka
from streams.kafka_options import client_options
from streams.secrets import generate_key
from streams.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class BenchSystemError(RuntimeError):
    """A process of the benchmark did not start or died."""


_HANDED_OUT: set[int] = set()  # ports this process has handed out: never twice
# "<index>/<count>": the index-th of count equal slices of the ports handed out, for processes
# that run side by side (the tests' pytest-xdist workers, and what they start): each hands out
# its own ports only, so none takes a port another stopped a server on to start it again
PORT_SHARE = "TALKSTREAM_TEST_PORT_SHARE"


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now, below the range the
    kernel gives outgoing connections: a port free now but in that range can be taken by any
    connection (a broker's to its peers, say) before the server meant for it binds it."""
    low, top = _share(10_000, max(_ephemeral_low(), 11_000))
    top -= count
    for _ in range(1000):
        base = random.randrange(low, top)
        ports = range(base, base + count)
        if _HANDED_OUT.intersection(ports):
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in ports:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.update(ports)
        return base
    raise BenchSystemError(f"no {count} consecutive free ports below {top + count}")


def free_port() -> int:
    return free_port_run(1)


def _share(low: int, top: int) -> tuple[int, int]:
    """This process's slice of ``[low, top)`` (all of it unless ``PORT_SHARE`` is set)."""
    index, _, count = os.environ.get(PORT_SHARE, "0/1").partition("/")
    width = (top - low) // int(count)
    return low + int(index) * width, low + (int(index) + 1) * width


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the IANA range's start
        low = 49_152
    return min(low, 49_152)


# the samples of a worker's /metrics that ``Deployment.ledger_batches`` sums, and as what (the
# seconds' sums, by their ``phase`` label: deciding, outputs, changelog)
LEDGER_BATCH_SAMPLES = {
    "talkstream_ledger_batch_records_count": "batches",
    "talkstream_ledger_batch_records_sum": "records",
}
LEDGER_BATCH_SECONDS = "talkstream_ledger_batch_seconds_sum"


def http_json(method: str, url: str, body: Any = None, timeout: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


class Broker:
    """An embedded broker on free ports under ``root``, or an existing one (not stopped)."""

    def __init__(self, root: Path, bootstrap: str | None, version: str) -> None:
        self._embedded: EmbeddedKafka | None = None
        if bootstrap is None:
            self._embedded = EmbeddedKafka(
                root, port=free_port(), controller_port=free_port(), version=version
            )
            self.bootstrap = self._embedded.bootstrap
            self.describe = f"{version} (embedded)"
        else:
            self.bootstrap = bootstrap
            self.describe = f"at {bootstrap}"  # an existing broker: its version is its own

    @property
    def embedded(self) -> bool:
        return self._embedded is not None

    @property
    def pid(self) -> int | None:
        return self._embedded.status().pid if self._embedded is not None else None

    def start(self) -> None:
        if self._embedded is not None:
            self._embedded.start(timeout=120)

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()


class Processes:
    """Child processes with logs under ``root``; stopped together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchSystemError(
                    f"{name} exited with {proc.returncode}; last lines of its log:\n"
                    + self.log_tail(name)
                )

    def wait_http(self, url: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with (
                contextlib.suppress(OSError, urllib.error.HTTPError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise BenchSystemError(f"{what} did not answer {url} within {timeout:.0f}s")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self, *names: str) -> None:
        chosen = [self.procs.pop(n) for n in (names or list(self.procs)) if n in self.procs]
        for proc in chosen:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in chosen:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class Deployment:
    """One talkstream deployment on a private app id, plus the stand-ins both sides share."""

    def __init__(
        self, root: Path, settings: Settings, *, workers: int, executors: str = "process"
    ) -> None:
        """``settings``: the broker (bootstrap and TLS/SASL options), app id and partitions;
        the processes get them through the environment."""
        self.root = root
        self.bootstrap = settings.kafka_bootstrap
        self.kafka_options = client_options(settings)
        partitions = settings.partitions
        self.app_id = settings.app_id
        self.workers = workers
        self.openai_port, self.talkable_port = free_port(), free_port()
        self.ingress_port = free_port()
        # each worker's /metrics, which the bench reads its ledger's batches from
        self.worker_ports = [free_port() for _ in range(workers)]
        self.processes = Processes(root)
        self.env = {
            **os.environ,
            "TALKSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "TALKSTREAM_APP_ID": self.app_id,
            "TALKSTREAM_PARTITIONS": str(partitions),
            "TALKSTREAM_DATA_DIR": str(root),
            "TALKSTREAM_DATABASE_URL": f"sqlite:///{root / 'projection.sqlite3'}",
            "TALKSTREAM_SECRET_KEYS": generate_key(),
            "TALKSTREAM_OPENAI_BASE_URL": self.openai_url,
            "TALKSTREAM_TALKABLE_BASE_URL": self.talkable_url,
            "TALKSTREAM_INGRESS_PORT": str(self.ingress_port),
            # any free port: several workers (and their projectors) share this host, and the
            # bench reads none of these HTTP endpoints (each worker's own: ``worker_ports``)
            "TALKSTREAM_PROJECTOR_HTTP_PORT": "0",
            "TALKSTREAM_EXECUTORS_HTTP_PORT": "0",
            # as the run says, not as the shell may (the results record the run's)
            "TALKSTREAM_EXECUTORS": executors,
        }

    @property
    def openai_root(self) -> str:
        return f"http://127.0.0.1:{self.openai_port}"

    @property
    def openai_url(self) -> str:
        return f"{self.openai_root}/v1"

    @property
    def talkable_root(self) -> str:
        return f"http://127.0.0.1:{self.talkable_port}"

    @property
    def talkable_url(self) -> str:
        return f"{self.talkable_root}/api/v2"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}/chat-gpt/generate"

    @property
    def relay_prefix(self) -> str:
        return f"{self.app_id}-relay"

    def topic(self, name: str) -> str:
        return f"{self.app_id}-{name}"

    def start(self) -> None:
        run = self.processes.spawn
        openai = ["-m", "streams", "standin", "openai", "--port", str(self.openai_port)]
        run("openai", openai, self.env)
        run("talkable", ["-m", "bench.standin", "--port", str(self.talkable_port)], self.env)
        for i in range(self.workers):
            env = {
                **self.env,
                "TALKSTREAM_WORKER_NAME": f"worker{i}",
                "TALKSTREAM_WORKER_HTTP_PORT": str(self.worker_ports[i]),
            }
            run(f"worker{i}", ["-m", "streams", "worker"], env)
        run("ingress", ["-m", "streams", "ingress"], self.env)
        self.processes.wait_http(f"{self.openai_root}/_stats", 30, "the OpenAI stand-in")
        self.processes.wait_http(f"{self.talkable_root}/_stats", 30, "the Talkable stand-in")
        healthz = f"http://127.0.0.1:{self.ingress_port}/healthz"
        self.processes.wait_http(healthz, 60, "the ingress")

    def ledger_batches(self) -> dict[str, float]:
        """The workers' ledgers' batches so far, summed over the workers (running totals,
        which a phase's figures are the difference of): ``batches``, ``records``, and the
        seconds of each phase of ``talkstream_ledger_batch_seconds`` (``deciding``,
        ``outputs``, ``changelog``)."""
        totals: dict[str, float] = {}
        for port in self.worker_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as got:
                text = got.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == LEDGER_BATCH_SECONDS:
                        name: str | None = sample.labels["phase"]
                    else:
                        name = LEDGER_BATCH_SAMPLES.get(sample.name)
                    if name is not None:
                        totals[name] = totals.get(name, 0.0) + sample.value
        return totals

    def set_llm_latency(self, seconds: float) -> None:
        self.configure_openai({"latency_seconds": seconds})

    def configure_openai(self, changes: dict[str, Any]) -> None:
        http_json("POST", f"{self.openai_root}/_control", changes)

    def openai_calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = http_json("GET", f"{self.openai_root}/_calls")
        return calls

    def openai_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = http_json("GET", f"{self.openai_root}/_stats")
        return stats

    def stop(self) -> None:
        self.processes.stop()

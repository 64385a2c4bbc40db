"""A replicated Kafka cluster on one host: N KRaft nodes in combined mode, one process each.

``talkstream kafka start --nodes 3`` and the replication test run it. Every node is an
:class:`~streams.dev.kafka.EmbeddedKafka` with its own ports, data directory and log, under
``<data_dir>/kafka-cluster/``::

    cluster.id          the KRaft cluster id, shared by every node
    cluster.json        the layout (nodes, ports, version) while it is started, so `status`,
                        `stop` and a plain `start` find it; removed by `stop`
    node-<id>/          each node's server.properties, logs/, broker.log and kafka.pid

Node ``i`` (1-based) listens on ``port + 2(i-1)`` (clients) and the next port (controller);
all nodes are voters of the KRaft quorum. Topics get replication factor ``min(nodes, 3)`` and
``min.insync.replicas`` one less, at most 2 (3 and 2 on three nodes): with ``acks=all`` an
acknowledged write is on two brokers at least, and one broker may die without stopping
writes. Brokers are fenced 3 s after their last heartbeat (Kafka's default: 9 s), so the
leaders of a dead node move quickly.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.dev.kafka import (
    CONFIG_DIR,
    DEFAULT_KAFKA_VERSION,
    EmbeddedKafka,
    KafkaLauncherError,
    KafkaStatus,
)

logger = logging.getLogger(__name__)

# a dead broker is fenced (its partitions get new leaders) this long after its last heartbeat
FAST_FAILOVER = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}


def cluster_replication(nodes: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``nodes`` brokers."""
    replication = min(nodes, 3)
    return replication, max(1, min(2, replication - 1))


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    nodes: list[KafkaStatus]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def describe(self) -> str:
        up = sum(node.running for node in self.nodes)
        head = f"Kafka cluster: {up} of {len(self.nodes)} nodes running; bootstrap {self.bootstrap}"
        lines = [head]
        for number, node in enumerate(self.nodes, start=1):
            lines.append(f"  node {number}: {node.describe()}")
        return "\n".join(lines)


class CorruptManifest(KafkaLauncherError):
    """``cluster.json`` cannot be read back: the nodes it started (if any still run) are no
    longer known to `status` and `stop`, so the message says how to end them by hand."""

    def __init__(self, manifest: Path, why: Exception) -> None:
        reason = f"no {why}" if isinstance(why, KeyError) else str(why)
        super().__init__(
            f"{manifest} is not a cluster layout this talkstream can read ({reason}): "
            f"stop any node still running from it (the pid in "
            f"{manifest.parent}/node-*/kafka.pid), then remove the file"
        )


def _read_layout(text: str) -> tuple[str, list[tuple[int, int]], str]:
    """(host, port pairs, version) from the manifest's text; ValueError, KeyError or
    TypeError when it is not one (truncated, hand-edited, another talkstream's)."""
    layout = json.loads(text)
    if not isinstance(layout, dict):
        raise ValueError("not a JSON object")
    ports = [(int(port), int(controller)) for port, controller in layout["ports"]]
    if not ports:
        raise ValueError("no nodes")
    host, version = layout["host"], layout.get("version", DEFAULT_KAFKA_VERSION)
    if not isinstance(host, str) or not isinstance(version, str):
        raise ValueError("host and version must be strings")
    return host, ports, version


class KafkaCluster:
    def __init__(
        self,
        data_dir: Path,
        nodes: int = 3,
        host: str = "127.0.0.1",
        ports: list[tuple[int, int]] | None = None,
        *,
        base_port: int = 9092,
        version: str = DEFAULT_KAFKA_VERSION,
        heap: str = "512m",
        jars_dir: Path | None = None,
        config_dir: Path = CONFIG_DIR,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise KafkaLauncherError(f"a cluster needs at least one node, not {nodes}")
        if ports is None:
            ports = [(base_port + 2 * i, base_port + 2 * i + 1) for i in range(nodes)]
        if len(ports) != nodes:
            raise KafkaLauncherError(f"{nodes} nodes need {nodes} port pairs, got {len(ports)}")
        self.root = Path(data_dir).expanduser().resolve() / "kafka-cluster"
        self.host, self.version = host, version
        self.replication_factor, self.min_insync_replicas = cluster_replication(nodes)
        voters = ",".join(f"{i + 1}@{host}:{c}" for i, (_, c) in enumerate(ports))
        self.nodes = [
            EmbeddedKafka(
                data_dir,
                host=host,
                port=port,
                controller_port=controller_port,
                jars_dir=jars_dir,
                heap=heap,
                version=version,
                config_dir=config_dir,
                kafka_dir=self.root / f"node-{i + 1}",
                node_id=i + 1,
                voters=voters,
                replication_factor=self.replication_factor,
                min_insync_replicas=self.min_insync_replicas,
                overrides={**FAST_FAILOVER, **(overrides or {})},
                cluster_id_file=self.root / "cluster.id",
            )
            for i, (port, controller_port) in enumerate(ports)
        ]
        self.manifest = self.root / "cluster.json"

    @classmethod
    def from_manifest(cls, data_dir: Path, **kwargs: Any) -> KafkaCluster | None:
        """The cluster last started under ``data_dir`` (None if there is none)."""
        manifest = Path(data_dir).expanduser().resolve() / "kafka-cluster" / "cluster.json"
        try:
            text = manifest.read_text()
        except FileNotFoundError:
            return None
        try:
            host, ports, version = _read_layout(text)
            return cls(data_dir, len(ports), host, ports, version=version, **kwargs)
        except (KafkaLauncherError, ValueError, KeyError, TypeError) as exc:
            raise CorruptManifest(manifest, exc) from None

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> EmbeddedKafka:
        return self.nodes[node_id - 1]

    def status(self) -> ClusterStatus:
        return ClusterStatus([node.status() for node in self.nodes])

    def fetch_jars(self) -> Path:
        return self.nodes[0].fetch_jars()

    def start(
        self, timeout: float = 120, on_wait: Callable[[str], None] | None = None
    ) -> ClusterStatus:
        """Start every node not running yet; return once each answers metadata that lists
        every broker of the cluster. ``on_wait``: given one line when the wait begins."""
        self.fetch_jars()
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest.write_text(
            json.dumps(
                {
                    "host": self.host,
                    "ports": [[n.port, n.controller_port] for n in self.nodes],
                    "version": self.version,
                }
            )
            + "\n"
        )
        started = time.monotonic()
        launched = [node for node in self.nodes if node.status().pid is None]
        try:
            for node in launched:
                node.launch()
            if on_wait is not None:
                on_wait(
                    f"starting Kafka {self.version}, {len(self.nodes)} nodes at {self.bootstrap} "
                    f"(waiting for each to answer, at most {timeout:g} s)"
                )
            for node in self.nodes:
                remaining = max(1.0, timeout - (time.monotonic() - started))
                node.wait_ready(remaining, brokers=len(self.nodes), watching=launched)
        except KafkaLauncherError:
            for node in launched:
                node.stop()
            if all(node.status().pid is None for node in self.nodes):
                # no cluster runs: `kafka status` / `stop` / `start` mean the single broker again
                self.manifest.unlink(missing_ok=True)
            raise
        logger.info(
            "Kafka cluster ready nodes=%s bootstrap=%s seconds=%.1f",
            len(self.nodes),
            self.bootstrap,
            time.monotonic() - started,
        )
        return self.status()

    def restart(self, node_id: int, timeout: float = 120) -> KafkaStatus:
        """Start one node again (after :meth:`kill`); return once the cluster lists it."""
        node = self.node(node_id)
        node.launch()
        node.wait_ready(timeout, brokers=len(self.nodes))
        return node.status()

    def kill(self, node_id: int) -> int | None:
        """SIGKILL one node: a hard bounce, no controlled shutdown."""
        return self.node(node_id).kill()

    def stop(self, timeout: float = 30) -> bool:
        """Stop every node at once (one by one, the last would wait for a quorum that is
        gone); False when none was running."""
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            stopped = list(pool.map(lambda node: node.stop(timeout), self.nodes))
        self.manifest.unlink(missing_ok=True)  # stopped: `kafka start` means one node again
        return any(stopped)


def running_nodes(data_dir: Path) -> int:
    """How many nodes the layout running from ``data_dir`` has: its cluster's (a node of it
    alive), else 1 if its single broker runs, else 0."""
    cluster = KafkaCluster.from_manifest(data_dir)
    if cluster is not None and any(node.running_pid() is not None for node in cluster.nodes):
        return len(cluster.nodes)
    return 1 if EmbeddedKafka(data_dir).running_pid() is not None else 0


def refuse_another_layout(data_dir: Path, nodes: int) -> None:
    """Refuse to start ``nodes`` nodes while a layout of another size runs from ``data_dir``:
    the manifest (or its absence) would then describe the new one alone, and `status` and
    `stop` would never know of the nodes left running."""
    running = running_nodes(data_dir)
    if running and running != nodes:
        what = "a single broker" if running == 1 else f"a {running}-node cluster"
        raise KafkaLauncherError(
            f"{what} runs from this data directory ({data_dir}): stop it first "
            "(talkstream kafka stop)"
        )

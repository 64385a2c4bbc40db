"""What `talkstream kafka start|status` say about the brokers already running from the data
directory, tried with stand-ins for them: a process whose command line names ``kafka.Kafka``
and the node's server.properties, as the launcher checks a pid file's process, without a JVM."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.dev.kafka import EmbeddedKafka
from streams.dev.kafka_cluster import KafkaCluster

StandIn = Callable[[EmbeddedKafka], int]


@pytest.fixture
def running() -> Iterator[StandIn]:
    """Makes a node look running: a process its pid file names, which lives until the test
    ends (it waits for its stdin to close)."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(node: EmbeddedKafka) -> int:
        node.kafka_dir.mkdir(parents=True, exist_ok=True)
        node.properties_file.write_text(
            f"listeners=PLAINTEXT://{node.bootstrap},CONTROLLER://{node.host}:"
            f"{node.controller_port}\nadvertised.listeners=PLAINTEXT://{node.bootstrap}\n"
        )
        code = "import sys; print('up', flush=True); sys.stdin.read()"
        args = ["-c", code, "kafka.Kafka", str(node.properties_file)]
        proc = subprocess.Popen(
            [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None
        # once it says so, its command line is the one above (until then, a fork of ours)
        assert proc.stdout.readline() == b"up\n"
        node.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    yield run
    for proc in procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:19400")
    # a start that was not refused ends at the missing jars, before a JVM is launched
    monkeypatch.setenv("TALKSTREAM_KAFKA_JARS", str(tmp_path / "no-jars"))
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return tmp_path


def _three_nodes(data_dir: Path, running: StandIn) -> KafkaCluster:
    cluster = KafkaCluster(data_dir, 3, base_port=19400)
    cluster.root.mkdir(parents=True)
    cluster.manifest.write_text(
        '{"host": "127.0.0.1", "ports": [[19400, 19401], [19402, 19403], [19404, 19405]],'
        ' "version": "4.4.0"}\n'
    )
    for node in cluster.nodes:
        running(node)
    return cluster


@pytest.mark.parametrize("nodes", ["2", "1", "4"])
def test_a_start_of_another_size_than_the_running_cluster_is_refused(
    nodes: str, data_dir: Path, running: StandIn
) -> None:
    """`--nodes 2` beside a running 3-node cluster rewrote the manifest to two nodes and
    abandoned the third's JVM: `status` and `stop` never knew of it again."""
    cluster = _three_nodes(data_dir, running)
    manifest = cluster.manifest.read_text()

    result = CliRunner().invoke(main, ["kafka", "start", "--nodes", nodes])

    assert (result.exit_code, result.output) == (
        1,
        f"Error: a 3-node cluster runs from this data directory ({data_dir.resolve()}): "
        "stop it first (talkstream kafka stop)\n",
    )
    assert cluster.manifest.read_text() == manifest
    assert not EmbeddedKafka(data_dir).kafka_dir.exists()  # the single broker not started


def test_a_cluster_start_beside_the_running_single_broker_is_refused(
    data_dir: Path, running: StandIn
) -> None:
    running(EmbeddedKafka(data_dir, port=19410, controller_port=19411))

    result = CliRunner().invoke(main, ["kafka", "start", "--nodes", "3"])

    assert (result.exit_code, result.output) == (
        1,
        f"Error: a single broker runs from this data directory ({data_dir.resolve()}): "
        "stop it first (talkstream kafka stop)\n",
    )
    assert KafkaCluster.from_manifest(data_dir) is None


@pytest.mark.parametrize("command", ["start", "status"])
def test_the_broker_of_the_data_directory_on_another_port_is_named_at_once(
    command: str, data_dir: Path, running: StandIn
) -> None:
    """A start on another port than the broker of the same data directory runs on waited 90 s
    and said "did not answer"; `status` said "starting (pid N), not answering" with the other
    broker's pid."""
    pid = running(EmbeddedKafka(data_dir, port=19420, controller_port=19421))

    result = CliRunner().invoke(main, ["kafka", command])

    assert (result.exit_code, result.output) == (
        1,
        f"Error: a broker from this data directory ({data_dir.resolve() / 'kafka'}) runs at "
        f"127.0.0.1:19420 (pid {pid}), not at 127.0.0.1:19400: stop it (talkstream kafka "
        "stop) or use another TALKSTREAM_DATA_DIR\n",
    )


def test_stop_ends_the_broker_of_the_data_directory_whatever_its_port(
    data_dir: Path, running: StandIn
) -> None:
    """What the refusal above tells to do works with the same settings."""
    node = EmbeddedKafka(data_dir, port=19420, controller_port=19421)
    running(node)

    result = CliRunner().invoke(main, ["kafka", "stop"])

    assert (result.exit_code, result.output) == (0, "stopped\n")
    assert node.running_pid() is None


@pytest.mark.parametrize(
    ("nodes", "waiting"),
    [
        (
            "1",
            "starting Kafka 4.4.0 at 127.0.0.1:19500 (waiting for it to answer, at most 30 s)",
        ),
        (
            "3",
            "starting Kafka 4.4.0, 3 nodes at 127.0.0.1:19500,127.0.0.1:19502,127.0.0.1:19504 "
            "(waiting for each to answer, at most 30 s)",
        ),
    ],
)
def test_a_start_says_it_waits_before_it_waits(
    nodes: str, waiting: str, data_dir: Path, running: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start printed nothing for the ~12 s the broker takes to answer, then its ready line.
    The launch is a stand-in (no JVM), whose wait ends with its port open; the line saying
    what it waits for is out (on stderr) before the wait ends."""
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:19500")
    held: list[socket.socket] = []

    def launch(node: EmbeddedKafka) -> int:
        return running(node)

    def wait_ready(node: EmbeddedKafka, timeout: float, *args: object, **kwargs: object) -> None:
        click.echo(f"<the wait for {node.bootstrap} ends>")
        held.append(socket.create_server((node.host, node.port)))  # it answers now

    async def ensure_topics(settings: object) -> list[str]:
        return []

    monkeypatch.setattr(EmbeddedKafka, "fetch_jars", lambda node: data_dir)  # a cluster's first
    monkeypatch.setattr(EmbeddedKafka, "launch", launch)
    monkeypatch.setattr(EmbeddedKafka, "wait_ready", wait_ready)
    monkeypatch.setattr("streams.topics.ensure_topics", ensure_topics)
    try:
        result = CliRunner().invoke(main, ["kafka", "start", "--timeout", "30", "--nodes", nodes])
    finally:
        for sock in held:
            sock.close()

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == waiting
    assert waiting in result.stderr
    waits = [f"<the wait for 127.0.0.1:{19500 + 2 * i} ends>" for i in range(int(nodes))]
    assert lines[1 : 1 + len(waits)] == waits
    assert "running" in lines[1 + len(waits)]  # where it runs, as `kafka status` says it
    assert waiting not in result.stdout

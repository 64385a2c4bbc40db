"""The pure pieces of the embedded Kafka launcher: config rendering, cluster ids, clear errors."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from streams.dev.kafka import (
    CONFIG_DIR,
    DEFAULT_KAFKA_VERSION,
    VERSIONS,
    EmbeddedKafka,
    KafkaLauncherError,
    KafkaStatus,
    default_jars_dir,
    find_java,
    new_cluster_id,
    render_server_properties,
)
from streams.dev.kafka_cluster import KafkaCluster, cluster_replication
from tests.support import free_port, wait_until


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def _render(log_dir: Path) -> dict[str, str]:
    template = (CONFIG_DIR / "server.properties").read_text()
    text = render_server_properties(
        template, host="127.0.0.1", port=19092, controller_port=19093, log_dir=log_dir
    )
    assert "$" not in text
    return _properties(text)


def test_rendered_config_is_a_single_kraft_node_on_the_given_ports(tmp_path):
    props = _render(tmp_path / "logs")

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert set(props["listener.security.protocol.map"].split(",")) == {
        "CONTROLLER:PLAINTEXT",
        "PLAINTEXT:PLAINTEXT",
    }
    assert props["log.dirs"] == str(tmp_path / "logs")


def test_rendered_config_suits_one_dev_node(tmp_path):
    props = _render(tmp_path)

    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "8"
    assert props["auto.create.topics.enable"] == "false"


def test_each_node_of_a_cluster_is_a_voter_with_replicated_internal_topics(tmp_path):
    cluster = KafkaCluster(tmp_path, 3, ports=[(19092, 19093), (19094, 19095), (19096, 19097)])
    template = (CONFIG_DIR / "server.properties").read_text()
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"

    assert cluster.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert (cluster.replication_factor, cluster.min_insync_replicas) == (3, 2)
    dirs = {node.kafka_dir for node in cluster.nodes}
    assert dirs == {tmp_path.resolve() / "kafka-cluster" / f"node-{i}" for i in (1, 2, 3)}
    assert len({node.cluster_id() for node in cluster.nodes}) == 1  # one cluster id
    for node in cluster.nodes:
        props = _properties(
            render_server_properties(
                template,
                host=node.host,
                port=node.port,
                controller_port=node.controller_port,
                log_dir=node.log_dir,
                node_id=node.node_id,
                voters=node.voters,
                replication_factor=node.replication_factor,
                min_insync_replicas=node.min_insync_replicas,
                overrides=node.overrides,
            )
        )
        assert props["node.id"] == str(node.node_id)
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"].startswith(f"PLAINTEXT://127.0.0.1:{node.port},")
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
        ):
            assert props[key] == "3", key
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
        assert props["unclean.leader.election.enable"] == "false"
        assert props["broker.session.timeout.ms"] == "3000"  # appended: wins over defaults


def test_replication_follows_the_cluster_size():
    assert [cluster_replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]


def test_a_cluster_is_found_again_from_its_manifest(tmp_path):
    assert KafkaCluster.from_manifest(tmp_path) is None
    cluster = KafkaCluster(tmp_path, 3, base_port=29092, version="3.9.1")
    cluster.root.mkdir(parents=True)
    cluster.manifest.write_text(
        '{"host": "127.0.0.1", "ports": [[29092, 29093], [29094, 29095], [29096, 29097]],'
        ' "version": "3.9.1"}'
    )
    found = KafkaCluster.from_manifest(tmp_path)

    assert found is not None and found.bootstrap == cluster.bootstrap
    assert found.version == "3.9.1"
    assert "0 of 3 nodes running" in found.status().describe()


def test_a_template_with_an_unknown_placeholder_is_refused(tmp_path):
    with pytest.raises(KafkaLauncherError, match="placeholder"):
        render_server_properties(
            "node.id=${node}", host="h", port=1, controller_port=2, log_dir=tmp_path
        )


def test_cluster_ids_look_like_kafka_random_uuid():
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_the_cluster_id_is_kept_in_the_data_dir(tmp_path):
    first = EmbeddedKafka(tmp_path).cluster_id()

    assert (tmp_path / "kafka" / "cluster.id").read_text().strip() == first
    assert EmbeddedKafka(tmp_path).cluster_id() == first


def test_files_go_under_data_dir_kafka_and_jars_into_the_shared_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TALKSTREAM_KAFKA_JARS", raising=False)
    kafka = EmbeddedKafka(tmp_path, port=19092, controller_port=19093)

    assert kafka.bootstrap == "127.0.0.1:19092"
    for path in (kafka.log_dir, kafka.log_file, kafka.pid_file, kafka.properties_file):
        assert path.is_relative_to(tmp_path.resolve() / "kafka")
    assert kafka.jars_dir == Path("~/.cache/talkstream/kafka-4.4.0").expanduser()
    older = EmbeddedKafka(tmp_path, version="3.9.1")
    assert older.jars_dir == Path("~/.cache/talkstream/kafka-3.9.1").expanduser()

    # TALKSTREAM_KAFKA_JARS stands for the selected version's jars, not another version's
    monkeypatch.setenv("TALKSTREAM_KAFKA_JARS", str(tmp_path / "jars"))
    assert default_jars_dir() == tmp_path / "jars"
    assert default_jars_dir("3.9.1") == Path("~/.cache/talkstream/kafka-3.9.1").expanduser()
    monkeypatch.setenv("TALKSTREAM_KAFKA_VERSION", "3.9.1")
    assert default_jars_dir("3.9.1") == tmp_path / "jars"


def test_kafka_4_is_the_default_and_3_9_is_still_there():
    assert DEFAULT_KAFKA_VERSION == "4.4.0"
    assert set(VERSIONS) == {"4.4.0", "3.9.1"}
    for version, kafka in VERSIONS.items():
        pom = (CONFIG_DIR / version / "pom.xml").read_text()
        assert f"<kafka.version>{version}</kafka.version>" in pom
        assert (CONFIG_DIR / version / kafka.logging_config).is_file()
    # 4.x logs through log4j2 (no reload4j), 3.x through reload4j
    assert not any("reload4j" in jar for jar in VERSIONS["4.4.0"].required_jars)
    assert VERSIONS["4.4.0"].logging_property == "log4j2.configurationFile"
    assert "log4j-slf4j-impl" in (CONFIG_DIR / "4.4.0" / "pom.xml").read_text()
    assert VERSIONS["3.9.1"].logging_property == "log4j.configuration"


def test_an_unknown_version_is_refused(tmp_path):
    with pytest.raises(KafkaLauncherError, match=r"4\.4\.0, 3\.9\.1"):
        EmbeddedKafka(tmp_path, version="2.8.0")


def test_the_java_command_names_the_versions_logging_config(tmp_path):
    for version, kafka in VERSIONS.items():
        command = EmbeddedKafka(tmp_path, version=version)._java("java", tmp_path, "kafka.Kafka")
        [flag] = [arg for arg in command if arg.startswith(f"-D{kafka.logging_property}=")]
        assert flag.endswith(f"/compose/kafka/{version}/{kafka.logging_config}")


def test_the_node_runs_on_the_client_compiler_alone(tmp_path):
    # a JVM option after the main class would be the program's argument, not the JVM's
    command = EmbeddedKafka(tmp_path)._java("java", tmp_path, "kafka.Kafka", "server.properties")
    assert command.index("-XX:TieredStopAtLevel=1") < command.index("kafka.Kafka")


def test_the_two_listeners_need_two_ports(tmp_path):
    with pytest.raises(KafkaLauncherError, match="differ"):
        EmbeddedKafka(tmp_path, port=19092, controller_port=19092)


def test_missing_java_is_an_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(KafkaLauncherError, match="JAVA_HOME"):
        find_java()
    with pytest.raises(KafkaLauncherError, match="install a JDK"):
        EmbeddedKafka(tmp_path, jars_dir=tmp_path / "jars").start(timeout=1)


def test_java_home_wins_over_path(tmp_path, monkeypatch):
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))

    assert find_java() == str(java)


@pytest.mark.parametrize(
    ("version", "names"),
    [
        ("3.9.1", ("kafka_2.13-3.9.1.jar", "slf4j-reload4j-1.7.36.jar", "reload4j-1.2.25.jar")),
        (
            "4.4.0",
            ("kafka_2.13-4.4.0.jar", "log4j-slf4j-impl-2.25.5.jar", "log4j-core-2.25.5.jar"),
        ),
    ],
)
def test_fetching_jars_that_are_there_needs_no_maven(tmp_path, monkeypatch, version, names):
    jars = tmp_path / "jars"
    jars.mkdir()
    for name in names[:-1]:
        (jars / name).touch()
    monkeypatch.setenv("PATH", "")
    kafka = EmbeddedKafka(tmp_path, jars_dir=jars, version=version)
    with pytest.raises(KafkaLauncherError, match="mvn"):  # one required jar missing
        kafka.fetch_jars()

    (jars / names[-1]).touch()
    assert kafka.fetch_jars() == jars


def test_missing_maven_is_an_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")

    with pytest.raises(KafkaLauncherError, match="mvn"):
        EmbeddedKafka(tmp_path, jars_dir=tmp_path / "jars").fetch_jars()
    assert not (tmp_path / "jars").exists()


def test_a_missing_pom_is_an_actionable_error(tmp_path):
    kafka = EmbeddedKafka(tmp_path, jars_dir=tmp_path / "jars", config_dir=tmp_path / "nothing")

    with pytest.raises(KafkaLauncherError, match=r"pom\.xml is missing.*TALKSTREAM_KAFKA_JARS"):
        kafka.fetch_jars()


@pytest.mark.parametrize(
    "pid_text", [str(os.getpid()), "not-a-pid", ""], ids=["own-pid", "not-a-pid", "empty"]
)
def test_a_stale_pid_file_means_not_running_and_is_removed(tmp_path, pid_text):
    kafka = EmbeddedKafka(tmp_path)
    kafka.pid_file.parent.mkdir(parents=True)
    kafka.pid_file.write_text(pid_text)  # our own pid is alive but is no Kafka

    assert kafka.status() == KafkaStatus(
        running=False,
        pid=None,
        bootstrap="127.0.0.1:9092",
        data_dir=tmp_path.resolve() / "kafka",
        log_file=tmp_path.resolve() / "kafka" / "broker.log",
    )
    assert not kafka.pid_file.exists()
    assert kafka.stop() is False


def test_status_describes_itself(tmp_path):
    common = {"bootstrap": "127.0.0.1:9092", "data_dir": tmp_path, "log_file": tmp_path / "log"}

    assert "running at 127.0.0.1:9092 (pid 42)" in KafkaStatus(True, 42, **common).describe()
    assert "starting (pid 42)" in KafkaStatus(False, 42, **common).describe()
    assert "not running" in KafkaStatus(False, None, **common).describe()


def test_kafka_3_refuses_a_log_kafka_4_formatted_before_it_dies_of_it(tmp_path):
    older = EmbeddedKafka(tmp_path, version="3.9.1", jars_dir=tmp_path / "no-jars")
    older.kafka_dir.mkdir(parents=True)
    older.formatted_by_file.write_text("4.4.0\n")

    refused = r"formatted by Kafka 4\.4\.0, which Kafka 3\.9\.1 cannot read"
    with pytest.raises(KafkaLauncherError, match=refused):
        older.launch()
    older.formatted_by_file.write_text("3.9.1\n")  # 4.x reads 3.x's log: no objection
    EmbeddedKafka(tmp_path, version="4.4.0")._check_readable()


def test_only_a_new_log_directory_is_formatted(tmp_path, monkeypatch):
    """The storage tool runs (a JVM, a second of CPU) for a log directory not formatted yet,
    and only then: a restarted node's start skips it, as ``--ignore-formatted`` had the tool
    do after starting."""
    ran: list[list[str]] = []

    def tool(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        (kafka.log_dir / "meta.properties").write_text("formatted\n")
        return subprocess.CompletedProcess(command, 0, "Formatting done", "")

    kafka = EmbeddedKafka(tmp_path)
    kafka.log_dir.mkdir(parents=True)
    monkeypatch.setattr("streams.dev.kafka.subprocess.run", tool)
    kafka._format("java", tmp_path)
    assert [command[command.index("format") - 1 :][:3] for command in ran] == [
        ["kafka.tools.StorageTool", "format", "--ignore-formatted"]
    ]
    assert kafka.formatted_by_file.read_text() == f"{kafka.version}\n"
    kafka._format("java", tmp_path)  # formatted: the tool not run again
    assert len(ran) == 1


def test_a_node_maps_its_classes_from_an_archive_its_first_run_made(tmp_path):
    """No archive yet: a node has the JVM write one as it exits (the storage tool does not);
    once there, both map their classes from it."""
    kafka = EmbeddedKafka(tmp_path, class_archive_dir=tmp_path / "cds")
    kafka.class_archive_dir.mkdir()

    def flags(main: str) -> list[str]:
        return [arg for arg in kafka._java("java", tmp_path, main) if "Archive" in arg]

    dump = f"-XX:ArchiveClassesAtExit={kafka.kafka_dir / 'classes.jsa.dump'}"
    assert (flags("kafka.Kafka"), flags("kafka.tools.StorageTool")) == ([dump], [])
    assert "-Xlog:cds*=error" in kafka._java("java", tmp_path, "kafka.Kafka")
    archive = kafka.class_archive("java")
    assert archive.parent == tmp_path / "cds" and archive.suffix == ".jsa"
    archive.write_bytes(b"made")
    shared = [f"-XX:SharedArchiveFile={archive}"]
    assert (flags("kafka.Kafka"), flags("kafka.tools.StorageTool")) == (shared, shared)


def test_only_a_node_stopped_whole_gives_its_dump_as_the_archive(tmp_path, monkeypatch):
    """The first whole dump the JVM maps is kept; a later one is not put over it; one of a
    node killed (maybe while it wrote it), or one the JVM refuses, is thrown away."""
    mapped: dict[bytes, bool] = {b"refused": False}
    monkeypatch.setattr("streams.dev.kafka.find_java", lambda: "java")
    monkeypatch.setattr(
        "streams.dev.kafka._maps", lambda java, jars, dump: mapped.get(dump.read_bytes(), True)
    )
    kafka = EmbeddedKafka(tmp_path, class_archive_dir=tmp_path / "cds")
    monkeypatch.setattr(kafka, "fetch_jars", lambda: tmp_path)
    kafka.class_archive_dir.mkdir()
    kafka.kafka_dir.mkdir(parents=True)
    archive = kafka.class_archive("java")

    kafka.class_dump.write_bytes(b"killed")
    kafka._keep_class_dump(whole=False)
    assert not kafka.class_dump.exists() and not archive.exists()
    kafka.class_dump.write_bytes(b"refused")
    kafka._keep_class_dump(whole=True)
    assert not kafka.class_dump.exists() and not archive.exists()
    kafka.class_dump.write_bytes(b"first")
    kafka._keep_class_dump(whole=True)
    assert not kafka.class_dump.exists() and archive.read_bytes() == b"first"
    kafka.class_dump.write_bytes(b"second")
    kafka._keep_class_dump(whole=True)
    assert not kafka.class_dump.exists() and archive.read_bytes() == b"first"


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _stand_in_for_java(kafka: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Make ``kafka.launch()`` run ``code`` in Python instead of the JVM (its command line
    still naming kafka.Kafka and the server.properties, as the pid file's check expects)."""
    monkeypatch.setattr("streams.dev.kafka.find_java", lambda: "java")
    monkeypatch.setattr(kafka, "fetch_jars", lambda: kafka.kafka_dir)
    monkeypatch.setattr(kafka, "_format", lambda java, jars: None)
    monkeypatch.setattr(kafka, "_java", lambda java, jars, *args: [*_child(code), *args])


def test_stop_ends_the_process_it_launched_before_that_looks_like_kafka(tmp_path):
    """Stopped before it exec'd Java (a start given no time), the child's command line was
    still Python's: stop called its pid file stale, removed it, and left the JVM orphaned."""
    kafka = EmbeddedKafka(tmp_path)
    kafka.kafka_dir.mkdir(parents=True)
    child = subprocess.Popen(_child("import sys; sys.stdin.read()"), stdin=subprocess.PIPE)
    try:
        kafka._proc = child  # as launch() leaves it
        kafka.pid_file.write_text(f"{child.pid}\n")

        assert kafka.status().pid == child.pid
        assert kafka.stop() is True
        assert child.poll() is not None
        assert not kafka.pid_file.exists()
    finally:
        child.kill()
        child.wait()


def test_stop_ends_a_broker_another_process_started_without_waiting_for_its_reaping(tmp_path):
    """``talkstream kafka stop`` beside ``talkstream dev``: the broker is dev's child, so once
    it exits it stays a zombie until dev reaps it. Stop took that for a broker alive through
    SIGTERM and SIGKILL: it waited 40 s and failed, "survived SIGKILL", for a broker that
    had stopped at once."""
    kafka = EmbeddedKafka(tmp_path)
    kafka.kafka_dir.mkdir(parents=True)
    broker = [*_child("import sys; sys.stdin.read()"), "kafka.Kafka", str(kafka.properties_file)]
    launches_and_never_reaps = (
        "import subprocess, sys\n"
        f"broker = subprocess.Popen({broker!r}, stdin=subprocess.PIPE)\n"
        "print(broker.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    dev = subprocess.Popen(
        _child(launches_and_never_reaps), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert dev.stdout is not None
        pid = int(dev.stdout.readline())
        cmdline = Path(f"/proc/{pid}/cmdline")  # (empty while the exec is under way)
        wait_until(lambda: b"kafka.Kafka" in cmdline.read_bytes(), 10, what="the broker's exec")
        kafka.pid_file.write_text(f"{pid}\n")
        assert kafka.status().pid == pid

        assert kafka.stop(timeout=5) is True
        assert not kafka.pid_file.exists()
        assert kafka.status().running is False
    finally:
        dev.kill()
        dev.wait()


def test_a_node_that_exits_while_starting_quotes_this_runs_log_only(tmp_path, monkeypatch):
    """The log is appended to at each start: the tail an error quoted was an earlier run's
    when this one wrote little."""
    kafka = EmbeddedKafka(tmp_path, port=free_port(), controller_port=free_port())
    kafka.kafka_dir.mkdir(parents=True)
    kafka.log_file.write_text("an earlier run's last words\n")
    _stand_in_for_java(kafka, monkeypatch, "print('this run'); raise SystemExit(3)")

    with pytest.raises(KafkaLauncherError) as failed:
        kafka.start(timeout=60)

    assert "exited with code 3 while starting" in str(failed.value)
    assert "this run" in str(failed.value)
    assert "earlier run" not in str(failed.value)
    assert "earlier run" in kafka.log_file.read_text()  # kept, not truncated


def test_status_reports_the_version_the_broker_was_launched_as(tmp_path, monkeypatch):
    """`kafka status` and `start` named TALKSTREAM_KAFKA_VERSION, not what runs."""
    older = EmbeddedKafka(tmp_path, version="3.9.1", port=free_port(), controller_port=free_port())
    up = "import signal; print('up', flush=True); signal.pause()"  # runs until killed
    _stand_in_for_java(older, monkeypatch, up)
    pid = older.launch()
    try:
        # another process's look at it checks its command line: once it runs as launched
        wait_until(lambda: "up" in older.log_tail(), 30, what="the stand-in to start")
        configured = EmbeddedKafka(tmp_path, version="4.4.0", port=older.port)

        assert configured.status().pid == pid
        assert configured.status().version == "3.9.1"
    finally:
        older.kill()
    assert configured.status().version == "4.4.0"  # nothing runs: what would start


def test_stop_sees_a_broker_that_exited_unreaped_as_stopped(tmp_path):
    """``talkstream kafka stop`` beside a running ``talkstream dev``: the broker is dev's child,
    so once it exits of the SIGTERM it stays a zombie until dev reaps it. A zombie answers
    signal 0: stop waited 30 s, sent SIGKILL, waited 10 s more and failed with "Kafka pid=N
    survived SIGKILL" (exit 1) for a broker that had stopped at once."""
    kafka = EmbeddedKafka(tmp_path)
    kafka.kafka_dir.mkdir(parents=True)
    broker = "import signal; signal.pause()"
    command = [sys.executable, "-c", broker, "kafka.Kafka", str(kafka.properties_file)]
    # forks the "broker", says its pid once it has exec'd (the pipe, closed on exec, ends), and
    # never reaps it, as dev does meanwhile
    parent = subprocess.Popen(
        _child(
            "import os, sys\nr, w = os.pipe()\npid = os.fork()\nif pid == 0:\n"
            f"    os.execv({sys.executable!r}, {command!r})\n"
            "os.close(w)\nos.read(r, 1)\nprint(pid, flush=True)\nsys.stdin.read()"
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        kafka.pid_file.write_text(f"{pid}\n")
        assert kafka.status().pid == pid

        assert kafka.stop(timeout=10) is True
        assert not kafka.pid_file.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):  # left running by a failure above
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()

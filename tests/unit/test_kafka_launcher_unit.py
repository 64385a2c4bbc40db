"""The pure pieces of the embedded Kafka launcher: config rendering, cluster ids, clear errors."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest

from streams.dev.kafka import (
    CONFIG_DIR,
    EmbeddedKafka,
    KafkaLauncherError,
    KafkaStatus,
    default_jars_dir,
    find_java,
    new_cluster_id,
    render_server_properties,
)


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
    assert kafka.jars_dir == Path("~/.cache/talkstream/kafka-3.9.1").expanduser()

    monkeypatch.setenv("TALKSTREAM_KAFKA_JARS", str(tmp_path / "jars"))
    assert default_jars_dir() == tmp_path / "jars"


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


def test_fetching_jars_that_are_there_needs_no_maven(tmp_path, monkeypatch):
    jars = tmp_path / "jars"
    jars.mkdir()
    for name in ("kafka_2.13-3.9.1.jar", "slf4j-reload4j-1.7.36.jar", "reload4j-1.2.25.jar"):
        (jars / name).touch()
    monkeypatch.setenv("PATH", "")

    assert EmbeddedKafka(tmp_path, jars_dir=jars).fetch_jars() == jars


def test_missing_maven_is_an_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")

    with pytest.raises(KafkaLauncherError, match="mvn"):
        EmbeddedKafka(tmp_path, jars_dir=tmp_path / "jars").fetch_jars()
    assert not (tmp_path / "jars").exists()


def test_a_missing_pom_is_an_actionable_error(tmp_path):
    kafka = EmbeddedKafka(tmp_path, jars_dir=tmp_path / "jars", config_dir=tmp_path / "nothing")

    with pytest.raises(KafkaLauncherError, match=r"pom\.xml is missing.*TALKSTREAM_KAFKA_JARS"):
        kafka.fetch_jars()


@pytest.mark.parametrize("pid_text", [str(os.getpid()), "not-a-pid", ""])
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

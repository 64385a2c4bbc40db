"""The embedded broker really starts, serves a topic, and stops (one real start, a few seconds)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.dev.kafka import (
    EmbeddedKafka,
    KafkaLauncherError,
    PortUnavailable,
    _maps,
    find_java,
)
from tests.support import free_port

pytestmark = pytest.mark.integration


async def _round_trip(bootstrap: str, topic: str) -> bytes:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await admin.start()
    try:
        # faust declares its topics with CreateTopics sent to the controller the metadata names
        assert (await admin.describe_cluster())["controller_id"] == 1
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        await producer.start()
        await producer.send_and_wait(topic, b"hello")
        await consumer.start()
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
        # no auto-creation: asking about a misspelt topic does not make it
        await admin.describe_topics([f"{topic}-typo"])
        assert f"{topic}-typo" not in await admin.list_topics()
        assert message.value is not None
        return message.value
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


async def test_the_broker_starts_once_serves_a_topic_and_stops(tmp_path):
    port, controller_port = free_port(), free_port()
    kafka = EmbeddedKafka(
        tmp_path, port=port, controller_port=controller_port, class_archive_dir=tmp_path
    )
    try:
        first = kafka.start(timeout=90)
        assert first.running
        assert first.pid is not None
        assert first.bootstrap == f"127.0.0.1:{port}"
        assert kafka.status().running
        assert (tmp_path / "kafka" / "logs" / "meta.properties").is_file()
        # its logging works (Kafka 4 logs nothing without a log4j2 binding for slf4j)
        assert "Kafka Server started" in kafka.log_tail(200)

        again = kafka.start(timeout=90)
        assert again.pid == first.pid

        assert await _round_trip(kafka.bootstrap, "launcher-check") == b"hello"
    finally:
        stopped = kafka.stop()

    assert stopped
    assert not kafka.status().running
    assert kafka.status().pid is None
    assert not kafka.pid_file.exists()
    assert kafka.stop() is False
    # its JVM wrote the archive of the classes it loaded as it exited, kept for the next start,
    # its warnings of the classes it could not archive unsaid
    assert kafka.class_archive(find_java()).is_file()
    assert not kafka.class_dump.exists()
    assert "[cds" not in kafka.log_file.read_text()


def test_a_broker_started_again_maps_its_classes_from_the_archive(tmp_path):
    """The second start maps the classes the first one's JVM archived as it exited: the
    JVM takes the archive (it says nothing of it in the node's log) and the node serves."""
    port, controller_port = free_port(), free_port()
    kafka = EmbeddedKafka(
        tmp_path, port=port, controller_port=controller_port, class_archive_dir=tmp_path
    )
    try:
        kafka.start(timeout=90)
        assert kafka.stop()
        archive = kafka.class_archive(find_java())
        assert archive.is_file()
        # what the JVM would die of (a SIGBUS, cut short) or leave aside is never kept
        jars = kafka.fetch_jars()
        assert _maps(find_java(), jars, archive)
        cut = tmp_path / "cut.jsa"
        cut.write_bytes(archive.read_bytes()[:100_000])
        crashes = set(Path.cwd().glob("hs_err_pid*.log"))
        assert not _maps(find_java(), jars, cut)
        assert set(Path.cwd().glob("hs_err_pid*.log")) == crashes  # its JVM's crash: no file
        again = kafka.start(timeout=90)
        cmdline = Path(f"/proc/{again.pid}/cmdline").read_bytes().split(b"\0")
        assert f"-XX:SharedArchiveFile={archive}".encode() in cmdline
        assert "Kafka Server started" in kafka.log_tail(200)
        assert "cds" not in kafka.log_tail(200).lower()  # no archive refused, nor dumped
    finally:
        kafka.stop()


def test_a_broker_whose_port_cannot_be_bound_says_which_in_one_line(tmp_path):
    """The broker exits when its client listener cannot bind: the launcher says which port
    and why, in one line, not with the 30 lines of Java stack trace its log ends with."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: looks free, cannot be bound
        port = squatter.getsockname()[1]
        controller_port = free_port()
        kafka = EmbeddedKafka(tmp_path, port=port, controller_port=controller_port)

        with pytest.raises(PortUnavailable) as failed:
            kafka.start(timeout=90)

    assert (failed.value.host, failed.value.port) == ("127.0.0.1", port)
    assert str(failed.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use; Kafka node 1 could not "
        "bind it and was stopped"
    )
    assert kafka.status().pid is None
    assert not kafka.pid_file.exists()


def test_a_controller_that_cannot_listen_ends_the_start_at_once_and_names_the_port(tmp_path):
    """Kafka exits when its broker listener cannot bind, but runs on without its controller
    listener (never answering): the launcher reads that from the log, kills it and says so,
    instead of waiting out its timeout (found as a three-node start that waited 81 s for a
    node whose controller port an outgoing connection had taken meanwhile)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: passes the launcher's check
        controller_port = squatter.getsockname()[1]
        port = free_port()
        kafka = EmbeddedKafka(tmp_path, port=port, controller_port=controller_port)

        with pytest.raises(KafkaLauncherError) as failed:
            kafka.start(timeout=240)

    assert isinstance(failed.value, PortUnavailable)
    assert str(failed.value) == (
        f"cannot listen on 127.0.0.1:{controller_port}: address already in use; Kafka node 1 "
        "could not bind it and was stopped"
    )
    assert kafka.status().pid is None
    assert not kafka.pid_file.exists()

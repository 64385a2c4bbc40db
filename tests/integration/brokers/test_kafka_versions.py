"""The other supported Kafka line, smoke tier: the whole suite runs on the session's version
(``TALKSTREAM_KAFKA_VERSION``, default 4.4.0); here one broker of every other supported version
(3.9.1 by default) carries one webhook through the whole pipeline to ``published``, and
``talkstream replay --verify`` finds every decision explained."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.dev.kafka import VERSIONS, EmbeddedKafka
from tests.integration.brokers.support import talkstream
from tests.integration.conftest import System, now_s, session_kafka_version
from tests.support import free_port, seed_params, usage

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

OTHER_VERSIONS = [version for version in VERSIONS if version != session_kafka_version()]


@pytest.fixture(scope="module", params=OTHER_VERSIONS)
def other_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp(f"kafka-{request.param}"),
        port=free_port(),
        controller_port=free_port(),
        version=request.param,
    )
    broker.start(timeout=120)
    yield broker
    broker.stop()


def test_one_webhook_is_published_and_verified(
    other_kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory
) -> None:
    version = other_kafka.version
    status = other_kafka.status()
    assert status.running and status.version == version
    # the process runs that version's jars, and its logging works (it says it started)
    cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes()
    assert f"kafka-{version}/".encode() in cmdline
    assert "Kafka Server started" in other_kafka.log_tail(200)

    system = System(other_kafka, tmp_path_factory.mktemp("system")).start()
    try:
        code, body = system.post(
            seed_params(f"smoke-{version}@example.com", usage_limit=usage(3, now=now_s()))
        )
        assert code == 202, body
        request_id = body["request_id"]
        rows = system.wait_terminal([request_id])
        assert rows[request_id].state == "published"
        events = system.talkable("GET", "/_events")
        assert [e["event_number"] for e in events] == [f"generate_text_complete-{request_id}"]

        verified = talkstream(system.env, "replay", "--verify")
        print(f"Kafka {version}: {verified}")
        assert verified.code == 0, verified
        assert "no differences" in verified.out
    finally:
        system.stop()

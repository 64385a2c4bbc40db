"""Records Kafka refuses for good, on the real broker: a topic whose ``max.message.bytes`` is
smaller than what is written to it, and a webhook whose record is larger than the ingress's
producer takes. Each ends with the reason; nothing loops, nothing stalls."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import System, http, samples
from tests.support import seed_params

pytestmark = pytest.mark.integration

GENERATE_TAKES = 4096  # bytes: [generate]'s max.message.bytes in these tests
REQUESTS_TAKES = 16384  # [requests]'


def set_max_message_bytes(bootstrap: str, limits: dict[str, int]) -> None:
    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)}
                    )
                    for topic, limit in limits.items()
                ]
            )
        finally:
            await admin.close()

    asyncio.run(alter())


def multipart(fields: list[tuple[str, bytes]]) -> bytes:
    parts = [
        b'--B\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
        + value + b"\r\n"
        for name, value in fields
    ]  # fmt: skip
    return b"".join(parts) + b"--B--\r\n"


@pytest.mark.timeout(300)
def test_records_kafka_refuses_end_with_their_reason(make_system) -> None:
    """A webhook whose command is larger than [generate] takes: the ledger decided its batch
    again for ever (Kafka refused the command each time), and every later webhook of its
    partition waited behind it. Now its attempt fails, ``RecordTooLarge`` (a letter says
    why), and the next webhook of the same person is published. A webhook larger than
    [requests] takes was answered 503, which Talkable retries for good: it is a 413 naming
    the limit."""
    system: System = make_system()
    system.wait_ready()
    app = system.app_id
    set_max_message_bytes(
        system.kafka.bootstrap,
        {f"{app}-generate": GENERATE_TAKES, f"{app}-requests": REQUESTS_TAKES},
    )

    status, body = system.post(seed_params("big@example.com", content="x" * (3 * GENERATE_TAKES)))
    assert status == 202, body
    large = body["request_id"]
    status, body = system.post(seed_params("big@example.com", content="a verse, please"))
    assert status == 202, body
    small = body["request_id"]
    rows = system.wait_terminal([large, small], timeout=120)
    assert (rows[large].state, rows[large].error_class) == ("generation_failed", "RecordTooLarge")
    assert f"{app}-generate" in (rows[large].error_message or "")
    assert rows[small].state == "published"

    preview = system.talkstream("redrive", "--dry-run", "--request-id", large)
    assert "RecordTooLarge" in preview, preview
    metrics = system.worker_url() + "/metrics"
    letters = {
        sample.labels["topic"]: sample.value
        for sample in samples(http("GET", metrics)[1], "talkstream_dead_letters_total")
    }
    assert letters.get(f"{app}-generate", 0) >= 1

    status, body = system.post(seed_params("huge@example.com", content="x" * (2 * REQUESTS_TAKES)))
    assert status == 413, body
    [error] = body["errors"]
    assert error["field"] == "body"
    assert (
        f"more than {app}-requests takes ({REQUESTS_TAKES}: its max.message.bytes)"
        in (error["message"])
    )

    # a multipart body under the ingress's own limit (256 KiB) whose control characters JSON
    # writes six bytes each: over the producer's 1 MiB, refused before it is sent
    fields = [
        ("site", b"test-site"),
        ("email", b"ctl@example.com"),
        ("api_key", b"talkable-key-0001"),
        ("openai[api_key]", b"sk-test-openai-0001"),
        ("openai[messages][][role]", b"user"),
        ("openai[messages][][content]", b"\x01" * 200_000),
    ]
    status, body = system.post(
        raw=multipart(fields), headers={"Content-Type": "multipart/form-data; boundary=B"}
    )
    assert status == 413, body
    assert (
        "more than the producer takes (1048576: its max_request_size)"
        in (body["errors"][0]["message"])
    )

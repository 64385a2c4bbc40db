"""A stop of the ingress, as ``talkstream ingress`` serves it (``streams.refusals``' runner),
while a webhook waits for Kafka: README's "the stop waits up to INGRESS_SHUTDOWN_SECONDS for the
webhooks in progress, closes the connections of those still waiting for Kafka without an
answer" (and then gives Kafka 10 s more, which the sink's own tests hold).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from streams.ingress import PATH, AccessLogger, build_ingress
from tests.functional.conftest import (
    JSON,
    RecordingSink,
    Served,
    make_settings,
    secret_box,
    seed_params,
)


@dataclass
class StalledSink(RecordingSink):
    """Kafka that never acknowledges: a webhook handed to it waits, as the real sink's does
    for a record its producer holds."""

    handed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.handed.set()
        await asyncio.Event().wait()


async def test_a_stop_gives_a_webhook_waiting_for_kafka_the_shutdown_seconds_in_all(
    tmp_path: Path,
) -> None:
    """It was twice the setting: aiohttp waited for the handler, then cancelled only the
    reading of its body and waited as long again (31 s of the default 15, 41.6 s before the
    process ended)."""
    settings = make_settings(tmp_path, ingress_shutdown_seconds=2)
    sink = StalledSink()
    server = Served(build_ingress(settings, sink, secret_box()))
    # as talkstream ingress runs it (streams.cli): the setting is the runner's shutdown_timeout
    await server.start_server(
        access_log_class=AccessLogger, shutdown_timeout=settings.ingress_shutdown_seconds
    )
    async with aiohttp.ClientSession() as session:
        posting = asyncio.ensure_future(
            session.post(
                server.make_url(PATH),
                data=json.dumps(seed_params()),
                headers={"Content-Type": JSON},
            )
        )
        await asyncio.wait_for(sink.handed.wait(), 10)
        started = time.monotonic()
        await server.close()  # SIGTERM's path: the runner's cleanup
        took = time.monotonic() - started
        # closed unanswered: its sender retries it, promised nothing
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await posting
    assert settings.ingress_shutdown_seconds <= took < 1.5 * settings.ingress_shutdown_seconds, (
        f"the stop waited {took:.1f}s for a webhook, INGRESS_SHUTDOWN_SECONDS being "
        f"{settings.ingress_shutdown_seconds:g}"
    )

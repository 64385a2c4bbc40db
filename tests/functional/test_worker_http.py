"""The worker's and the projector's ``/readyz`` on real aiokafka connections: to a broker of
this test's own, on loopback, that answers a connection's handshake and then holds every
request (a broker that hangs) until the test closes it (a broker gone). ``/readyz`` says
Kafka is out of reach without a request of its own, within a moment."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.client import ConnectionGroup
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.admin import ApiVersionResponse_v0, ApiVersionResponse_v1
from aiokafka.protocol.metadata import MetadataRequest

from streams.observability import (
    KAFKA_SILENCE_SECONDS,
    WorkerMetrics,
    kafka_unreachable,
    serve_worker_http,
)
from tests.functional.conftest import exchange

API_VERSIONS = 18
METADATA = 3


class SilentBroker:
    """Answers ApiVersions (what aiokafka asks first on every connection), and nothing more:
    every later request waits, as on a broker that hangs, until :meth:`close` drops the
    connections, as a broker that stops does."""

    def __init__(self) -> None:
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                api_key, version, correlation = struct.unpack(">hhi", await reader.readexactly(8))
                await reader.readexactly(size - 8)
                if api_key == API_VERSIONS:
                    supported = [(API_VERSIONS, 0, 2), (METADATA, 0, 1)]
                    if version == 0:
                        body = ApiVersionResponse_v0(0, supported)
                    else:
                        body = ApiVersionResponse_v1(0, supported, 0)
                    answer = struct.pack(">i", correlation) + body.encode()
                    writer.write(struct.pack(">i", len(answer)) + answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def close(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def broker() -> AsyncIterator[SilentBroker]:
    server = SilentBroker()
    await server.start()
    yield server
    await server.close()


async def consumer_on(broker: SilentBroker) -> tuple[AIOKafkaConsumer, AIOKafkaConnection]:
    """A consumer (not started) holding one real connection to ``broker``, where aiokafka's
    client keeps it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{broker.port}")
    conn = await create_conn("127.0.0.1", broker.port)
    consumer._client._conns[(0, ConnectionGroup.DEFAULT)] = conn
    return consumer, conn


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_connection_is_kafka_answering_until_it_waits_in_silence_or_closes(
    broker: SilentBroker,
) -> None:
    consumer, conn = await consumer_on(broker)
    try:
        # up and waiting for nothing (the handshake answered): a broker answering
        assert kafka_unreachable([consumer]) is None
        waiting = asyncio.ensure_future(conn.send(MetadataRequest([])))
        await until(lambda: len(conn._requests) == 1)
        # a request waiting: fine for a while, out of reach once the silence is long
        assert kafka_unreachable([consumer]) is None
        later = time.monotonic() + KAFKA_SILENCE_SECONDS + 1
        assert kafka_unreachable([consumer], later) == (
            f"Kafka unreachable: no broker has answered for {KAFKA_SILENCE_SECONDS + 1:.0f} s"
        )
        await broker.close()  # the broker goes: aiokafka sees its connection closed
        await until(lambda: not conn.connected())
        assert kafka_unreachable([consumer]) == "Kafka unreachable: no connection to a broker"
        with pytest.raises(KafkaConnectionError, match="closed"):
            await waiting
    finally:
        conn.close()
        await consumer._client.close()


async def test_readyz_answers_at_once_whether_kafka_answers_the_process(
    broker: SilentBroker,
) -> None:
    """The projector on its own (no faust app): ready while its consumer's broker answers;
    503 with the reason once it is gone, alive all the same."""
    consumer, conn = await consumer_on(broker)
    metrics = WorkerMetrics()
    metrics.consumers.append(SimpleNamespace(consumer=consumer, lag=dict))
    runner = await serve_worker_http(None, metrics, "127.0.0.1", 0, name="projector")
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def get(path: str) -> tuple[int, Any]:
                async with http.get(url + path) as answer:
                    return answer.status, await answer.json()

            assert await get("/readyz") == (200, {"ready": True, "status": "ready"})
            await broker.close()
            await until(lambda: not conn.connected())
            assert await get("/readyz") == (
                503,
                {"ready": False, "status": "Kafka unreachable: no connection to a broker"},
            )
            assert await get("/healthz") == (200, {"status": "ok"})
    finally:
        await runner.cleanup()
        conn.close()
        await consumer._client.close()


@pytest.mark.parametrize(
    ("server", "settings", "named"),
    [
        ("worker", {"worker_http_port": "taken"}, "TALKSTREAM_WORKER_HTTP_PORT"),
        ("projector", {"projector_http_port": "taken"}, "TALKSTREAM_PROJECTOR_HTTP_PORT"),
        ("worker", {"worker_http_host": "999.1.1.1"}, "TALKSTREAM_WORKER_HTTP_HOST"),
    ],
)
async def test_an_address_the_worker_cannot_have_is_logged_with_what_to_change(
    server: str, settings: dict[str, str], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It keeps working, unobserved (a second one on this host); the port is not blamed for
    a host that is no address here."""
    import socket

    from streams.observability import serve_or_log
    from streams.settings import Settings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        given = {k: (port if v == "taken" else v) for k, v in settings.items()}
        with caplog.at_level("ERROR", logger="streams.observability"):
            served = await serve_or_log(None, WorkerMetrics(), Settings(**given), server)
    assert served is None
    [said] = [r.getMessage() for r in caplog.records if "http not started" in r.getMessage()]
    assert said.startswith(f"{server} http not started on ") and said.endswith(f"; set {named}")


async def test_what_aiohttp_refuses_is_answered_in_json_quoting_nothing() -> None:
    """The worker's and the projector's own server, as the ingress and the console: a request
    line aiohttp's parser refuses, or a path it does not have, is the product's error shape,
    with nothing of the request (aiohttp's own text quoted the request line, query and all)."""
    runner = await serve_worker_http(None, WorkerMetrics(), "127.0.0.1", 0, name="projector")
    server = SimpleNamespace(host="127.0.0.1", port=runner.addresses[0][1])
    try:
        bad = await exchange(server, b"GE(T /metrics?token=sk-quoted-9 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bad.status == 400 and b"sk-quoted-9" not in bad.raw, bad.raw
        assert json.loads(bad.body)["errors"][0]["field"] == "method"
        missing = await exchange(
            server, b"GET /nope?token=sk-quoted-9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert missing.status == 404 and b"sk-quoted-9" not in missing.raw
        assert json.loads(missing.body) == {
            "errors": [{"field": "path", "message": "no such path"}]
        }
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({"executors": "worker"}, None),  # the executors in the worker
        ({}, "http://127.0.0.1:9103/readyz"),  # in its child, the default
        ({"executors": "off"}, None),  # another process's, not this worker's
        ({"executors": "process", "executors_http_port": 0}, None),  # any free port: unknown
        ({"executors": "process"}, "http://127.0.0.1:9103/readyz"),
        ({"executors": "process", "worker_http_host": "0.0.0.0"}, "http://127.0.0.1:9103/readyz"),
        ({"executors": "process", "worker_http_host": "::1"}, "http://[::1]:9103/readyz"),
    ],
)
def test_the_worker_asks_its_executors_childs_readyz_where_it_listens(
    settings: dict[str, Any], url: str | None
) -> None:
    from streams.observability import executors_child_readyz
    from streams.settings import Settings

    assert executors_child_readyz(Settings(**settings)) == url


async def test_a_child_not_ready_or_not_answering_is_said_by_the_worker(
    broker: SilentBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``EXECUTORS=process``: the worker, ready itself, says its child's status as its reason
    (``executors not ready: ...``), or that the child does not answer when nothing listens."""
    import socket

    from streams.observability import child_unready

    # the "child" serves in this process: its parent, as a child of this one says
    monkeypatch.setattr(os, "getppid", os.getpid)

    consumer, conn = await consumer_on(broker)  # the worker's own: a broker answers it
    metrics = WorkerMetrics()
    metrics.consumers.append(SimpleNamespace(consumer=consumer, lag=dict))
    child = await serve_worker_http(None, WorkerMetrics(), "127.0.0.1", 0, name="executors")
    child_url = f"http://127.0.0.1:{child.addresses[0][1]}/readyz"
    with socket.socket() as nothing:  # a port nothing listens on
        nothing.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{nothing.getsockname()[1]}/readyz"
    worker = await serve_worker_http(None, metrics, "127.0.0.1", 0, child=child_url)
    try:
        assert await child_unready(child_url) == "connecting to Kafka"  # (no consumer yet)
        assert await child_unready(gone) == "its /readyz does not answer (ClientConnectorError)"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            url = f"http://127.0.0.1:{worker.addresses[0][1]}/readyz"
            async with http.get(url) as answer:
                assert (answer.status, await answer.json()) == (
                    503,
                    {"ready": False, "status": "executors not ready: connecting to Kafka"},
                )
    finally:
        await worker.cleanup()
        await child.cleanup()
        conn.close()
        await consumer._client.close()


async def test_a_worker_does_not_take_another_workers_executors_child_for_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers on one host, each with the default ``EXECUTORS_HTTP_PORT``: the second one's
    child cannot listen there (logged, it keeps working), and the second worker's ``/readyz``
    asked the first one's child, and said its readiness as its own. A child says whose it is
    (its parent); a worker that finds another's says so, naming the setting."""
    from streams.observability import child_unready

    other_worker = os.getpid() + 1
    monkeypatch.setattr(os, "getppid", lambda: other_worker)
    child = await serve_worker_http(None, WorkerMetrics(), "127.0.0.1", 0, name="executors")
    url = f"http://127.0.0.1:{child.addresses[0][1]}/readyz"
    try:
        said = await child_unready(url)
        assert said == (
            f"{url} answers for another worker's executors (pid {other_worker}'s), not this "
            "one's: give each worker on a host its own TALKSTREAM_EXECUTORS_HTTP_PORT"
        )
        monkeypatch.setattr(os, "getppid", os.getpid)  # its own child
        assert await child_unready(url) == "connecting to Kafka"  # its own status again
    finally:
        await child.cleanup()

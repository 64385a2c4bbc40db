"""When no broker lets us in, the reason comes in one line (in-process, on loopback)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from streams.errors import BrokerUnavailable
from streams.kafka_options import broker_error, diagnose
from streams.settings import Settings
from tests.support import CHECKOUT, Lines, free_port


async def test_diagnose_names_the_first_cause_and_broker_error_its_kind() -> None:
    port = free_port()  # nothing listens there
    s = Settings(kafka_bootstrap=f"127.0.0.1:{port}")
    assert await diagnose(s) == (
        f"Kafka at 127.0.0.1:{port}: nothing listens there (connection refused)"
    )
    error = await broker_error(s, KafkaConnectionError("Unable to bootstrap"))
    assert isinstance(error, BrokerUnavailable) and "nothing listens" in str(error)


async def test_a_listener_that_is_not_kafka_is_asked_whether_it_is_one() -> None:
    """An HTTP server at the bootstrap address (another service's port) answers a Kafka request
    with its own and closes the connection: that was said as a listener that expects TLS or
    SASL only, sending the operator to the security settings of a broker that is not there."""

    async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cause = await diagnose(Settings(kafka_bootstrap=f"127.0.0.1:{port}"))
    finally:
        server.close()
        await server.wait_closed()
    assert cause == (
        f"Kafka at 127.0.0.1:{port} closed the connection: is that a Kafka listener, and does "
        "it expect TLS or SASL (TALKSTREAM_KAFKA_SECURITY_PROTOCOL is PLAINTEXT)?"
    )


@pytest.mark.parametrize(
    ("command", "seconds"),
    [
        (["topics"], 30),
        (["redrive", "--dry-run"], 40),
        (["replay", "--database-url", "sqlite:///{tmp}/rebuilt.sqlite3"], 40),
    ],
)
def test_a_command_says_it_waits_for_a_listener_that_never_answers(
    command: list[str], seconds: int, tmp_path: Path
) -> None:
    """A listener that takes the connection and never answers held `talkstream topics` 36 s
    and `redrive --dry-run` 47 s (`replay` as long) without a word before their timeout
    error. The kernel accepts the connection for a listening socket nobody reads; the
    command, started as a user starts it, says on stderr what it waits for and how long at
    most while it waits (it is stopped then: its timeout error is tested elsewhere)."""
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = silent.getsockname()[1]
    env = {
        **os.environ,
        "TALKSTREAM_DATA_DIR": str(tmp_path),
        "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", *(arg.format(tmp=tmp_path) for arg in command)],
        env=env,
        cwd=CHECKOUT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(proc, proc.stderr)
        # well before the command gives up (it would end stderr without the line)
        lines.until("waiting for Kafka", timeout=seconds - 5)
        assert lines.seen[-1] == (
            f"waiting for Kafka at 127.0.0.1:{port} to answer: up to {seconds} s, then up to "
            "10 s more to find out why if it does not"
        )
        assert proc.poll() is None  # said while it waits
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
        silent.close()

"""When no broker lets us in, the reason comes in one line (in-process, on loopback)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError

from streams.errors import BrokerUnavailable
from streams.kafka_options import broker_error, diagnose
from streams.settings import Settings
from tests.support import free_port


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

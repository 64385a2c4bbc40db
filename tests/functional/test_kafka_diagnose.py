"""When no broker lets us in, the reason comes in one line (in-process, on loopback)."""

from __future__ import annotations

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

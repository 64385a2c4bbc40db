"""Managed clusters: TLS and SASL settings reach every Kafka client we make."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from streams.agents.projector import ProjectorConfig
from streams.app import build
from streams.kafka_options import (
    IdempotentProducer,
    KeyPartitioner,
    _cause,
    client_options,
    faust_credentials,
    group_consumer,
)
from streams.settings import Settings
from streams.topics import CATALOGUE, _new_topic


def settings(**values: str) -> Settings:
    return Settings(kafka_bootstrap="b-1.example:9096,b-2.example:9096", **values)


def test_plaintext_needs_nothing() -> None:
    options = client_options(settings())
    assert options == {
        "bootstrap_servers": "b-1.example:9096,b-2.example:9096",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(settings()) is None


def test_sasl_ssl_scram_for_a_managed_cluster() -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="talkstream",
        kafka_sasl_password="s3cret-pw",
    )
    options = client_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "talkstream",
        "s3cret-pw",
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.ssl_context is not None
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)  # SecretStr


def test_tls_only() -> None:
    s = settings(kafka_security_protocol="SSL")
    assert isinstance(client_options(s)["ssl_context"], ssl.SSLContext)
    assert isinstance(faust_credentials(s), faust.SSLCredentials)


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        settings(kafka_security_protocol="SASL_TLS")


async def test_every_group_of_a_worker_has_its_session_timeout(tmp_path: Path) -> None:
    """The executors' and the projector's groups, like faust's: a worker back within
    ``SESSION_TIMEOUT_SECONDS`` takes all its partitions straight back, and a dead one's move
    to the survivors at once, not the executors' after aiokafka's 10 s and the ledger's later."""
    s = Settings(
        data_dir=tmp_path,
        secret_keys=Fernet.generate_key().decode(),
        table_store="memory://",
        session_timeout_seconds=45,
        executors="worker",  # built here, whatever TALKSTREAM_EXECUTORS says
    )
    worker = build(s)
    assert worker.app.conf.broker_session_timeout == 45
    configs = [executor.config for executor in worker.executors] + [ProjectorConfig.of(s)]
    assert len(configs) == 3
    for config in configs:
        consumer = group_consumer(config.consumer_options, config.group, config.instance)
        assert consumer._session_timeout_ms == 45_000, config.group
        assert consumer._heartbeat_interval_ms == 4_500
        assert consumer._client._request_timeout_ms > 45_000  # a join may wait that long
        assert consumer._client._bootstrap_servers == s.kafka_bootstrap


def test_min_insync_replicas_follows_the_replication_factor_unless_set() -> None:
    assert [settings(replication_factor=str(rf)).insync_replicas for rf in (1, 2, 3, 5)] == [
        1,
        1,
        2,
        2,
    ]
    assert settings(replication_factor="3", min_insync_replicas="3").insync_replicas == 3
    with pytest.raises(ValueError, match="no write could ever be acknowledged"):
        settings(replication_factor="2", min_insync_replicas="3")


def test_topics_carry_the_replication_settings() -> None:
    s = settings(replication_factor="3")
    topics = {spec.full_name(s): _new_topic(s, spec) for spec in CATALOGUE}
    for name, topic in topics.items():
        assert topic.replication_factor == 3, name
        assert topic.topic_configs["min.insync.replicas"] == "2", name
    assert topics["talkstream-ledger-changelog"].topic_configs["cleanup.policy"] == "compact"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            SaslAuthenticationFailed("Authentication failed during authentication"),
            "refused the SASL credentials: authentication failed for user 'talkstream' "
            "with SCRAM-SHA-512 (SaslAuthenticationFailed); check TALKSTREAM_KAFKA_SASL_USERNAME",
        ),
        (
            ssl.SSLCertVerificationError(1, "certificate verify failed"),
            "TLS with Kafka at b-1.example:9096 failed",
        ),
        (
            ConnectionRefusedError(111, "refused"),
            "Kafka at b-1.example:9096: nothing listens there",
        ),
        (
            KafkaConnectionError("Connection at b-1.example:9096 closed"),
            "closed the connection: is that a Kafka listener, and does it expect TLS or SASL"
            " (TALKSTREAM_KAFKA_SECURITY_PROTOCOL is SASL_SSL)",
        ),
        (TimeoutError(), "did not answer (timeout)"),
        (  # SASL against a listener without it: not a password to check (a probe was told so)
            IllegalSaslStateError(),
            "refused the SASL handshake (ILLEGAL_SASL_STATE): its listener does not take SASL; "
            "is TALKSTREAM_KAFKA_SECURITY_PROTOCOL (SASL_SSL) the listener's?",
        ),
        (
            UnsupportedSaslMechanismError(
                "Kafka broker does not support SCRAM-SHA-512 sasl mechanism. Enabled "
                "mechanisms are: ['PLAIN']"
            ),
            "refused the SASL mechanism SCRAM-SHA-512: Kafka broker does not support "
            "SCRAM-SHA-512 sasl mechanism. Enabled mechanisms are: ['PLAIN']; set "
            "TALKSTREAM_KAFKA_SASL_MECHANISM to one it offers",
        ),
        (  # TLS against a plain listener: the reset had no words of its own
            ConnectionResetError(),
            "reset the connection during the TLS handshake: does its listener take TLS "
            "(TALKSTREAM_KAFKA_SECURITY_PROTOCOL is SASL_SSL)?",
        ),
    ],
)
def test_a_refused_connection_is_one_line_that_says_why_and_no_password(error, says) -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="talkstream",
        kafka_sasl_password="s3cret-pw",
    )
    line = _cause(s, "b-1.example:9096", error)
    assert says in line
    assert "\n" not in line and "s3cret-pw" not in line


@given(key=st.binary(min_size=0, max_size=64), count=st.integers(min_value=1, max_value=64))
def test_the_key_partitioner_puts_a_key_where_aiokafkas_default_does(
    key: bytes, count: int
) -> None:
    every = list(range(count))
    assert KeyPartitioner()(key, every, every) == DefaultPartitioner()(key, every, every)


def test_the_key_partitioner_works_out_a_keys_hash_once(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[bytes] = []

    def counted(key: bytes) -> int:
        hashed.append(key)
        return murmur2(key)

    monkeypatch.setattr("streams.kafka_options.murmur2", counted)
    partitioner = KeyPartitioner()
    every = list(range(12))
    assert {partitioner(b"person-1", every, every) for _ in range(8)} == {
        DefaultPartitioner()(b"person-1", every, every)
    }
    assert hashed == [b"person-1"]
    assert partitioner(None, every, [5]) == 5  # no key: any partition available, as aiokafka's


async def test_the_producers_take_the_key_partitioner_unless_given_another() -> None:
    faust_default = IdempotentProducer(
        bootstrap_servers="127.0.0.1:1", partitioner=DefaultPartitioner()
    )
    assert isinstance(faust_default._partitioner, KeyPartitioner)
    assert isinstance(
        IdempotentProducer(bootstrap_servers="127.0.0.1:1")._partitioner, KeyPartitioner
    )

    def own(key: bytes | None, every: list[int], available: list[int]) -> int:
        return every[0]

    assert IdempotentProducer(bootstrap_servers="127.0.0.1:1", partitioner=own)._partitioner is own

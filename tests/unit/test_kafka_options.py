"""Managed clusters: TLS and SASL settings reach every Kafka client we make."""

from __future__ import annotations

import ssl

import faust
import pytest

from streams.kafka_options import client_options, faust_credentials
from streams.settings import Settings


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

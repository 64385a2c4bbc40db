"""Settings that do not validate end every command with one line that names each variable,
not with a traceback, and without repeating the value (it could be a secret)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from streams.cli import main


@pytest.mark.parametrize("command", [["projector"], ["worker"], ["stats"], ["replay", "--verify"]])
def test_an_invalid_setting_is_named_in_one_line(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALKSTREAM_PROJECTOR", "sideways-s3cr3t")
    monkeypatch.setenv("TALKSTREAM_PRODUCER_LINGER_MS", "soon")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: invalid settings: ")
    assert "TALKSTREAM_PROJECTOR: Input should be 'worker', 'process' or 'off'" in result.output
    assert "TALKSTREAM_PRODUCER_LINGER_MS: Input should be a valid integer" in result.output
    assert "sideways-s3cr3t" not in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


BOOTSTRAP, SITE_KEYS = "TALKSTREAM_KAFKA_BOOTSTRAP", "TALKSTREAM_SITE_SECURITY_KEYS"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (BOOTSTRAP, "", "is empty: give host:port, e.g. 127.0.0.1:9092"),
        (BOOTSTRAP, "localhost", "'localhost' is not host:port (e.g. 127.0.0.1:9092)"),
        (BOOTSTRAP, "k:9092,h:abc", "'h:abc' is not host:port (e.g. 127.0.0.1:9092)"),
        (BOOTSTRAP, ":9092", "':9092' is not host:port (e.g. 127.0.0.1:9092)"),
        (BOOTSTRAP, "127.0.0.1:99999", "'127.0.0.1:99999': a port is from 1 to 65535"),
        *(  # each passed and failed later, in a Kafka client
            (BOOTSTRAP, entry, f"{entry!r} is not host:port (e.g. 127.0.0.1:9092)")
            for entry in (
                "[::1:19100",
                "::1]:19100",
                "[not-v6]:19100",
                "PLAINTEXT://127.0.0.1:19100",
                "a b:19100",
                "::1:19100",
            )
        ),
        # read leniently, a mistyped entry left its site accepting unsigned webhooks
        (SITE_KEYS, "acme:s3cr3t", "entry 1 is not site=key (site=key,site2=key2)"),
        (SITE_KEYS, "acme=k1,globex=", "entry 2 is not site=key (site=key,site2=key2)"),
        (SITE_KEYS, "=s3cr3t", "entry 1 is not site=key (site=key,site2=key2)"),
        (SITE_KEYS, "acme=k1,acme=s3cr3t", "site 'acme' is given twice"),
        (SITE_KEYS, "acme=k1,ACME=s3cr3t", "site 'ACME' is given twice"),  # one site, any case
        *(  # another separator: site acme with the key "k1;globex=..." and globex unchecked
            (
                SITE_KEYS,
                f"acme=k1{sep}globex=s3cr3t",
                "entry 1's key holds a space or a ';': "
                "entries are separated by commas (site=key,site2=key2)",
            )
            for sep in (";", " ", "; ")
        ),
    ],
)
def test_a_malformed_list_setting_is_named_before_anything_uses_it(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a ValueError or OverflowError traceback from deep in the Kafka client, nor a site
    left unchecked; a key is never repeated."""
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["ingress"])
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: invalid settings: {variable}: {says}\n"
    assert "s3cr3t" not in result.output


def test_a_bootstrap_list_is_read_as_kafka_reads_it() -> None:
    from streams.settings import Settings

    given = Settings(kafka_bootstrap=" kafka-1:9092, ,[::1]:9093 ,k_2.example.com:1")
    assert given.kafka_bootstrap == "kafka-1:9092,[::1]:9093,k_2.example.com:1"


def test_a_rule_across_settings_is_said_in_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALKSTREAM_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("TALKSTREAM_MIN_INSYNC_REPLICAS", "2")
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: invalid settings: TALKSTREAM_MIN_INSYNC_REPLICAS 2 is more than "
        "TALKSTREAM_REPLICATION_FACTOR 1: no write could ever be acknowledged\n"
    )


def test_an_upstream_url_that_is_not_http_is_named_without_repeating_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Caught at start: not every call failing as if the upstream were unreachable."""
    monkeypatch.setenv("TALKSTREAM_OPENAI_BASE_URL", "api.openai.com/v1")
    monkeypatch.setenv("TALKSTREAM_TALKABLE_BASE_URL", "ftp://user:s3cr3t@talkable.example")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: invalid settings: TALKSTREAM_OPENAI_BASE_URL: is not an http(s) URL with a "
        "host, e.g. https://api.openai.com/v1; TALKSTREAM_TALKABLE_BASE_URL: is not an http(s) "
        "URL with a host, e.g. https://www.talkable.com/api/v2\n"
    )


def test_an_upstream_url_with_credentials_is_refused_without_repeating_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``user:password@`` in a base URL: the HTTP clients refuse it beside the key's
    Authorization header, so no call was ever made. OpenAI's calls were taken for an outage
    (every request waited out ``MAX_WAIT_SECONDS``), Talkable's for a key that cannot be a
    header (``InvalidKey``)."""
    monkeypatch.setenv("TALKSTREAM_OPENAI_BASE_URL", "https://proxy-user:s3cr3t@proxy.example/v1")
    monkeypatch.setenv("TALKSTREAM_TALKABLE_BASE_URL", "https://user@talkable.example/api/v2")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: invalid settings: TALKSTREAM_OPENAI_BASE_URL: carries credentials "
        "(user:password@), which cannot be sent beside the API key's Authorization header: give "
        "the URL without them, e.g. https://api.openai.com/v1; TALKSTREAM_TALKABLE_BASE_URL: "
        "carries credentials (user:password@), which cannot be sent beside the API key's "
        "Authorization header: give the URL without them, e.g. https://www.talkable.com/api/v2\n"
    )
    assert "s3cr3t" not in result.output


def test_a_console_worker_url_that_is_not_http_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """It was never checked: the console showed no worker's pacing and said nothing of why."""
    from streams.settings import Settings

    monkeypatch.setenv("TALKSTREAM_CONSOLE_WORKER_URLS", "http://127.0.0.1:9101, not a url")
    result = CliRunner().invoke(main, ["console"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: invalid settings: TALKSTREAM_CONSOLE_WORKER_URLS: entry 2 is not an http(s) URL "
        "with a host, e.g. http://127.0.0.1:9101 (comma separated)\n"
    )
    urls = "http://10.0.0.1:9101/, https://w2.example:9101"
    assert Settings(console_worker_urls=urls).worker_metrics_urls == [
        "http://10.0.0.1:9101/metrics",
        "https://w2.example:9101/metrics",
    ]


def test_the_consoles_default_workers_follow_executors_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``EXECUTORS=process`` in the console's environment (one env file for every command):
    the calls are counted in the executors' child, on ``EXECUTORS_HTTP_PORT``; the console read
    the default worker port, whose /metrics has none of their series, and every site's row said
    "no Talkable calls since the worker started". Named, ``CONSOLE_WORKER_URLS`` is read as set."""
    from streams.settings import Settings

    monkeypatch.setenv("TALKSTREAM_EXECUTORS", "process")
    assert Settings().worker_metrics_urls == ["http://127.0.0.1:9103/metrics"]
    monkeypatch.setenv("TALKSTREAM_EXECUTORS_HTTP_PORT", "19403")
    assert Settings().worker_metrics_urls == ["http://127.0.0.1:19403/metrics"]
    monkeypatch.setenv("TALKSTREAM_CONSOLE_WORKER_URLS", "http://127.0.0.1:9101")
    assert Settings().worker_metrics_urls == ["http://127.0.0.1:9101/metrics"]
    monkeypatch.delenv("TALKSTREAM_CONSOLE_WORKER_URLS")
    monkeypatch.setenv("TALKSTREAM_EXECUTORS", "worker")
    assert Settings().worker_metrics_urls == ["http://127.0.0.1:9101/metrics"]


def test_an_upstream_url_is_read_without_surrounding_spaces() -> None:
    from streams.settings import Settings

    assert Settings(openai_base_url=" http://127.0.0.1:8081/v1 ").openai_base_url == (
        "http://127.0.0.1:8081/v1"
    )


def test_site_keys_are_read_as_written() -> None:
    from streams.settings import Settings

    assert Settings(site_security_keys=" acme = k1 , globex=b64key==,").site_keys == {
        "acme": b"k1",
        "globex": b"b64key==",
    }
    assert Settings(site_security_keys="").site_keys == {}  # compose's unset variable
    assert Settings(site_security_keys="").site_security_keys is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"TALKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "TALKSTREAM_KAFKA_SECURITY_PROTOCOL SASL_SSL needs TALKSTREAM_KAFKA_SASL_USERNAME "
            "and TALKSTREAM_KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "TALKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "TALKSTREAM_KAFKA_SASL_USERNAME": "u",
            },
            "TALKSTREAM_KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT needs "
            "TALKSTREAM_KAFKA_SASL_PASSWORD",
        ),
        (
            {"TALKSTREAM_KAFKA_SSL_KEYFILE": __file__},
            "TALKSTREAM_KAFKA_SSL_KEYFILE is given without TALKSTREAM_KAFKA_SSL_CERTFILE: "
            "a client key needs its certificate",
        ),
        (
            {"TALKSTREAM_KAFKA_SSL_CERTFILE": "/no/such/cert.pem"},
            "TALKSTREAM_KAFKA_SSL_CERTFILE: '/no/such/cert.pem' is not a file",
        ),
        (
            {"TALKSTREAM_KAFKA_SSL_CAFILE": __file__},
            f"TALKSTREAM_KAFKA_SSL_CAFILE: {__file__!r} holds no PEM certificate",
        ),
    ],
)
@pytest.mark.parametrize("command", [["ingress"], ["topics"]])
def test_kafka_security_that_cannot_work_is_named_at_start(
    env: dict[str, str], says: str, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a Kafka client's traceback, nor an ingress that starts and answers 500."""
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: invalid settings: {says}\n"


def test_an_unreadable_tls_file_is_named_with_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.settings

    cert = tmp_path / "client.pem"
    cert.write_text("x")
    real_access = os.access

    def access(path: Any, mode: int) -> bool:  # as a user without root sees it (tests run as root)
        return False if str(path) == str(cert) else real_access(path, mode)

    monkeypatch.setattr(streams.settings.os, "access", access)
    monkeypatch.setenv("TALKSTREAM_KAFKA_SSL_CERTFILE", str(cert))
    result = CliRunner().invoke(main, ["topics"])
    assert result.output == (
        f"Error: invalid settings: TALKSTREAM_KAFKA_SSL_CERTFILE: {str(cert)!r} cannot be read\n"
    )


def test_a_ca_file_in_pem_is_taken(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from streams.settings import Settings

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "talkstream test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    assert Settings(kafka_ssl_cafile=str(cafile)).kafka_ssl_cafile == str(cafile)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        *(
            (
                "TALKSTREAM_LOG_LEVEL",
                value,
                "Input should be 'debug', 'info', 'warning', 'error' or 'critical'",
            )
            for value in ("verbose", "")
        ),
        *(
            ("TALKSTREAM_TABLE_STORE", value, "should be rocksdb:// or memory://")
            for value in ("bogus://", "", "rocksdb", "aerospike://")
        ),
    ],
)
def test_a_log_level_or_table_store_that_does_not_exist_is_named_at_start(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not logging's ValueError or faust's traceback once the command has started."""
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: invalid settings: {variable}: {says}\n"


def test_a_log_level_is_read_in_any_case() -> None:
    from streams.settings import Settings

    assert Settings(log_level=" WARNING").log_level == "warning"
    assert Settings(table_store="memory://").table_store == "memory://"


def _float_settings() -> list[str]:
    from streams.settings import Settings

    return [name for name, field in Settings.model_fields.items() if field.annotation is float]


@pytest.mark.parametrize("name", _float_settings())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_a_float_setting_must_be_finite(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inf passed every bound and crashed later (an OverflowError in the deadline timer, a
    console session that never ends)."""
    variable = f"TALKSTREAM_{name.upper()}"
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1, result.output
    assert (
        result.output == f"Error: invalid settings: {variable}: Input should be a finite number\n"
    )


def test_every_float_setting_is_checked() -> None:
    assert {"generation_deadline_seconds", "console_session_hours"} <= set(_float_settings())


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("91", "Input should be less than or equal to 90"),
        ("5.9", "Input should be greater than or equal to 6"),
        ("1", "Input should be greater than or equal to 6"),
    ],
)
def test_a_session_timeout_kafka_and_faust_refuse_is_named_at_start(
    value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above faust's broker request timeout (90 s) faust refused to start with a traceback;
    below the broker's minimum (6 s by default) the worker hung after the broker's
    InvalidSessionTimeoutError."""
    monkeypatch.setenv("TALKSTREAM_SESSION_TIMEOUT_SECONDS", value)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: invalid settings: TALKSTREAM_SESSION_TIMEOUT_SECONDS: {says}\n"
    )


def test_the_session_timeout_bounds_are_kafkas_and_fausts() -> None:
    from streams.settings import Settings

    assert Settings(session_timeout_seconds=6).session_timeout_seconds == 6
    assert Settings(session_timeout_seconds=90).session_timeout_seconds == 90


@pytest.mark.parametrize("name", ["INGRESS_HOST", "CONSOLE_HOST", "WORKER_HTTP_HOST"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_listen_host_is_refused(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty, a server listened on every interface: the console's actions open to the
    network because a variable was left blank."""
    monkeypatch.setenv(f"TALKSTREAM_{name}", value)
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: invalid settings: TALKSTREAM_{name}: is empty: give the address to listen "
        "on, e.g. 127.0.0.1 (0.0.0.0 for every interface)\n"
    )


@pytest.mark.parametrize(
    ("command", "where"),
    [
        (["stats"], "TALKSTREAM_DATABASE_URL or --database-url"),
        (["console"], "TALKSTREAM_DATABASE_URL"),  # (it has no --database-url)
    ],
)
def test_an_unusable_database_url_names_only_the_options_the_command_has(
    command: list[str], where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", "nosuchdb://x")
    monkeypatch.setenv("TALKSTREAM_CONSOLE_TOKEN", "a-console-token-long-enough")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: the database URL cannot be used (nosuchdb:// names no database SQLAlchemy "
        f"knows): set {where} to sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB\n"
    )


@pytest.mark.parametrize("command", [["stats"], ["audit", "--request-id", "r1"]])
def test_a_database_url_with_a_port_that_is_no_number_is_one_line_without_the_password(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not SQLAlchemy's ValueError traceback, as README promises."""
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", "postgresql+psycopg://u:s3cr3t@h:notaport/db")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: the database URL cannot be used (its port is not a number): set "
        "TALKSTREAM_DATABASE_URL or --database-url to sqlite:///PATH or "
        "postgresql+psycopg://USER:PASSWORD@HOST/DB\n"
    )


@pytest.mark.parametrize(
    "command", [["stats"], ["audit", "--request-id", "r1"], ["migrate"], ["worker"]]
)
def test_a_password_with_an_unencoded_at_sign_is_refused_without_any_of_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SQLAlchemy ends a password at its first '@' and reads the rest as the host: the error
    showed `u:***@cr3t@h` and the driver's "failed to resolve host 'cr3t@h'", half the
    password, in every command's error (and the projector's log, every few seconds). The
    worker says it before it asks Kafka (none listens at port 1) or holds a folder."""
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", "postgresql+psycopg://u:s3@cr3t@h/db")
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert "cr3t" not in result.output
    assert result.output == (
        "Error: the database URL cannot be used (its password holds an '@': write it %40 in "
        "the URL (user:pa%40ss@host), or the password ends at the '@' and the rest of it is "
        "read as the host): set TALKSTREAM_DATABASE_URL"
        + (" or --database-url" if command[0] != "worker" else "")
        + " to sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB\n"
    )


def test_a_password_with_its_at_sign_encoded_is_taken() -> None:
    from streams.projection.engine import parse_url, safe_url

    url = "postgresql+psycopg://u:s3%40cr3t@h/db"
    assert parse_url(url).password == "s3@cr3t"
    assert safe_url(url) == "postgresql+psycopg://u:***@h/db"


@pytest.mark.parametrize(
    ("name", "value"), [("WORKER_NAME", "."), ("WORKER_NAME", ".."), ("APP_ID", "..")]
)
def test_a_folder_name_that_points_elsewhere_is_refused(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both name folders under DATA_DIR: ".." put a worker's table store outside its app's."""
    monkeypatch.setenv(f"TALKSTREAM_{name}", value)
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: invalid settings: TALKSTREAM_{name}: {value!r} is not a folder name of its "
        "own: give a name\n"
    )


@pytest.mark.parametrize(
    ("name", "value"), [("WORKER_NAME", "worker 2"), ("WORKER_NAME", "a/b"), ("APP_ID", "")]
)
def test_a_name_with_other_characters_says_which_it_may_hold(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not pydantic's "String should match pattern '^[A-Za-z0-9._-]+$'": the value (no
    secret: README's "a WORKER_NAME that is no folder name" is repeated) and what it may be."""
    monkeypatch.setenv(f"TALKSTREAM_{name}", value)
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: invalid settings: TALKSTREAM_{name}: must be letters, digits, '.', '_' or '-' "
        f"(it names a folder), not {value!r}\n"
    )


def test_a_folder_name_may_hold_dots() -> None:
    from streams.settings import Settings

    assert Settings(worker_name="w..1", app_id=".talk").worker_name == "w..1"


def test_an_empty_optional_number_is_its_default_and_an_empty_data_dir_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every optional number: REBALANCE_GRACE_SECONDS (README: "none: off") empty was
    "Input should be a valid number", where the other two were their default."""
    import typing

    from streams.settings import Settings

    optional_numbers = [
        name
        for name, field in Settings.model_fields.items()
        if field.default is None
        and set(typing.get_args(field.annotation)) & {int, float}
        and type(None) in typing.get_args(field.annotation)
    ]
    assert {"kafka_controller_port", "min_insync_replicas", "rebalance_grace_seconds"} <= set(
        optional_numbers
    )
    for name in optional_numbers:
        monkeypatch.setenv(f"TALKSTREAM_{name.upper()}", "")
    settings = Settings()
    assert [getattr(settings, name) for name in optional_numbers] == [None] * len(optional_numbers)
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", " ")
    result = CliRunner().invoke(main, ["topics"])
    assert result.output == (
        "Error: invalid settings: TALKSTREAM_DATA_DIR: is empty: give a folder for local state "
        "(default .data)\n"
    )

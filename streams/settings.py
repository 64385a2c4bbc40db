"""The one settings object (pydantic-settings, env prefix ``TALKSTREAM_``).

Read nowhere else: the composition root builds a :class:`Settings` and hands it down.
Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TALKABLE_BASE_URL = "https://www.talkable.com/api/v2"
# the worker's producer takes records up to this (faust's ``producer_max_request_size``, kept)
PRODUCER_MAX_REQUEST_SIZE = 1_000_000
# a person's ledger entry at most: the changelog record also holds the key and its framing
MAX_ENTRY_BYTES = PRODUCER_MAX_REQUEST_SIZE - 65536


# the settings each server listens on, (host, port): named by the error when it cannot be had
def url_host(host: str, *, to_reach: bool = False) -> str:
    """A listening host as a URL writes it (an IPv6 address in brackets); ``to_reach``: the one
    a client on this machine calls (every interface, ``0.0.0.0`` or ``::``: the loopback)."""
    if to_reach and host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


LISTEN_FIELDS = {
    "ingress": ("ingress_host", "ingress_port"),
    "console": ("console_host", "console_port"),
    "worker": ("worker_http_host", "worker_http_port"),
    "projector": ("worker_http_host", "projector_http_port"),
    "executors": ("worker_http_host", "executors_http_port"),
}
LISTENS_AT = {
    server: f"TALKSTREAM_{host.upper()} and TALKSTREAM_{port.upper()}"
    for server, (host, port) in LISTEN_FIELDS.items()
}


class Settings(BaseSettings):
    # inf and nan pass every float bound and fail later (an OverflowError in a timer)
    model_config = SettingsConfigDict(
        env_prefix="TALKSTREAM_", frozen=True, extra="ignore", allow_inf_nan=False
    )

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="embedded broker's KRaft controller port; default (or 0): broker port + 1",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    app_id: str = Field("talkstream", description="faust app id and the prefix of every topic name")
    partitions: int = Field(8, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of our topics; default: replication factor - 1, "
        "at most 2, at least 1 (1 for RF 1 and 2, 2 for RF 3 and more)",
    )
    kafka_version: Literal["4.4.0", "3.9.1"] = Field(
        "4.4.0", description="the embedded broker's Kafka version (`talkstream kafka ...`)"
    )

    # where the worker keeps local state (table stores) and dev mode its files
    data_dir: Path = Path(".data")

    # HTTP
    ingress_host: str = "127.0.0.1"
    ingress_port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    ingress_idle_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="a connection that has not sent a whole request's headers this "
        "long after it opened or after its last answer is closed (slow or idle clients)",
    )
    ingress_body_timeout_seconds: float = Field(
        15.0, gt=0, description="a body not received within this long is answered 408"
    )
    ingress_shutdown_seconds: float = Field(
        15.0,
        ge=0,
        description="a stop (SIGTERM, Ctrl-C) waits this long for the webhooks in progress "
        "(each waits for Kafka's acknowledgement), then closes their connections unanswered",
    )
    max_clock_ahead_seconds: int = Field(
        300,
        ge=0,
        description="a usage_limit.current_time further ahead of the ingress's clock is a 422: "
        "the usage window it would start would hold the person's later webhooks",
    )
    kafka_stall_seconds: float = Field(
        5.0,
        gt=0,
        description="once a send has waited this long for Kafka's acknowledgement, "
        "the ingress answers 503 without sending, until Kafka acknowledges again",
    )

    # outside services
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    talkable_base_url: str = DEFAULT_TALKABLE_BASE_URL

    # SQL projection; default: a SQLite file under data_dir
    database_url: str | None = None

    # Fernet keys, comma separated; the first encrypts, all decrypt (rotation)
    secret_keys: SecretStr | None = None

    # per-site Talkable security keys for x-talkable-signature, "site=key,site2=key2"
    site_security_keys: SecretStr | None = None
    require_signature: bool = False

    # semantics
    dedupe_window_seconds: int = Field(24 * 3600, ge=0)
    generation_deadline_seconds: float = Field(120.0, gt=0)
    publish_deadline_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    deadline_check_interval_seconds: float = Field(1.0, gt=0)
    gap_check_interval_seconds: float = Field(
        5.0,
        gt=0,
        description="how often the ledger looks for offsets faust took and dropped on a quiet "
        "partition; one that stays so for two looks is probed (GapProbe)",
    )
    rebalance_grace_seconds: float | None = Field(
        None,
        gt=0,
        description="off by default: after a rebalance, in-flight work issued before it "
        "completed gets this long (the executors tell the ledger at once what a dead worker "
        "lost; this re-issues also what a live worker is still calling or has queued)",
    )

    # executors and the pacing of upstream targets (an OpenAI key, a Talkable site)
    generator_max_in_flight: int = Field(2048, ge=1)
    publisher_max_in_flight: int = Field(64, ge=1)
    openai_timeout_seconds: float = Field(60.0, gt=0)
    max_text_bytes: int = Field(
        65536,
        ge=1024,
        le=262144,
        description="a generated text larger than this (UTF-8) ends its request "
        "TextTooLarge: each in-flight or parked publication holds its text in the person's "
        "ledger entry, one Kafka record of at most 1 MiB",
    )
    max_entry_bytes: int = Field(
        786432,
        ge=131072,
        le=MAX_ENTRY_BYTES,
        description="the most a person's ledger entry may encode to (one record of the "
        "ledger's changelog, which Kafka refuses over the producer's max_request_size, "
        "1,000,000 bytes): a webhook or a generated text that would make it larger ends its "
        "request generation_failed with EntryTooLarge",
    )
    talkable_timeout_seconds: float = Field(15.0, gt=0)
    max_wait_seconds: float = Field(
        900.0,
        gt=0,
        description="how long a command may wait for its target (paced, throttled, "
        "circuit open) before its request ends QueueTimeout (at once, when the target asks "
        "to wait past it)",
    )
    stop_drain_seconds: float = Field(
        5.0,
        ge=0,
        description="how long a stopping worker lets its running upstream calls end; those "
        "still running are cut short and re-issued at once (queued ones go back untouched)",
    )
    refusal_seconds: float = Field(
        60.0,
        ge=0,
        description="after a key is refused (quota, 401, 403), how long its other "
        "calls end at once with the same reason instead of calling",
    )
    pacing_safety: float = Field(0.9, gt=0, le=1, description="share of a learned limit used")
    pacing_burst_seconds: float = Field(
        1.0,
        ge=0,
        description="seconds of a learned pace a target may be sent at once after a rest "
        "(OpenAI enforces a minute's limit over spans as short as a second; a 429 empties it)",
    )
    circuit_failures: int = Field(3, ge=1, description="outage failures in a row that open it")
    circuit_max_open_seconds: float = Field(
        30.0,
        gt=0,
        description="longest wait between probes of an outage, or of 429s that say nothing",
    )
    openai_initial_window: int = Field(
        8, ge=1, description="calls in flight to a new OpenAI key before its limits are known"
    )
    talkable_initial_window: int = Field(
        4, ge=1, description="calls in flight to a new Talkable site before it proved healthy"
    )

    # worker
    worker_name: str = Field("worker", description="local state dir of this worker")
    producer_linger_ms: int = Field(
        5,
        ge=0,
        le=60_000,
        description="how long the worker's producer holds a record to batch it with others "
        "(the ledger sends each batch it decided at once)",
    )
    projector: Literal["worker", "process", "off"] = Field(
        "process",
        description="where the worker runs the projector: a child process of its own (SQL off "
        "the worker's GIL), a task inside it, or nowhere (`talkstream projector` runs it)",
    )
    executors: Literal["worker", "process", "off"] = Field(
        "process",
        description="where the worker runs the generator and the publisher: a child process "
        "of their own (their upstream calls off the ledger's event loop, on another core), "
        "tasks inside it (one process: a one-core host), or nowhere (`talkstream executors` "
        "runs them)",
    )
    session_timeout_seconds: float = Field(
        30.0,
        # below a broker's group.min.session.timeout.ms (6 s by default) the worker's join is
        # refused and it hangs; above faust's broker_request_timeout (90 s) faust will not start
        ge=6,
        le=90,
        description="how soon a dead worker's partitions move to the survivors",
    )
    worker_http_host: str = "127.0.0.1"
    worker_http_port: int = Field(
        9101, ge=0, le=65535, description="worker /healthz /readyz /metrics; 0 = any free port"
    )
    projector_http_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="`talkstream projector` (and the worker's projector process) /healthz "
        "/readyz /metrics on WORKER_HTTP_HOST; 0 = any free port",
    )
    executors_http_port: int = Field(
        9103,
        ge=0,
        le=65535,
        description="`talkstream executors` (and the worker's executors process) /healthz "
        "/readyz /metrics on WORKER_HTTP_HOST; 0 = any free port",
    )
    table_store: str = Field("rocksdb://", description="faust table store: rocksdb:// or memory://")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"

    # the operator console (`talkstream console`)
    console_host: str = "127.0.0.1"
    console_port: int = Field(8090, ge=0, le=65535)
    console_token: SecretStr | None = Field(
        None, description="the operator token every console page and action requires"
    )
    console_worker_urls: str = Field(
        "http://127.0.0.1:9101",
        description="workers whose /metrics the console reads for pacing, comma separated",
    )
    console_session_hours: float = Field(12.0, gt=0, description="how long a console login lasts")
    console_secure_cookie: bool = Field(
        False,
        description="mark the session cookie Secure (sent over HTTPS only): set it when the "
        "console is reached through HTTPS, e.g. behind a TLS proxy",
    )

    @model_validator(mode="after")
    def _entry_holds_a_text(self) -> Settings:
        if self.max_entry_bytes < 2 * self.max_text_bytes:
            raise ValueError(
                f"TALKSTREAM_MAX_ENTRY_BYTES {self.max_entry_bytes} is less than twice "
                f"TALKSTREAM_MAX_TEXT_BYTES {self.max_text_bytes}: a person's entry could not "
                "hold a request and its text"
            )
        return self

    @model_validator(mode="after")
    def _insync_fits_replication(self) -> Settings:
        if self.insync_replicas > self.replication_factor:
            raise ValueError(
                f"TALKSTREAM_MIN_INSYNC_REPLICAS {self.min_insync_replicas} is more than "
                f"TALKSTREAM_REPLICATION_FACTOR {self.replication_factor}: no write could ever "
                "be acknowledged"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        """SASL without its credentials, or a client key without its certificate, is named
        here: a Kafka client would otherwise fail on it with a traceback, or an ingress start
        and answer every webhook 500."""
        if self.kafka_security_protocol.startswith("SASL"):
            missing = [
                f"TALKSTREAM_KAFKA_SASL_{name.upper()}"
                for name, value in (
                    ("username", self.kafka_sasl_username),
                    ("password", self.kafka_sasl_password),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    f"TALKSTREAM_KAFKA_SECURITY_PROTOCOL {self.kafka_security_protocol} needs "
                    f"{' and '.join(missing)}"
                )
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError(
                "TALKSTREAM_KAFKA_SSL_KEYFILE is given without TALKSTREAM_KAFKA_SSL_CERTFILE: "
                "a client key needs its certificate"
            )
        return self

    @property
    def insync_replicas(self) -> int:
        """``min.insync.replicas`` for our topics (the setting, or derived from the RF)."""
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return max(1, min(2, self.replication_factor - 1))

    @field_validator("data_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        """Empty, it was the current directory, silently: state went wherever a command ran."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a folder for local state (default .data)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator(
        "kafka_controller_port", "min_insync_replicas", "rebalance_grace_seconds", mode="before"
    )
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        """An empty variable (a compose file's unset one) means the default, as for the other
        optional settings, not "Input should be a valid integer"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _hosts_and_ports(cls, value: str) -> str:
        """A comma-separated list of ``host:port`` (``[::1]:9092`` for IPv6), as Kafka's
        clients take it; spaces and empty entries dropped. Anything else is named here, before
        a client fails on it with a traceback."""
        servers = [server.strip() for server in value.split(",") if server.strip()]
        if not servers:
            raise ValueError("is empty: give host:port, e.g. 127.0.0.1:9092")
        for server in servers:
            host, colon, port = server.rpartition(":")
            if not colon or not _is_host(host) or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port (e.g. 127.0.0.1:9092)")
            if not 1 <= int(port) <= 65535:
                raise ValueError(f"{server!r}: a port is from 1 to 65535")
        return ",".join(servers)

    @field_validator("kafka_sasl_username", "kafka_sasl_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (compose's unset one) is no value."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A TLS file that cannot be read is named with its path at start (it is a path, not a
        secret), not by the Kafka client's traceback; a CA file is also loaded, so one that
        holds no PEM certificate is said so."""
        if value is None or not value.strip():
            return None
        path = value.strip()
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} is not a file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{path!r} cannot be read")
        if info.field_name == "kafka_ssl_cafile":
            try:
                ssl.create_default_context(cafile=path)
            except (ssl.SSLError, ValueError, OSError):
                raise ValueError(f"{path!r} holds no PEM certificate") from None
        return path

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        """``INFO`` as well as ``info``: logging's names, in any case."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("table_store")
    @classmethod
    def _store_faust_has(cls, value: str) -> str:
        """One of the table stores installed with talkstream (faust's aerospike store needs a
        client that is not): anything else would stop the worker with faust's traceback."""
        store = value.strip()
        scheme, sep, _ = store.partition("://")
        if not sep or scheme.lower() not in ("rocksdb", "memory"):
            raise ValueError("should be rocksdb:// or memory://")
        return store

    @field_validator("ingress_host", "console_host", "worker_http_host")
    @classmethod
    def _listen_host(cls, value: str) -> str:
        """Not empty: an empty host listens on every interface, which nobody asks for by
        leaving a variable blank (the console's actions would be open to the network)."""
        host = value.strip()
        if not host:
            raise ValueError(
                "is empty: give the address to listen on, e.g. 127.0.0.1 "
                "(0.0.0.0 for every interface)"
            )
        return host

    @field_validator("app_id", "worker_name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        """Each names a folder under DATA_DIR (and the app id every topic and group): letters,
        digits, ``.``, ``_`` and ``-``, said so (pydantic's "String should match pattern
        '^[A-Za-z0-9._-]+$'" named neither the value nor the characters); "." or ".." would
        be another's (every app's, every worker's) or one outside it."""
        if _FOLDER_NAME.fullmatch(value) is None:
            raise ValueError(
                f"must be letters, digits, '.', '_' or '-' (it names a folder), not {value!r}"
            )
        if value in (".", ".."):
            raise ValueError(f"{value!r} is not a folder name of its own: give a name")
        return value

    @field_validator("site_security_keys")
    @classmethod
    def _site_equals_key(cls, value: SecretStr | None) -> SecretStr | None:
        """``site=key`` pairs, comma separated; empty means none. An entry that is not one, or
        a site given twice (in any case: the ingress reads a webhook's site so), is refused:
        read leniently, a mistyped entry would leave its site accepting unsigned webhooks while
        its operator believed them checked. The keys are never repeated in the message."""
        if value is None or not value.get_secret_value().strip():
            return None
        _site_keys(value.get_secret_value())
        return value

    @property
    def site_keys(self) -> dict[str, bytes]:
        """The sites whose webhooks must be signed, with their security keys."""
        if self.site_security_keys is None:
            return {}
        return _site_keys(self.site_security_keys.get_secret_value())

    @field_validator("openai_base_url", "talkable_base_url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        """An http(s) URL with a host: anything else would fail every call, each as if the
        upstream were unreachable, until its attempts ran out."""
        url = value.strip()
        example = cls.model_fields[info.field_name or ""].default
        if not _is_http_url(url):
            # not repeated: a URL may carry credentials
            raise ValueError(f"is not an http(s) URL with a host, e.g. {example}")
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # the HTTP clients refuse them beside the key's Authorization header: every call
            # failed before it was made (OpenAI's waited out MAX_WAIT_SECONDS as an outage;
            # Talkable's ended "InvalidKey", as if the site's key were wrong)
            raise ValueError(
                "carries credentials (user:password@), which cannot be sent beside the API "
                f"key's Authorization header: give the URL without them, e.g. {example}"
            )
        return url

    @field_validator("console_worker_urls")
    @classmethod
    def _http_urls(cls, value: str) -> str:
        """Each an http(s) URL with a host: the console would otherwise show no worker's pacing
        and say nothing of why."""
        entries = [url.strip() for url in value.split(",") if url.strip()]
        bad = [str(n) for n, url in enumerate(entries, 1) if not _is_http_url(url)]
        if bad:
            raise ValueError(
                f"entry {', '.join(bad)} is not an http(s) URL with a host, e.g. "
                "http://127.0.0.1:9101 (comma separated)"
            )
        return value

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        # one per app id (the default app's is talkstream.sqlite3, as it always was): two apps
        # run from one data directory must not project into one file (a webhook sent to both
        # is one request id in each)
        return f"sqlite:///{self.data_dir / f'{self.app_id}.sqlite3'}"

    @cached_property
    def instance_id(self) -> str:
        """This worker's static member id in its consumer groups: a restarted worker takes its
        partitions straight back instead of waiting out the session timeout. The host name
        keeps replicas that share a worker name (compose --scale) apart."""
        return f"{self.worker_name}@{socket.gethostname()}"

    @property
    def worker_metrics_urls(self) -> list[str]:
        """The workers' metrics endpoints the console scrapes (``/metrics`` appended).
        ``CONSOLE_WORKER_URLS`` not set with ``EXECUTORS=process``: the local worker's
        executors' child (``EXECUTORS_HTTP_PORT``), where the calls are made and counted; the
        default worker port's /metrics has none of their series (every site's row said "no
        Talkable calls since the worker started")."""
        urls = self.console_worker_urls
        if (
            "console_worker_urls" not in self.model_fields_set
            and self.executors == "process"
            and self.executors_http_port
        ):
            urls = f"http://127.0.0.1:{self.executors_http_port}"
        return [url.strip().rstrip("/") + "/metrics" for url in urls.split(",") if url.strip()]

    def topic(self, name: str) -> str:
        """The full name of one of our topics (app id as prefix, so deployments can share)."""
        return f"{self.app_id}-{name}"


_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
_FOLDER_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_host(host: str) -> bool:
    """A host name or IPv4 address, or an IPv6 address in brackets: not a URL's scheme
    (``PLAINTEXT://...``), a space, or a bracket left open."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None


_SEPARATOR_LIKE = re.compile(r"[\s;]")


def _site_keys(text: str) -> dict[str, bytes]:
    """``site=key,site2=key2`` read (a trailing comma allowed); a ValueError naming an entry
    that is not one by its position, or a site given twice, never a key."""
    keys: dict[str, bytes] = {}
    for number, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        site, equals, key = (part.strip() for part in entry.partition("="))
        if not (equals and site and key):
            raise ValueError(f"entry {number} is not site=key (site=key,site2=key2)")
        if _SEPARATOR_LIKE.search(key):  # "a=k1;b=k2": site a with the key "k1;b=k2"
            raise ValueError(
                f"entry {number}'s key holds a space or a ';': entries are separated by "
                "commas (site=key,site2=key2)"
            )
        if site.lower() in (given.lower() for given in keys):  # its webhooks' site, any case
            raise ValueError(f"site {site!r} is given twice")
        keys[site] = key.encode()
    return keys


def describe_invalid(exc: ValidationError) -> str:
    """What is wrong with the environment, by variable name; a secret's value or a URL (which
    may carry credentials) is never repeated."""
    problems = [
        f"TALKSTREAM_{'_'.join(str(part) for part in error['loc']).upper()}: {_said(error)}"
        if error["loc"]
        else _said(error)  # a rule across settings: its message names them
        for error in exc.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


def _said(error: ErrorDetails) -> str:
    """pydantic's message, without the "Value error, " it puts before a validator's own."""
    message = str(error["msg"])
    return message.removeprefix("Value error, ") if error["type"] == "value_error" else message

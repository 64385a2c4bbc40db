"""Kafka out of reach is a command's one line, nothing above it. A serving command whose address
cannot be had ends with one line naming the address and what sets it, not with asyncio's
traceback; ``talkstream dev`` says so (or that another run holds its data directory) before it
starts anything; options with a range refuse a value outside it before anything starts; a server
given port 0 says which port it got."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from streams.cli import main
from streams.dev.kafka import KafkaStatus
from streams.dev.supervisor import (
    console_readyz,
    curl_example,
    database_hints,
    hold_data_dir,
    own_worker_url,
    run_dev,
    servers,
    talkstream_command,
    url_host,
    watch,
)
from streams.settings import DEFAULT_OPENAI_BASE_URL, DEFAULT_TALKABLE_BASE_URL, Settings
from tests.support import free_port, streams_process, streams_run


@pytest.fixture
def taken() -> Iterator[int]:
    """A port this test holds (listening) on 127.0.0.1."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_port_in_use_is_one_line_naming_the_address_and_what_sets_it(
    taken: int, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    result = CliRunner().invoke(main, ["standin", "openai", "--port", str(taken)])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: cannot listen on 127.0.0.1:{taken}: address already in use "
        "(set by --host and --port)\n",
    )

    monkeypatch.setenv("TALKSTREAM_CONSOLE_PORT", str(taken))
    assert console_refuses(monkeypatch, tmp_path).endswith(
        f"Error: cannot listen on 127.0.0.1:{taken}: address already in use "
        "(set by TALKSTREAM_CONSOLE_HOST and TALKSTREAM_CONSOLE_PORT)\n"
    )

    assert ingress_refuses(tmp_path, TALKSTREAM_INGRESS_PORT=str(taken)) == (
        f"Error: cannot listen on 127.0.0.1:{taken}: address already in use "
        "(set by TALKSTREAM_INGRESS_HOST and TALKSTREAM_INGRESS_PORT)"
    )


def console_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """What ``talkstream console`` (with a token, its own data directory) stops with."""
    monkeypatch.setenv("TALKSTREAM_CONSOLE_TOKEN", "t" * 32)
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["console"])
    assert result.exit_code == 1, result.output
    return result.output


def ingress_refuses(tmp_path: Path, **settings: str) -> str:
    """The one line an ingress started as a user starts it, with these settings, stops with
    (no traceback)."""
    env = {
        **os.environ,
        **settings,
        "TALKSTREAM_SECRET_KEYS": Fernet.generate_key().decode(),
        "TALKSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # it need not get that far
        "TALKSTREAM_DATA_DIR": str(tmp_path),
    }
    ran = streams_run("ingress", env=env)
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr
    return ran.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("host", ["999.1.1.1", "not a host"])
def test_a_host_that_is_no_address_is_one_line_naming_what_sets_it(
    host: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Not socket.gaierror's traceback from deep in asyncio."""
    monkeypatch.setenv("TALKSTREAM_CONSOLE_HOST", host)
    assert console_refuses(monkeypatch, tmp_path).endswith(
        f"Error: cannot listen on {host!r}: Name or service not known "
        "(set by TALKSTREAM_CONSOLE_HOST)\n"
    )

    assert ingress_refuses(tmp_path, TALKSTREAM_INGRESS_HOST=host) == (
        f"Error: cannot listen on {host!r}: Name or service not known "
        "(set by TALKSTREAM_INGRESS_HOST)"
    )

    for standin in ("openai", "talkable"):  # gaierror's traceback until then
        result = CliRunner().invoke(main, ["standin", standin, "--host", host, "--port", "0"])
        assert (result.exit_code, result.output) == (
            1,
            f"Error: cannot listen on {host!r}: Name or service not known (set by --host)\n",
        )


def dev_env(monkeypatch: pytest.MonkeyPatch, data_dir) -> None:
    """Every server of ``talkstream dev`` on a port of its own, free now, its broker's too."""
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    for name in (
        "KAFKA_CONTROLLER_PORT",
        "INGRESS_PORT",
        "CONSOLE_PORT",
        "WORKER_HTTP_PORT",
        "PROJECTOR_HTTP_PORT",
    ):
        monkeypatch.setenv(f"TALKSTREAM_{name}", str(free_port()))


@pytest.fixture(params=["listening", "bound"])
def held(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port this test holds on 127.0.0.1: listening (another server), or bound only (an
    outgoing connection's port, say: nothing answers there, yet no server can have it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        if request.param == "listening":
            holder.listen()
        yield holder.getsockname()[1]


def held_next_to_a_free_port() -> tuple[int, socket.socket]:
    """A free port and, held (listening), the port after it."""
    for _ in range(50):
        port = free_port()
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", port + 1))
        except OSError:
            holder.close()
            continue
        holder.listen()
        return port, holder
    raise AssertionError("no free port with a free port after it")


BOOTSTRAP = "TALKSTREAM_KAFKA_BOOTSTRAP"
CONTROLLER = "TALKSTREAM_KAFKA_CONTROLLER_PORT"


@pytest.mark.parametrize(
    ("variable", "option", "set_by"),
    [
        (None, "--openai-port", "--openai-port"),
        (None, "--talkable-port", "--talkable-port"),
        ("INGRESS_PORT", None, "TALKSTREAM_INGRESS_HOST and TALKSTREAM_INGRESS_PORT"),
        ("CONSOLE_PORT", None, "TALKSTREAM_CONSOLE_HOST and TALKSTREAM_CONSOLE_PORT"),
        ("WORKER_HTTP_PORT", None, "TALKSTREAM_WORKER_HTTP_HOST and TALKSTREAM_WORKER_HTTP_PORT"),
        (
            "PROJECTOR_HTTP_PORT",
            None,
            "TALKSTREAM_WORKER_HTTP_HOST and TALKSTREAM_PROJECTOR_HTTP_PORT",
        ),
        ("KAFKA_BOOTSTRAP", None, BOOTSTRAP),
        ("KAFKA_CONTROLLER_PORT", None, CONTROLLER),
    ],
)
def test_dev_names_an_address_in_use_before_it_starts_anything(
    held: int,
    variable: str | None,
    option: str | None,
    set_by: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
) -> None:
    """Whether another server listens there or a socket merely holds the port: the embedded
    broker's ports were found taken only by the broker itself, once started (its stack trace,
    or a check that named no setting to change)."""
    dev_env(monkeypatch, tmp_path)
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    if variable == "KAFKA_BOOTSTRAP":
        monkeypatch.setenv(f"TALKSTREAM_{variable}", f"127.0.0.1:{held}")
    elif variable:
        monkeypatch.setenv(f"TALKSTREAM_{variable}", str(held))
    else:
        ports[ports.index(option) + 1] = str(held)
    result = CliRunner().invoke(main, ["dev", *ports])
    assert (result.exit_code, result.output) == (
        1,
        f"talkstream dev: cannot listen on 127.0.0.1:{held}: address already in use "
        f"(set by {set_by})\n",
    )
    # no broker, no log: nothing was started
    assert list(tmp_path.iterdir()) == []


def test_dev_refuses_a_console_token_the_console_would_before_it_starts_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A TALKSTREAM_CONSOLE_TOKEN too short for the console: dev started the broker, the worker
    and the ingress, then ended "console did not come up; see .../console.log"."""
    dev_env(monkeypatch, tmp_path)
    monkeypatch.setenv("TALKSTREAM_CONSOLE_TOKEN", "short-token")
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    result = CliRunner().invoke(main, ["dev", *ports])
    assert (result.exit_code, result.output) == (
        1,
        "talkstream dev: TALKSTREAM_CONSOLE_TOKEN is too short: use at least 16 random "
        "characters\n",
    )
    assert "short-token" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_dev_refuses_a_database_url_that_can_never_work_before_it_starts_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A projection URL whose driver is not installed: dev started the broker, the worker and
    the ingress, then ended "console did not come up", the reason in the console's log."""
    dev_env(monkeypatch, tmp_path)
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", "mysql://u:s3cr3t@127.0.0.1:1/db")
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    result = CliRunner().invoke(main, ["dev", *ports])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "talkstream dev: the database URL cannot be used (mysql needs the mysqldb driver, "
        "which is not installed"
    )
    assert len(result.output.splitlines()) == 1 and "s3cr3t" not in result.output
    assert "set TALKSTREAM_DATABASE_URL to" in result.output  # (dev has no --database-url)
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_dev_refuses_a_sqlite_file_that_is_not_a_database_before_it_starts_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A TALKSTREAM_DATABASE_URL naming a file that is not a database (a path mistyped onto
    another file): dev said it was running, and its projector failed at every try, in its log
    only, so nothing was ever projected."""
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    dev_env(monkeypatch, data)
    elsewhere.mkdir()
    notes = elsewhere / "notes.txt"
    notes.write_text("not a database\n" * 40)
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", f"sqlite:///{notes}")
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    result = CliRunner().invoke(main, ["dev", *ports])
    assert (result.exit_code, result.output) == (
        1,
        f"talkstream dev: the database sqlite:///{notes} cannot be used: DatabaseError: file "
        "is not a database\n",
    )
    assert not data.exists()  # nothing was started
    assert notes.read_text() == "not a database\n" * 40


def test_dev_names_the_brokers_default_controller_port_and_what_sets_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    dev_env(monkeypatch, tmp_path)
    monkeypatch.delenv("TALKSTREAM_KAFKA_CONTROLLER_PORT")
    port, holder = held_next_to_a_free_port()
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    with holder:
        monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
        result = CliRunner().invoke(main, ["dev", *ports])
    assert (result.exit_code, result.output) == (
        1,
        f"talkstream dev: cannot listen on 127.0.0.1:{port + 1}: address already in use "
        f"(set by {CONTROLLER}, by default {BOOTSTRAP}'s port + 1)\n",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("first", "second", "first_set_by", "second_set_by"),
    [
        (
            "INGRESS_PORT",
            "CONSOLE_PORT",
            "TALKSTREAM_INGRESS_HOST and TALKSTREAM_INGRESS_PORT",
            "TALKSTREAM_CONSOLE_HOST and TALKSTREAM_CONSOLE_PORT",
        ),
        (
            "KAFKA_CONTROLLER_PORT",
            "WORKER_HTTP_PORT",
            CONTROLLER,
            "TALKSTREAM_WORKER_HTTP_HOST and TALKSTREAM_WORKER_HTTP_PORT",
        ),
    ],
)
def test_dev_refuses_two_of_its_servers_on_one_port_naming_both(
    first: str,
    second: str,
    first_set_by: str,
    second_set_by: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
) -> None:
    """Each address was free alone; the second server to start would have failed on the
    first's, its log the one place that said so."""
    dev_env(monkeypatch, tmp_path)
    port = free_port()
    monkeypatch.setenv(f"TALKSTREAM_{first}", str(port))
    monkeypatch.setenv(f"TALKSTREAM_{second}", str(port))
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    result = CliRunner().invoke(main, ["dev", *ports])
    assert (result.exit_code, result.output) == (
        1,
        f"talkstream dev: cannot listen on 127.0.0.1:{port} for two servers: one set by "
        f"{first_set_by}; the other by {second_set_by}\n",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("bootstrap_port", "controller_port", "says"),
    [
        (19_000, "19000", f"{CONTROLLER} is {BOOTSTRAP}'s port (19000)"),
        (65_535, None, f"{BOOTSTRAP}'s port is 65535: the embedded broker's controller cannot"),
    ],
)
def test_dev_refuses_broker_ports_that_cannot_be_two_naming_the_settings(
    bootstrap_port: int,
    controller_port: str | None,
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
) -> None:
    dev_env(monkeypatch, tmp_path)
    monkeypatch.setenv(BOOTSTRAP, f"127.0.0.1:{bootstrap_port}")
    if controller_port is None:
        monkeypatch.delenv(CONTROLLER)
    else:
        monkeypatch.setenv(CONTROLLER, controller_port)
    result = CliRunner().invoke(main, ["dev"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"talkstream dev: {says}"), result.output
    assert len(result.output.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_second_dev_on_the_same_data_is_refused_naming_the_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    dev_env(monkeypatch, tmp_path)
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    with hold_data_dir(tmp_path):  # what the first run holds while it runs
        result = CliRunner().invoke(main, ["dev", *ports])
    assert (result.exit_code, result.output) == (
        1,
        f"talkstream dev: another talkstream dev runs on {tmp_path} (pid {os.getpid()}): "
        "stop it first (Ctrl-C where it runs), or give this one its own TALKSTREAM_DATA_DIR\n",
    )
    # released with the run: the next one holds it
    with hold_data_dir(tmp_path):
        assert (tmp_path / "dev.lock").read_text() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []  # and leaves no lock once it ends


def test_a_refused_dev_leaves_the_running_ones_lock_and_no_lock_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path, taken: int
) -> None:
    """A start refused (a port taken) left its ``dev.lock``, with the pid of a process that
    had ended, and the data directory it made; one refused because another run holds the
    directory must leave that run's lock as it is, or a third run would start beside it."""
    data = tmp_path / "data"  # not there yet: a refused start does not make it
    dev_env(monkeypatch, data)
    monkeypatch.setenv("TALKSTREAM_INGRESS_PORT", str(taken))
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    result = CliRunner().invoke(main, ["dev", *ports])
    assert result.exit_code == 1 and "address already in use" in result.output, result.output
    assert not data.exists()

    # another run holds it: a process of its own, as `make dev` is
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDS_DATA, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = CliRunner().invoke(main, ["dev", *ports])
        assert result.exit_code == 1 and f"(pid {holder.pid})" in result.output, result.output
        assert (data / "dev.lock").read_text() == str(holder.pid)
        result = CliRunner().invoke(main, ["dev", *ports])  # and a third is refused too
        assert result.exit_code == 1 and f"(pid {holder.pid})" in result.output, result.output
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # it ends its run
        assert holder.wait(timeout=10) == 0
    assert not data.exists()  # its lock went with it (and the folder it made, empty)


# a `talkstream dev` that holds its data directory until its stdin closes
HOLDS_DATA = """
import sys
from pathlib import Path
from streams.dev.datadir import hold_data_dir
with hold_data_dir(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["standin", "openai", "--port", "65536"], "--port"),
        (["standin", "talkable", "--latency", "-1"], "--latency"),
        (["dev", "--openai-port", "0"], "--openai-port"),
        (["bench", "--requests", "0"], "--requests"),
        (["bench", "--workers", "0"], "--workers"),
        (["bench", "--neighbour-rps", "0"], "--neighbour-rps"),
        (["bench", "--llm-latency", "-0.5"], "--llm-latency"),
        # a broker given no time to answer was started, then "stopped" and often left running
        (["kafka", "start", "--timeout=-5"], "--timeout"),
        (["kafka", "start", "--timeout", "0"], "--timeout"),
    ],
)
def test_an_option_out_of_its_range_is_refused_before_anything_starts(
    args: list[str], option: str
) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


@pytest.mark.parametrize("topic", ["deadletter", "talkstream-nosuch", "other-app-requests"])
def test_a_redrive_by_a_topic_no_letter_comes_from_is_refused_naming_those_that_can(
    topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALKSTREAM_APP_ID", "talkstream")
    # refused before Kafka is asked (nothing listens there)
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, ["redrive", "--dry-run", "--topic", topic])
    assert result.exit_code == 2, result.output
    assert result.output.endswith(
        f"Error: Invalid value for '--topic': {topic!r} is not a topic dead letters come from: "
        "talkstream-requests, talkstream-generate, talkstream-completions, talkstream-lifecycle "
        "(or without the app id: requests, generate, completions, lifecycle)\n"
    )


@pytest.mark.parametrize("args", [["topics"], ["redrive", "--dry-run"], ["replay", "--verify"]])
def test_kafka_out_of_reach_is_the_commands_one_line_and_nothing_above_it(args: list[str]) -> None:
    """aiokafka's own "Unable connect to ..." records are not printed above it (a command that
    sets up no logging would print them through logging's last resort)."""
    port = free_port()
    env = {**os.environ, "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
    ran = streams_run(*args, env=env)
    assert (ran.returncode, ran.stdout) == (1, ""), ran.stderr
    assert ran.stderr == (  # what is out of reach, and what named it
        f"Error: Kafka at 127.0.0.1:{port}: nothing listens there (connection refused); "
        f"Kafka's address is TALKSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:{port}\n"
    )


@contextlib.contextmanager
def _listener(tls: ssl.SSLContext | None) -> Iterator[int]:
    """A listener that is not the one TLS was set for, on loopback: a plain Kafka listener's
    way with a TLS hello (it reads it as a request's size, past any it takes, and closes), or,
    with ``tls``, one that presents a certificate no CA file given trusts."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if tls is None:
                    conn.recv(4)
                    continue
                with contextlib.suppress(OSError):
                    tls.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("listener", "says"),
    [
        ("plain", "reset the connection during the TLS handshake: does its listener take TLS "
         "(TALKSTREAM_KAFKA_SECURITY_PROTOCOL is SASL_SSL)?"),
        ("tls", "failed: self-signed certificate; check TALKSTREAM_KAFKA_SSL_CAFILE and "
         "TALKSTREAM_KAFKA_SECURITY_PROTOCOL"),
    ],
)  # fmt: skip
def test_a_tls_handshake_that_fails_names_the_address_setting_too(
    listener: str, says: str, tmp_path: Path
) -> None:
    """TLS set for a plain listener (or a listener whose certificate is not trusted: another
    host's) was said naming the security settings only, where Kafka out of reach names
    TALKSTREAM_KAFKA_BOOTSTRAP too: the address may be the wrong listener's. No password."""
    from tests.tls import self_signed

    tls = self_signed(tmp_path / "certs").server_context() if listener == "tls" else None
    with _listener(tls) as port:
        env = {
            **os.environ,
            "TALKSTREAM_DATA_DIR": str(tmp_path),
            "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            "TALKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TALKSTREAM_KAFKA_SASL_USERNAME": "talkstream",
            "TALKSTREAM_KAFKA_SASL_PASSWORD": "s3cret-pw",
        }
        ran = streams_run("topics", env=env)
    assert (ran.returncode, ran.stdout) == (1, ""), ran.stderr
    where = "TLS with Kafka at" if listener == "tls" else "Error: Kafka at"
    assert where in ran.stderr and says in ran.stderr, ran.stderr
    assert ran.stderr.endswith(
        f"; Kafka's address is TALKSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:{port}\n"
    ), ran.stderr
    assert "s3cret-pw" not in ran.stderr


def test_kafka_out_of_reach_at_the_default_address_says_the_variable_was_not_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator who never set TALKSTREAM_KAFKA_BOOTSTRAP read "nothing listens at
    127.0.0.1:9092" and had to know where that address came from."""
    from streams.cli import _kafka_address_source

    monkeypatch.delenv("TALKSTREAM_KAFKA_BOOTSTRAP", raising=False)
    assert _kafka_address_source() == (
        "Kafka's address is the default 127.0.0.1:9092 (TALKSTREAM_KAFKA_BOOTSTRAP is not set)"
    )


def test_a_bench_on_a_broker_out_of_reach_says_so_and_keeps_no_empty_log_folder() -> None:
    port = free_port()
    ran = streams_run("bench", "--tiny", "--bootstrap", f"127.0.0.1:{port}")
    assert (ran.returncode, ran.stdout) == (1, ""), ran.stderr
    # what it does, then why it stopped: no "logs kept in" a folder with nothing in it
    assert ran.stderr == (
        f"using Kafka at 127.0.0.1:{port}\n"
        f"Error: Kafka at 127.0.0.1:{port}: nothing listens there (connection refused)\n"
    )


def test_dev_checks_the_servers_it_will_start_and_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = {  # given, whatever this shell's TALKSTREAM_* says
        "ingress_port": 8080,
        "console_port": 8090,
        "worker_http_port": 9101,
        "projector_http_port": 9102,
        "projector": "process",
        "executors_http_port": 9103,
        "executors": "worker",
    }
    for upstream in ("OPENAI", "TALKABLE"):  # not set: stand-ins
        monkeypatch.delenv(f"TALKSTREAM_{upstream}_BASE_URL", raising=False)

    def ports(**settings: object) -> list[int]:
        chosen = Settings(**{**defaults, **settings})  # type: ignore[arg-type]
        return [port for _, port, _ in servers(chosen, openai_port=1081, talkable_port=1082)]

    assert ports() == [8080, 8090, 9101, 9102, 1081, 1082]
    # the executors in the worker's child serve their own
    assert ports(executors="process") == [8080, 8090, 9101, 9102, 9103, 1081, 1082]
    # real upstreams: no stand-ins; the projector inside the worker, or on its own: no child
    real = {"openai_base_url": "https://example.test/v1", "talkable_base_url": "https://t.test"}
    assert ports(**real, projector="worker") == [8080, 8090, 9101]
    # the real APIs' own URLs, set: used, not stood in for (README: "With real services")
    official = {
        "openai_base_url": DEFAULT_OPENAI_BASE_URL,
        "talkable_base_url": DEFAULT_TALKABLE_BASE_URL,
    }
    assert ports(**official) == [8080, 8090, 9101, 9102]
    # port 0 is any free port: nothing to check
    assert ports(worker_http_port=0, projector="off") == [8080, 8090, 1081, 1082]
    monkeypatch.setenv("TALKSTREAM_OPENAI_BASE_URL", DEFAULT_OPENAI_BASE_URL)
    assert ports() == [8080, 8090, 9101, 9102, 1082]  # from the environment, as make dev has it


@pytest.mark.parametrize(
    ("command", "variable", "says", "page", "unready"),
    [
        ("ingress", "INGRESS_PORT", "INFO streams.ingress ingress on ", "/healthz", "/readyz"),
        ("console", "CONSOLE_PORT", "talkstream console on ", "/login", None),
    ],
)
def test_a_server_on_port_0_says_the_port_it_was_given(
    command: str, variable: str, says: str, page: str, unready: str | None, tmp_path
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        f"TALKSTREAM_{variable}": "0",
        "TALKSTREAM_DATA_DIR": str(tmp_path),
        "TALKSTREAM_SECRET_KEYS": Fernet.generate_key().decode(),
        "TALKSTREAM_CONSOLE_TOKEN": "t" * 32,
        # the ingress serves (503 for webhooks) until Kafka is there
        "TALKSTREAM_KAFKA_BOOTSTRAP": nowhere,
    }
    proc, out = streams_process(command, env=env, stderr=subprocess.STDOUT)
    try:
        out.until(says, timeout=60)
        [url] = [line.split(says)[1].rstrip("/") for line in out.seen if says in line]
        assert not url.endswith(":0"), url
        with urllib.request.urlopen(url + page, timeout=10) as answer:
            assert answer.status == 200
        if unready:  # no broker at that address: alive, not ready, and why
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + unready, timeout=10)
            assert refused.value.code == 503
            assert json.load(refused.value) == {
                "ready": False,
                # why, in the words of every command's diagnosis (it named the exception
                # alone, then "cannot connect to a broker at ..." whatever the cause)
                "status": f"Kafka unavailable: Kafka at {nowhere}: nothing listens there "
                "(connection refused)",
            }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("command", ["ingress", "console"])
def test_a_server_as_started_answers_a_request_its_parser_refuses_in_json(
    command: str, tmp_path
) -> None:
    """``talkstream ingress`` and ``talkstream console`` serve on the runner that answers
    aiohttp's own refusals in the product's shape (``streams.refusals``): aiohttp's text
    quoted the request line, query string and all."""
    env = {
        **os.environ,
        "TALKSTREAM_INGRESS_PORT": "0",
        "TALKSTREAM_CONSOLE_PORT": "0",
        "TALKSTREAM_DATA_DIR": str(tmp_path),
        "TALKSTREAM_SECRET_KEYS": Fernet.generate_key().decode(),
        "TALKSTREAM_CONSOLE_TOKEN": "t" * 32,
        "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    says = "INFO streams.ingress ingress on " if command == "ingress" else "talkstream console on "
    proc, out = streams_process(command, env=env, stderr=subprocess.STDOUT)
    try:
        out.until(says, timeout=60)
        [url] = [line.split(says)[1].rstrip("/") for line in out.seen if says in line]
        host, _, port = url.removeprefix("http://").rpartition(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(
                b"GET /chat-gpt/generate?api_key=sk-secret-0001 HTTP/9.Z\r\nHost: x\r\n\r\n"
            )
            answer = b""
            while chunk := connection.recv(65536):  # answered, then closed
                answer += chunk
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 Bad Request"), answer
    assert b"Content-Type: application/json" in head, answer
    assert json.loads(body) == {
        "errors": [{"field": "request line", "message": "not a valid HTTP request line"}]
    }
    assert b"sk-secret" not in answer and b"api_key" not in answer


@pytest.mark.parametrize("command", [["kafka", "start"], ["dev"]])
def test_a_data_directory_that_cannot_be_one_is_named_before_anything_starts(
    command: list[str], tmp_path
) -> None:
    """A file where TALKSTREAM_DATA_DIR points: one line naming it, not a FileExistsError or
    NotADirectoryError traceback."""
    in_the_way = tmp_path / "data"
    in_the_way.write_text("not a directory")
    env = {
        **os.environ,
        "TALKSTREAM_DATA_DIR": str(in_the_way),
        "TALKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    ran = streams_run(*command, env=env)
    assert ran.returncode == 1, ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"Error: cannot use the data directory {in_the_way} (TALKSTREAM_DATA_DIR): "
        f"Not a directory: {in_the_way}"
    ), ran.stderr
    assert "Traceback" not in ran.stderr
    assert in_the_way.read_text() == "not a directory"


def test_a_cluster_that_could_not_start_leaves_the_single_broker_the_commands_mean(
    taken: int, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """`kafka start --nodes 3` refused (its first port taken, as by the single broker of the
    same data directory) once left its manifest behind: `kafka status` then described a cluster
    that never started and `kafka stop` said "not running" while the single broker ran on."""
    from streams.dev.kafka_cluster import KafkaCluster

    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{taken}")
    result = CliRunner().invoke(main, ["kafka", "start", "--nodes", "3"])
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{taken}" in result.output
    assert KafkaCluster.from_manifest(tmp_path) is None
    result = CliRunner().invoke(main, ["kafka", "status"])
    assert result.output.startswith("Kafka not running"), result.output  # the single broker


@pytest.mark.parametrize(
    ("url", "shown", "look"),
    [
        (
            "sqlite:///.data/talkstream.sqlite3",
            "sqlite:///.data/talkstream.sqlite3",
            "sqlite3 .data/talkstream.sqlite3 'select request_id, state from requests'",
        ),
        (
            "sqlite:////tmp/my data/app.sqlite3",
            "sqlite:////tmp/my data/app.sqlite3",
            "sqlite3 '/tmp/my data/app.sqlite3' 'select request_id, state from requests'",
        ),
        (
            "postgresql+psycopg://talkstream:s3cret-pw@db.example:5433/talkstream",
            "postgresql+psycopg://talkstream:***@db.example:5433/talkstream",
            "psql postgresql://talkstream@db.example:5433/talkstream "
            "-c 'select request_id, state from requests'",
        ),
        (
            "postgresql+psycopg://talkstream:s3cret-pw@db.example/talkstream?sslmode=require",
            "postgresql+psycopg://talkstream:***@db.example/talkstream?sslmode=require",
            "psql 'postgresql://talkstream@db.example/talkstream?sslmode=require' "
            "-c 'select request_id, state from requests'",
        ),
    ],
)
def test_the_dev_banner_shows_the_database_and_its_own_shell_without_the_password(
    url: str, shown: str, look: str
) -> None:
    """``make dev``'s banner names the projection and how to look into it: ``sqlite3`` on the
    file, ``psql`` on the server (psql asks for the password), never the password itself."""
    assert database_hints(url) == (shown, look)
    assert "s3cret-pw" not in f"{shown} {look}"


def test_dev_points_its_console_at_its_own_worker() -> None:
    """CONSOLE_WORKER_URLS not set: the console of a make dev with its worker moved read the
    default worker port, maybe another run's worker. (Its executors in it: in their child, the
    default, the child's port is read, below.)"""
    inside = {"executors": "worker"}
    assert own_worker_url(Settings(worker_http_port=19101, **inside)) == "http://127.0.0.1:19101"
    assert own_worker_url(Settings(worker_http_host="0.0.0.0", worker_http_port=9, **inside)) == (
        "http://127.0.0.1:9"
    )
    assert own_worker_url(Settings(worker_http_host="::1", worker_http_port=9, **inside)) == (
        "http://[::1]:9"
    )


def test_dev_points_its_console_at_its_executors_where_they_run_apart() -> None:
    """With ``EXECUTORS=process`` the calls, and so every target's 429s, queue and circuit, are
    on the executors' child's ``/metrics``, not the worker's: ``make dev``'s console read the
    worker's, and said of every site "no calls since the worker started" (a site paced to 2
    calls a second, 7 of its calls answered 429, showed none)."""
    moved = {"worker_http_port": 19101, "executors_http_port": 19104}
    assert own_worker_url(Settings(executors="process", **moved)) == "http://127.0.0.1:19104"
    assert own_worker_url(Settings(executors="worker", **moved)) == "http://127.0.0.1:19101"
    # on any free port (0): not known, so not set (the default port may be another run's)
    assert own_worker_url(Settings(executors="process", executors_http_port=0)) is None
    assert own_worker_url(Settings(executors="worker", worker_http_port=0)) is None
    # the default: in their child
    assert own_worker_url(Settings(**moved)) == "http://127.0.0.1:19104"


@pytest.mark.parametrize("projector", ["process", "worker"])
def test_a_database_url_that_can_never_work_stops_the_worker_before_it_starts(
    projector: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """With the projector in a child process, the child crashed at every restart, once a
    second, forever; now the worker ends with the line the in-worker projector gives."""
    monkeypatch.setenv("TALKSTREAM_PROJECTOR", projector)
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", "mysql://u:s3cr3t@127.0.0.1:1/db")
    monkeypatch.setenv("TALKSTREAM_SECRET_KEYS", Fernet.generate_key().decode())
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "Error: the database URL cannot be used (mysql needs the mysqldb driver, which is not "
        "installed"
    )
    assert "s3cr3t" not in result.output


@pytest.mark.parametrize("projector", ["process", "worker"])
def test_a_worker_makes_no_directory_for_its_projectors_sqlite_file(
    projector: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The worker checks its projector's database URL before it starts, and made the SQLite
    file's directory doing so: a projector its group then refused left it behind (a refused
    projector makes nothing; the migration makes it once the group has taken it). A file
    where the directory goes still ends the worker at once, with one line."""
    monkeypatch.setenv("TALKSTREAM_PROJECTOR", projector)
    monkeypatch.setenv("TALKSTREAM_SECRET_KEYS", Fernet.generate_key().decode())
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path / "data"))
    elsewhere = tmp_path / "projection"
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", f"sqlite:///{elsewhere}/sub/p.sqlite3")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: Kafka at 127.0.0.1:1: nothing listens there")
    assert not elsewhere.exists()
    elsewhere.write_text("not a directory")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "Error: the database URL cannot be used (cannot create the directory "
        f"{elsewhere}/sub of the SQLite file: Not a directory)"
    ), result.output


@pytest.mark.parametrize(
    ("database", "said"),
    [
        ("/proc/talkstream/p.sqlite3", "create the SQLite file /proc/talkstream/p.sqlite3: no "
         "file can be made in /proc (No such file or directory)"),
        ("/proc/p.sqlite3", "create the SQLite file /proc/p.sqlite3: no file can be made in "
         "/proc (No such file or directory)"),
        ("{tmp}", "use the SQLite file {tmp}: it is a directory"),
    ],
)  # fmt: skip
def test_a_sqlite_file_that_cannot_be_written_stops_the_worker_naming_the_setting(
    database: str, said: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """``sqlite:////proc/...`` passed the worker's check (``/proc`` is a directory, and
    ``os.access`` says root may write it), and its projector then failed its migration at
    every try, forever, as a database merely down. A file that cannot be made or written
    there is said at the start, as a directory that cannot be made is, naming the setting;
    nothing is left behind."""
    monkeypatch.setenv("TALKSTREAM_SECRET_KEYS", Fernet.generate_key().decode())
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", f"sqlite:///{database.format(tmp=tmp_path)}")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: the database URL cannot be used (cannot {said.format(tmp=tmp_path)}): set "
        "TALKSTREAM_DATABASE_URL to sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no probe, no data directory


def test_a_database_merely_down_does_not_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The projector waits for it: the worker goes on to Kafka (out of reach here)."""
    monkeypatch.setenv("TALKSTREAM_DATABASE_URL", "postgresql+psycopg://u:s3cr3t@127.0.0.1:1/db")
    monkeypatch.setenv("TALKSTREAM_SECRET_KEYS", Fernet.generate_key().decode())
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: Kafka at 127.0.0.1:1: nothing listens there")


@pytest.mark.parametrize("keys", ["", " , "])
def test_secret_keys_that_hold_no_key_are_named(
    keys: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """It said "at least one secret key is required" without naming the variable."""
    monkeypatch.setenv("TALKSTREAM_SECRET_KEYS", keys)
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["ingress"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "Error: TALKSTREAM_SECRET_KEYS is not set (or holds no key): every worker and ingress"
    )


@pytest.mark.parametrize("command", ["status", "stop"])
@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {
                "TALKSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19410",
                "TALKSTREAM_KAFKA_CONTROLLER_PORT": "19410",
            },
            "TALKSTREAM_KAFKA_CONTROLLER_PORT is TALKSTREAM_KAFKA_BOOTSTRAP's port (19410)",
        ),
        (
            {"TALKSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:65535"},
            "TALKSTREAM_KAFKA_BOOTSTRAP's port is 65535: the embedded broker's controller cannot",
        ),
    ],
)
def test_kafka_settings_that_give_no_broker_are_one_line_for_status_and_stop(
    command: str, env: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """`kafka start` said these in one line; `status` and `stop` ended in a traceback."""
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["kafka", command])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {said}"), result.output
    assert len(result.output.splitlines()) == 1, result.output


@pytest.mark.parametrize("command", ["status", "stop", "start"])
@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        ('{"host": "127.0', "Unterminated string"),
        ("{}", "no 'ports'"),
        ('{"host": "127.0.0.1", "ports": [[19400, 19401]], "version": "9.9.9"}', "Kafka 9.9.9"),
        ("[]", "not a JSON object"),
    ],
)
def test_a_cluster_manifest_that_cannot_be_read_is_named_with_what_to_do(
    command: str, manifest: str, why: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A truncated or hand-edited `kafka-cluster/cluster.json` ended `status` and `stop` in a
    traceback (a raw KeyError for `{}`)."""
    path = tmp_path / "kafka-cluster" / "cluster.json"
    path.parent.mkdir()
    path.write_text(manifest)
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:19400")
    result = CliRunner().invoke(main, ["kafka", command])
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: {path.resolve()} is not a cluster layout"), line
    assert why in line
    assert line.endswith("then remove the file"), line


@pytest.mark.parametrize(
    ("port", "reason", "set_by"),
    [
        # the host gives both listeners their address: no port on it would do
        (19461, "cannot assign requested address", "TALKSTREAM_KAFKA_BOOTSTRAP"),
        (19460, "cannot assign requested address", "TALKSTREAM_KAFKA_BOOTSTRAP"),
        (
            19461,
            "address already in use",
            "TALKSTREAM_KAFKA_CONTROLLER_PORT, by default TALKSTREAM_KAFKA_BOOTSTRAP's port + 1",
        ),
    ],
)
def test_a_broker_listener_that_cannot_be_had_names_what_to_change(
    port: int, reason: str, set_by: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A host not this machine's was blamed on TALKSTREAM_KAFKA_CONTROLLER_PORT when the
    controller's listener was the one the broker could not bind."""
    from streams.dev.kafka import EmbeddedKafka, PortUnavailable

    def unbindable(self: EmbeddedKafka, timeout: float = 60, on_wait: object = None) -> None:
        raise PortUnavailable("192.0.2.1", port, f"{reason}; Kafka node 1 could not bind it")

    monkeypatch.setattr(EmbeddedKafka, "start", unbindable)
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "192.0.2.1:19460")
    monkeypatch.delenv("TALKSTREAM_KAFKA_CONTROLLER_PORT", raising=False)
    result = CliRunner().invoke(main, ["kafka", "start"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: cannot listen on 192.0.2.1:{port}: {reason}; Kafka node 1 could not bind it "
        f"(set by {set_by})\n",
    )


class _StoppedBroker:
    """The broker of a ``talkstream dev`` that an operator stopped (``talkstream kafka stop``):
    exited with 143; with ``back``, started again (``talkstream kafka start``) the second time
    its status is asked, and stopped again the fourth. Done, it ends the worker, so that the
    watch returns."""

    bootstrap = "127.0.0.1:19392"

    def __init__(self, worker: subprocess.Popen[bytes], log_file: Path, back: bool) -> None:
        self.worker, self.log_file, self.back = worker, log_file, back
        self.asked = self.statuses = 0

    def exited(self) -> int | None:
        self.asked += 1
        if not self.back:
            self._end_worker()
        return 143

    def status(self) -> KafkaStatus:
        self.statuses += 1
        running = self.back and self.statuses in (2, 3)
        if self.statuses == 4:
            self._end_worker()
        return KafkaStatus(running, 1 if running else None, self.bootstrap, Path(), self.log_file)

    def _end_worker(self) -> None:
        assert self.worker.stdin is not None
        if not self.worker.stdin.closed:
            self.worker.stdin.close()  # the worker sees the end of its input, and exits


@pytest.mark.parametrize("back", [False, True])
def test_dev_says_once_that_its_broker_exited_and_runs_on(
    tmp_path: Path, capsys, back: bool
) -> None:
    """A broker stopped under a running ``talkstream dev`` went unsaid: webhooks got 503s and
    nothing said why. It is said once, with its log, and the rest runs on (an outage tried
    out on purpose; ``talkstream kafka start`` brings it back); a child that exits still ends
    the run. Its return (``talkstream kafka start``) went unsaid too: it is said once, and so
    is the restarted broker stopping again."""
    # the worker ends at the end of its input, or after 30 s (a watch that never asks)
    waits = "import select, sys; select.select([sys.stdin], [], [], 30)"
    worker = subprocess.Popen([sys.executable, "-c", waits], stdin=subprocess.PIPE)
    broker = _StoppedBroker(worker, tmp_path / "kafka.log", back)
    try:
        code = watch({"worker": worker}, broker, tmp_path)  # type: ignore[arg-type]
    finally:
        worker.kill()
        worker.wait()
    said = capsys.readouterr().err.splitlines()
    gone = (
        f"(see {tmp_path / 'kafka.log'}); webhooks wait for it, answered 503 once one has "
        "waited KAFKA_STALL_SECONDS, until it runs again (talkstream kafka start)"
    )
    assert code == 1 and broker.asked == 1
    assert said == [
        f"talkstream dev: kafka exited with 143 {gone}",
        *(
            [
                "talkstream dev: kafka is back on 127.0.0.1:19392; webhooks are taken again",
                f"talkstream dev: kafka stopped {gone}",
            ]
            if back
            else []
        ),
        f"talkstream dev: worker exited with 0; see {tmp_path}/",
    ]


def test_dev_says_it_waits_for_its_broker_as_kafka_start_does(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``talkstream kafka start`` says it waits for the broker before it waits (a JVM and its
    KRaft quorum take seconds); ``dev`` started its broker saying nothing until its banner or
    its error. It says the launcher's line too, on stderr."""
    from streams.dev.kafka import EmbeddedKafka, KafkaLauncherError

    def start(self: EmbeddedKafka, timeout: float = 60, on_wait: object = None) -> KafkaStatus:
        assert callable(on_wait), "dev gave its broker's start no way to say it waits"
        on_wait(f"starting Kafka {self.version} at {self.bootstrap} (waiting for it ...)")
        raise KafkaLauncherError("Kafka did not answer (this test's broker never does)")

    monkeypatch.setattr(EmbeddedKafka, "start", start)
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        ingress_port=0,
        console_port=0,
        worker_http_port=0,
        projector_http_port=0,
        secret_keys=Fernet.generate_key().decode(),
    )
    assert run_dev(settings, openai_port=0, talkable_port=0) == 1
    version = EmbeddedKafka(tmp_path, version=settings.kafka_version).version
    assert capsys.readouterr().err.splitlines() == [
        f"talkstream dev: starting Kafka {version} at {settings.kafka_bootstrap} (waiting for "
        "it ...)",
        "talkstream dev: Kafka did not answer (this test's broker never does)",
    ]


def test_dev_waits_for_its_consoles_readyz_unless_no_projector_runs() -> None:
    """``dev`` said everything ran once the console served its login page, while its pages
    could still say "no projection yet": it waits for the console's /readyz (after the
    worker's), except where no projector would ever make the projection."""
    console = "http://127.0.0.1:8090"
    assert console_readyz(Settings(), console) == f"{console}/readyz"
    assert console_readyz(Settings(projector="process"), console) == f"{console}/readyz"
    assert console_readyz(Settings(projector="off"), console) is None


def test_the_dev_banner_names_a_talkstream_a_fresh_shell_can_run(tmp_path: Path, monkeypatch):
    """``make dev`` runs ``.venv/bin/talkstream``, and its banner said "then: talkstream audit
    ...", which a fresh shell (no activated venv) answers "command not found"."""
    venv = tmp_path / "checkout" / ".venv" / "bin"
    venv.mkdir(parents=True)
    script = venv / "talkstream"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))

    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert talkstream_command(tmp_path / "checkout") == ".venv/bin/talkstream"
    assert talkstream_command(tmp_path / "other") == str(script)
    monkeypatch.setenv("PATH", str(venv))  # activated: its name is enough
    assert talkstream_command(tmp_path / "checkout") == "talkstream"


@pytest.mark.parametrize("listen", ["::1", "0.0.0.0", "127.0.0.1"])
def test_the_dev_banners_curl_reaches_an_ingress_where_it_listens(listen: str) -> None:
    """The banner's ready-to-paste curl went to 127.0.0.1 whatever INGRESS_HOST said: an
    ingress on ::1 was not there (and its banner line, http://::1:PORT, was no URL)."""
    import http.server
    import shlex
    import threading

    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    received: list[bytes] = []

    class Ingress(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server_class = type("Server", (http.server.HTTPServer,), {"address_family": family})
    with server_class((listen, 0), Ingress) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        port = server.server_address[1]
        argv = shlex.split(curl_example(url_host(listen, to_reach=True), port))
        url = next(word for word in argv if word.startswith("http"))
        body = argv[argv.index("-d") + 1].encode()
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 202
    assert json.loads(received[0])["site"] == "my-site"
    assert url_host("::1") == "[::1]" and url_host("0.0.0.0") == "0.0.0.0"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["redrive", "--dry-run", "--topic", "generate", "--topic", "completions"], "--topic"),
        (["redrive", "--request-id", "a", "--site", "s", "--request-id=b"], "--request-id"),
        (["stats", "--site", "a", "--json", "--site", "b"], "--site"),
        (["audit", "--request-id", "a", "--request-id", "b"], "--request-id"),
        (["replay", "--verify", "--show", "1", "--show", "2"], "--show"),
    ],
)
def test_an_option_of_one_value_given_twice_is_refused_naming_it(
    args: list[str], option: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """click keeps the last value: `redrive --request-id A --request-id B` redrove B alone and
    said nothing of A; `stats --site a --site b` counted b's as if they were all asked for."""
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.endswith(
        f"Error: {option} is given 2 times: it takes one value (run the command once for each)\n"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was opened or made


@pytest.mark.parametrize(
    ("args", "option"),
    [
        # the default projection taken down, for a URL variable that was not set
        (["migrate", "--to", "0004", "--database-url", ""], "--database-url"),
        # every letter selected
        (["redrive", "--site", "s", "--reason-contains", " "], "--reason-contains"),
        (["redrive", "--dry-run", "--topic="], "--topic"),
        (["redrive", "--request-id", ""], "--request-id"),
        (["stats", "--site", ""], "--site"),
        (["audit", "--site", "s", "--email", ""], "--email"),
    ],
)
def test_a_text_option_given_empty_is_refused_naming_it(
    args: list[str], option: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """An empty value (a shell variable not set) was read as the option left out, or as a
    filter that selects everything (a reason containing "") or nothing (site ""), silently."""
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.endswith(f"Error: {option} is empty: give it a value, or leave it out\n")
    assert list(tmp_path.iterdir()) == []  # nothing was opened or made


@contextlib.contextmanager
def _holding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, role: str, **given: str
) -> Iterator[subprocess.Popen[str]]:
    """A process holding its folder as a running worker (or projector) does, once it said so,
    with this test's settings (Kafka out of reach, ``tmp_path`` the data dir, ``given``
    settings: TALKSTREAM_ and the name); killed outright at the end."""
    env = {
        "TALKSTREAM_SECRET_KEYS": Fernet.generate_key().decode(),
        "TALKSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "TALKSTREAM_DATA_DIR": str(tmp_path),
        **{f"TALKSTREAM_{name}": value for name, value in given.items()},
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = (
        "import sys; from streams.tabledir import hold_table_dir; from streams.settings import "
        f"Settings; held = hold_table_dir(Settings(), {role!r}); print('held', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_second_worker_on_a_running_workers_folder_is_refused_before_it_joins(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A worker started beside a running one without a TALKSTREAM_WORKER_NAME of its own (the
    README's scale out, on one host) took the first one's member id in every consumer group,
    fencing it out again and again for half a minute while it waited for the table store the
    first one held, then ended with RocksDB's traceback ("While lock file: .../LOCK: Resource
    temporarily unavailable"). It is refused at once now, naming the folder, the pid holding it
    and the setting, before it asks Kafka anything; a worker killed outright (SIGKILL) leaves
    its folder to the next run of its name."""
    with _holding(monkeypatch, tmp_path, "worker", WORKER_NAME="w2") as first:  # the running worker
        result = CliRunner().invoke(main, ["worker"])
        assert result.exit_code == 1, result.output
        folder = tmp_path / "worker" / "talkstream" / "w2"
        assert result.output == (
            f"Error: another worker runs on {folder} (pid {first.pid}): give each worker on a "
            "host its own TALKSTREAM_WORKER_NAME (this one's is 'w2': its table store's folder, "
            "and its member id in the consumer groups)\n"
        )
        # a worker of another name goes on (to Kafka, out of reach here)
        monkeypatch.setenv("TALKSTREAM_WORKER_NAME", "w3")
        other = CliRunner().invoke(main, ["worker"])
        assert other.output.startswith("Error: Kafka at 127.0.0.1:1: nothing listens there")
    # killed outright, the first leaves its folder to the next worker of its name, and a worker
    # that ended before it ran (Kafka out of reach) holds it no more
    monkeypatch.setenv("TALKSTREAM_WORKER_NAME", "w2")
    for _ in range(2):
        again = CliRunner().invoke(main, ["worker"])
        assert again.output.startswith("Error: Kafka at 127.0.0.1:1: nothing listens there")


@pytest.mark.parametrize(
    ("command", "keys", "refusal"),
    [
        (["worker"], False, "Error: TALKSTREAM_SECRET_KEYS is not set"),
        (["worker"], True, "Error: Kafka at 127.0.0.1:1: nothing listens there"),
        (["projector"], True, "Error: Kafka at 127.0.0.1:1: nothing listens there"),
    ],
    ids=["worker-without-keys", "worker-without-kafka", "projector-without-kafka"],
)
def test_a_start_refused_leaves_no_folder_it_made_and_keeps_what_was_there(
    command: list[str], keys: bool, refusal: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A worker (or projector) refused at its start, a setting missing or Kafka out of reach,
    left DATA_DIR/worker/<app>/<name>/ behind, a lock file in it, for a process that never
    ran. What its start made is removed; a folder that was there already (an earlier run's
    table store) is kept, as is everything in it."""
    data = tmp_path / "data"
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(data))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TALKSTREAM_PROJECTOR", "worker")  # the worker holds two locks
    if keys:
        monkeypatch.setenv("TALKSTREAM_SECRET_KEYS", Fernet.generate_key().decode())
    else:
        monkeypatch.delenv("TALKSTREAM_SECRET_KEYS", raising=False)
    result = CliRunner().invoke(main, command)
    said = result.output.splitlines()[-1]  # (the projector logs aiokafka's ERRORs first)
    assert (result.exit_code, said.startswith(refusal)) == (1, True), result.output
    assert not data.exists()  # the data dir too: this start made it
    # an earlier run's folder, its table store and lock: kept (the projector's lock, which
    # this start made, is not)
    folder = data / "worker" / "talkstream" / "worker"
    (folder / "v1").mkdir(parents=True)
    (folder / "worker.lock").write_text("4242")
    again = CliRunner().invoke(main, command)
    assert again.output.splitlines()[-1].startswith(refusal), again.output
    kept = {path.relative_to(data).as_posix() for path in data.rglob("*")}
    assert kept == {
        "worker",
        "worker/talkstream",
        "worker/talkstream/worker",
        "worker/talkstream/worker/v1",
        "worker/talkstream/worker/worker.lock",
    }


@pytest.mark.parametrize("command", [["projector"], ["worker"]])
def test_a_projector_beside_a_running_projector_of_its_name_is_refused(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """`talkstream projector` beside a worker running its own projector (or a second one) with
    the same TALKSTREAM_WORKER_NAME on one host took its member id in the projector's group
    (`worker@host-projector`): the two fenced each other out every 3 s, each taking the same
    partitions in turn. Refused at start now, as is a worker running its projector itself
    (TALKSTREAM_PROJECTOR=worker) beside one; a worker whose projector is a child process of
    its own leaves the refusal to that child."""
    with _holding(
        monkeypatch, tmp_path, "projector", PROJECTOR="worker"
    ) as first:  # a worker's, or its own
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, result.output
        folder = tmp_path / "worker" / "talkstream" / "worker"
        assert result.output == (
            f"Error: another projector runs on {folder} (pid {first.pid}): give each projector "
            "on a host its own TALKSTREAM_WORKER_NAME (this one's is 'worker': its member id in "
            "the projector's consumer group, the worker's own projector's too "
            "(TALKSTREAM_PROJECTOR process or worker))\n"
        )
        if command == ["worker"]:  # its projector in a child process: the child's to refuse
            monkeypatch.setenv("TALKSTREAM_PROJECTOR", "process")
            child = CliRunner().invoke(main, command)
            assert child.output.startswith("Error: Kafka at 127.0.0.1:1: nothing listens there")


@pytest.mark.parametrize(
    ("args", "takes"),
    [
        (["--show", "abc"], "--show takes a whole number, 0 or more (how many to print; 0: every"),
        (["--verify", "--show", "-1"], "--show takes a whole number, 0 or more"),
        (["--processes", "two"], "--processes takes a whole number, 1 or more (how many processes"),
        (["--verify", "--processes", "0"], "--processes takes a whole number, 1 or more"),
    ],
)
def test_a_count_replay_cannot_use_is_refused_saying_what_the_option_takes(
    args: list[str], takes: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """`replay --show abc` said "'abc' is not a valid integer range.": no range was asked
    for, and it did not say what --show takes."""
    monkeypatch.setenv("TALKSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TALKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, ["replay", *args])
    assert result.exit_code == 2, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    option = takes.split()[0]
    assert error.startswith(f"Error: Invalid value for '{option}': '{args[-1]}': {takes}"), error
    assert "integer range" not in error and "in the range" not in error
    assert list(tmp_path.iterdir()) == []  # nothing was opened or made


def test_ctrl_c_ends_a_command_whose_library_swallowed_its_cancellation() -> None:
    """Ctrl-C is asyncio's cancellation of the command's coroutine at its next wait; aiokafka's
    stop, awaiting its own tasks, swallows one that reaches it there. An interrupted replay whose
    last wait was its consumer's stop went on and exited 0, reporting a whole rebuild (seen in
    the integration tier: `assert replay.returncode == 1`, 0)."""
    import asyncio
    import signal

    from streams.ops.options import run_async

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # asyncio.run's to take
    try:

        async def stopping_as_aiokafka_does() -> str:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: handled before the wait below
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)  # a task of its own awaited, the cancellation taken
            return "rebuilt whole"

        with pytest.raises(KeyboardInterrupt):
            run_async(stopping_as_aiokafka_does())
    finally:
        signal.signal(signal.SIGINT, previous)

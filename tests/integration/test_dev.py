"""The commands as a user starts them: ``talkstream dev`` runs the whole system (its own
embedded broker, the stand-ins, worker, ingress, console), logs no ERROR or WARNING on a clean
start, refuses a second run on its data (naming it), and Ctrl-C stops all of it with one line
and exit 0, and refuses secret keys that are not keys before starting anything; outside
``dev`` the worker and the ingress refuse to start without
``TALKSTREAM_SECRET_KEYS`` rather than making a key next to the data."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
from pathlib import Path

import pytest

from streams.dev.kafka import EmbeddedKafka
from streams.secrets import MISSING_KEYS, generate_key
from tests.integration.conftest import http
from tests.support import free_port, seed_params, streams_process, streams_run, wait_until

pytestmark = pytest.mark.integration


def clean_env(**values: str) -> dict[str, str]:
    """The environment without any TALKSTREAM_ setting of the test run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALKSTREAM_")}
    return {**env, **{f"TALKSTREAM_{k.upper()}": v for k, v in values.items()}}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _environ(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode()
    except OSError:
        return ""


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_runs_everything_and_ctrl_c_stops_it_with_one_line(tmp_path: Path) -> None:
    kafka_port, ingress, console, openai, talkable, worker, executors = (
        free_port() for _ in range(7)
    )
    env = clean_env(
        executors_http_port=str(executors),  # its executors' child (EXECUTORS=process, default)
        data_dir=str(tmp_path / "data"),
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_controller_port=str(free_port()),
        ingress_port=str(ingress),
        console_port=str(console),
        worker_http_port=str(worker),
        projector_http_port=str(free_port()),
        partitions="2",
    )
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # where dev keeps its development key
    ports = ["--openai-port", str(openai), "--talkable-port", str(talkable)]
    # started as a script's `make dev &` does, SIGINT ignored: Ctrl-C (a SIGINT to it) stops
    # it all the same (it was ignored, and only SIGTERM stopped such a run)
    proc, out = streams_process("dev", *ports, env=env, background=True)
    try:
        out.until("Ctrl-C stops everything.", timeout=180)
        printed = "\n".join(out.seen)
        assert f"http://127.0.0.1:{ingress}/chat-gpt/generate" in printed
        assert f"http://127.0.0.1:{console}/" in printed and "token:" in printed
        # where everything listens: the worker's /metrics and /readyz too, and its projector's
        # (the README's alerts read them; they were not printed)
        projector = env["TALKSTREAM_PROJECTOR_HTTP_PORT"]
        assert (
            f"worker     http://127.0.0.1:{worker}/metrics   (and /readyz; its projector's: "
            f"http://127.0.0.1:{projector}/metrics; its executors': "
            f"http://127.0.0.1:{executors}/metrics)"
        ) in printed
        # its console reads its own worker's pacing (its executors' child's, where the calls
        # are made), not the default port's
        console_pid = next(
            int(pid) for pid in os.listdir("/proc")
            if pid.isdigit() and _cmdline(pid).endswith("-m streams console")
            and str(tmp_path) in _environ(pid)
        )  # fmt: skip
        assert f"TALKSTREAM_CONSOLE_WORKER_URLS=http://127.0.0.1:{executors}" in _environ(
            str(console_pid)
        )
        database = shlex.quote(str(tmp_path / "data" / "talkstream.sqlite3"))
        assert f"or   sqlite3 {database} 'select request_id, state from requests'" in printed
        # it says so once the worker is ready: the first webhook is not kept waiting
        assert http("GET", f"http://127.0.0.1:{worker}/readyz")[0] == 200
        # and the console: its pages read the projection (it waited for the login page only)
        assert http("GET", f"http://127.0.0.1:{console}/readyz") == (
            200,
            {"ready": True, "status": "ready"},
        )
        # a second run on the same data is refused at once, naming the first; it started
        # nothing (it would have joined the first's consumer group and its SQLite file)
        second = streams_run("dev", *ports, env=env)
        assert (second.returncode, second.stdout) == (1, ""), second.stderr
        assert second.stderr == (
            f"talkstream dev: another talkstream dev runs on {tmp_path / 'data'} (pid "
            f"{proc.pid}): stop it first (Ctrl-C where it runs), or give this one its own "
            "TALKSTREAM_DATA_DIR\n"
        )
        assert (tmp_path / "data" / "dev.lock").read_text() == str(proc.pid)  # left to the first
        # the pasted example works: a webhook in, the event at the Talkable stand-in
        status, body = http(
            "POST", f"http://127.0.0.1:{ingress}/chat-gpt/generate", seed_params("dev@example.com")
        )
        assert status == 202, body

        def published() -> bool:
            status, events = http("GET", f"http://127.0.0.1:{talkable}/_events")
            return status == 200 and "dev@example.com" in json.dumps(events)

        wait_until(published, timeout=120, what="the event at the Talkable stand-in")
        assert (tmp_path / "config" / "talkstream").is_dir()  # the dev key, not in the data
        # a clean start on a new broker alarms nobody: no ERROR or WARNING in any log
        alarming = [
            f"{log.name}: {line}"
            for log in sorted((tmp_path / "data" / "logs").glob("*.log"))
            for line in log.read_text().splitlines()
            if " ERROR " in line or " WARNING " in line
        ]
        assert alarming == []
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = proc.wait(timeout=120)
    after = out.rest(timeout=10)[out.seen.index("Ctrl-C stops everything.") + 1 :]
    assert code == 0
    assert after == ["talkstream dev: stopped"]  # one line, and no traceback on stdout
    assert not any(listening(p) for p in (kafka_port, ingress, console, openai, talkable))
    assert not (tmp_path / "data" / "dev.lock").exists()  # its hold went with it


@pytest.mark.parametrize("command", ["worker", "ingress"])
def test_worker_and_ingress_refuse_to_start_without_secret_keys(
    command: str, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = clean_env(
        kafka_bootstrap=kafka.bootstrap,
        data_dir=str(data),
        ingress_port=str(free_port()),
        worker_http_port=str(free_port()),
    )
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    done = streams_run(command, env=env)
    assert done.returncode != 0
    assert MISSING_KEYS in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # no key was made for it, next to the data or anywhere else
    made = [p for root in (data, tmp_path / "config") if root.exists() for p in root.rglob("*")]
    assert not any("key" in p.name for p in made), made


def test_dev_refuses_secret_keys_that_are_not_keys_with_one_line_before_starting(
    tmp_path: Path,
) -> None:
    """A rotation's list mistyped (a ';' for the comma) is said by ``dev`` itself, first: not
    a broker started and an ingress that "did not become ready" (its log said why)."""
    kafka_port = free_port()
    old, new = generate_key(), generate_key()
    env = clean_env(
        data_dir=str(tmp_path / "data"),
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_controller_port=str(free_port()),
        ingress_port=str(free_port()),
        console_port=str(free_port()),
        worker_http_port=str(free_port()),
        projector_http_port=str(free_port()),
        secret_keys=f"{old};{new}",
    )
    ports = ["--openai-port", str(free_port()), "--talkable-port", str(free_port())]
    done = streams_run("dev", *ports, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "talkstream dev: TALKSTREAM_SECRET_KEYS: entry 1 is not a Fernet key (44 url-safe "
        "base64 characters ending in '=', as Fernet.generate_key() makes them); keys are "
        "separated by commas only"
    ]
    assert old not in done.stderr + done.stdout and new not in done.stderr + done.stdout
    assert not (tmp_path / "data" / "kafka").exists() and not listening(kafka_port)

"""Embedded single-node Apache Kafka 3.9.1 (KRaft) for dev mode and tests.

The broker runs from Maven Central jars (resolved once by ``mvn`` from ``compose/kafka/pom.xml``
into a cache shared by dev and tests) on the local JDK, as a detached process that outlives the
command that started it; :meth:`EmbeddedKafka.stop` ends it. Files under ``<data_dir>/kafka``::

    cluster.id          the KRaft cluster id, generated once
    server.properties   rendered from compose/kafka/server.properties at each start
    logs/               the metadata log and the topic partitions
    broker.log          the broker's stdout and stderr (compose/kafka/log4j.properties)
    kafka.pid           the pid of the running broker

Every failure is a :class:`KafkaLauncherError` (a ``TalkstreamError``, not retriable) whose
message says what to install or change.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.errors import TalkstreamError

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "compose" / "kafka"
# the broker does not start without these (reload4j is compile-only in Kafka's own POM)
REQUIRED_JARS = (f"kafka_2.13-{KAFKA_VERSION}.jar", "slf4j-reload4j-*.jar", "reload4j-*.jar")
_POLL_SECONDS = 0.1


class KafkaLauncherError(TalkstreamError):
    """The embedded broker could not be fetched, formatted, started or stopped."""


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    running: bool  # our process is alive and its PLAINTEXT port accepts connections
    pid: int | None  # set while our process is alive, also while it is still starting
    bootstrap: str
    data_dir: Path
    log_file: Path

    def describe(self) -> str:
        where = f"data {self.data_dir}, log {self.log_file}"
        if self.running:
            return f"Kafka {KAFKA_VERSION} running at {self.bootstrap} (pid {self.pid}); {where}"
        if self.pid is not None:
            return (
                f"Kafka starting (pid {self.pid}), not answering at {self.bootstrap} yet; {where}"
            )
        return f"Kafka not running (would listen on {self.bootstrap}); {where}"


def default_jars_dir() -> Path:
    default = f"~/.cache/talkstream/kafka-{KAFKA_VERSION}"
    return Path(os.environ.get("TALKSTREAM_KAFKA_JARS", default)).expanduser()


def new_cluster_id() -> str:
    """A random cluster id as ``kafka-storage random-uuid`` makes it: 16 bytes, base64url."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that look like a command-line flag
            return text


def render_server_properties(
    template: str, *, host: str, port: int, controller_port: int, log_dir: Path
) -> str:
    values = {"host": host, "port": port, "controller_port": controller_port, "log_dir": log_dir}
    try:
        body = string.Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise KafkaLauncherError(f"bad placeholder in server.properties: {exc}") from exc
    return "# rendered at each start from compose/kafka/server.properties: edit that\n" + body


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaLauncherError(
            "no `java` on PATH and no $JAVA_HOME/bin/java: install a JDK 17 "
            "(Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
        )
    return java


async def wait_for_metadata(
    bootstrap: str, timeout: float, *, check: Callable[[], None] | None = None
) -> None:
    """Return once ``bootstrap`` answers a metadata request that lists a live broker.

    Polls until ``timeout`` seconds have passed, then raises :class:`KafkaLauncherError`;
    ``check`` runs before each attempt and may raise to give up early.
    """
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if check is not None:
            check()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise KafkaLauncherError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s")
        attempt = min(5.0, remaining)
        # a plain connect first: aiokafka logs an error for each refused bootstrap
        if await asyncio.to_thread(_port_open, host.strip("[]"), int(port)) and (
            await _lists_a_broker(bootstrap, attempt)
        ):
            return
        await asyncio.sleep(min(_POLL_SECONDS, remaining))


class EmbeddedKafka:
    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 9092,
        controller_port: int = 9093,
        jars_dir: Path | None = None,
        heap: str = "512m",
        *,
        config_dir: Path = CONFIG_DIR,
    ) -> None:
        if port == controller_port:
            raise KafkaLauncherError(f"port and controller_port must differ (both {port})")
        self.host, self.port, self.controller_port, self.heap = host, port, controller_port, heap
        self.kafka_dir = Path(data_dir).expanduser().resolve() / "kafka"
        self.jars_dir = jars_dir if jars_dir is not None else default_jars_dir()
        self.config_dir = config_dir
        self.log_dir = self.kafka_dir / "logs"
        self.log_file = self.kafka_dir / "broker.log"
        self.pid_file = self.kafka_dir / "kafka.pid"
        self.properties_file = self.kafka_dir / "server.properties"
        self.cluster_id_file = self.kafka_dir / "cluster.id"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> KafkaStatus:
        pid = self._running_pid()
        running = pid is not None and _port_open(self.host, self.port)
        return KafkaStatus(running, pid, self.bootstrap, self.kafka_dir, self.log_file)

    def fetch_jars(self) -> Path:
        """Resolve the broker's jars into ``jars_dir`` once (a no-op when they are there)."""
        if _has_jars(self.jars_dir):
            return self.jars_dir
        pom = self.config_dir / "pom.xml"
        if not pom.is_file():
            raise KafkaLauncherError(
                f"{pom} is missing: run from a checkout of the project, or put the runtime jars "
                f"of org.apache.kafka:kafka_2.13:{KAFKA_VERSION} plus slf4j-reload4j and reload4j "
                f"in {self.jars_dir} (or point TALKSTREAM_KAFKA_JARS at them)"
            )
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaLauncherError(
                f"no `mvn` on PATH to fetch the Kafka {KAFKA_VERSION} jars into {self.jars_dir}: "
                "install Maven (Debian: apt-get install maven) or set TALKSTREAM_KAFKA_JARS"
            )
        find_java()  # Maven needs it too; say so before Maven does, less clearly
        self.jars_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.jars_dir.name}-", dir=self.jars_dir.parent))
        logger.info("fetching Kafka jars version=%s into=%s", KAFKA_VERSION, self.jars_dir)
        try:
            command = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
            command += ["-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not _has_jars(tmp):
                raise KafkaLauncherError(
                    f"mvn could not fetch the Kafka jars (exit {done.returncode}); is Maven "
                    "Central or a mirror (~/.m2/settings.xml) reachable?\n"
                    + _tail(done.stdout + done.stderr)
                )
            tmp.chmod(0o755)  # mkdtemp makes it private; it is a shared cache
            try:
                tmp.rename(self.jars_dir)  # atomic: a half-done fetch is never in place
            except OSError as exc:
                if not _has_jars(self.jars_dir):  # else a concurrent fetch won the race
                    raise KafkaLauncherError(f"{self.jars_dir} lacks the jars: remove it") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.jars_dir

    def cluster_id(self) -> str:
        """The KRaft cluster id of this data dir, generated on first use."""
        with contextlib.suppress(FileNotFoundError):
            return self.cluster_id_file.read_text().strip()
        value = new_cluster_id()
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_id_file.write_text(value + "\n")
        return value

    def start(self, timeout: float = 60) -> KafkaStatus:
        """Start the broker unless ours already runs; return once it answers metadata."""
        current = self.status()
        if current.pid is not None:
            if not current.running:
                _run(wait_for_metadata(self.bootstrap, timeout))
            logger.info("Kafka already running pid=%s bootstrap=%s", current.pid, self.bootstrap)
            return self.status()
        java, jars = find_java(), self.fetch_jars()
        for port in (self.port, self.controller_port):
            if _port_open(self.host, port):
                raise KafkaLauncherError(
                    f"{self.host}:{port} is taken by another process (another Kafka?): "
                    "stop it or choose other ports"
                )
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        template = self._config_file("server.properties").read_text()
        self.properties_file.write_text(
            render_server_properties(
                template,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.log_dir,
            )
        )
        self._format(java, jars)
        started = time.monotonic()
        with self.log_file.open("a") as log:
            log.write(f"--- talkstream: starting Kafka {KAFKA_VERSION} at {time.ctime()}\n")
            log.flush()
            proc = subprocess.Popen(
                self._java(java, jars, "kafka.Kafka", str(self.properties_file)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.kafka_dir,
                start_new_session=True,  # a Ctrl-C meant for the parent does not reach it
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        logger.info("starting Kafka pid=%s bootstrap=%s", proc.pid, self.bootstrap)

        def exited() -> None:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise KafkaLauncherError(
                    f"Kafka exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{self.log_tail()}"
                )

        try:
            _run(wait_for_metadata(self.bootstrap, timeout, check=exited))
        except KafkaLauncherError as exc:
            if proc.poll() is None:  # alive but not answering: leave nothing half-started
                self.stop()
                raise KafkaLauncherError(
                    f"{exc}; stopped it. Last lines of {self.log_file}:\n{self.log_tail()}"
                ) from None
            raise
        seconds = time.monotonic() - started
        logger.info(
            "Kafka ready pid=%s bootstrap=%s seconds=%.1f", proc.pid, self.bootstrap, seconds
        )
        return self.status()

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM our broker, SIGKILL it after ``timeout``; False when it was not running."""
        pid = self._running_pid()
        if pid is None:
            return False
        logger.info("stopping Kafka pid=%s", pid)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
            if not _pid_alive(pid):
                self.pid_file.unlink(missing_ok=True)
                return True
            logger.warning("Kafka pid=%s still alive %.0fs after %s", pid, wait, sig.name)
        raise KafkaLauncherError(f"Kafka pid={pid} survived SIGKILL")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return _tail(self.log_file.read_text(errors="replace"), lines)
        except FileNotFoundError:
            return "(no broker log)"

    def _running_pid(self) -> int | None:
        """The pid of our live broker; a stale pid file is removed."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        if text.isdigit() and _is_our_broker(int(text), self.properties_file):
            return int(text)
        logger.info("removing stale pid file %s pid=%s", self.pid_file, text)
        self.pid_file.unlink(missing_ok=True)
        return None

    def _config_file(self, name: str) -> Path:
        path = self.config_dir / name
        if not path.is_file():
            raise KafkaLauncherError(f"{path} is missing: run from a checkout of the project")
        return path

    def _java(self, java: str, jars: Path, main: str, *args: str) -> list[str]:
        log4j = self._config_file("log4j.properties").resolve().as_uri()
        return [
            *(java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC"),
            *("-Djava.awt.headless=true", f"-Dlog4j.configuration={log4j}"),
            *("-cp", str(jars / "*"), main, *args),
        ]

    def _format(self, java: str, jars: Path) -> None:
        args = ("format", "--ignore-formatted", "-t", self.cluster_id())
        command = [*self._java(java, jars, "kafka.tools.StorageTool", *args)]
        command += ["-c", str(self.properties_file)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise KafkaLauncherError(
                f"formatting {self.log_dir} failed (exit {done.returncode}):\n"
                + _tail(done.stdout + done.stderr)
            )
        logger.debug("kafka storage format: %s", done.stdout.strip())


def _has_jars(directory: Path) -> bool:
    return all(any(directory.glob(pattern)) for pattern in REQUIRED_JARS)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _lists_a_broker(bootstrap: str, seconds: float) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="talkstream-kafka-launcher",
        request_timeout_ms=max(1000, int(seconds * 1000)),
    )
    try:
        async with asyncio.timeout(seconds):
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await admin.close()
    return bool(cluster.get("brokers"))


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reaped now
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_our_broker(pid: int, properties: Path) -> bool:
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone, or no /proc (macOS): trust the pid file
        return not Path("/proc/self").exists()
    return b"kafka.Kafka" in cmdline and os.fsencode(properties) in cmdline  # not a reused pid


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion from sync code, also when called inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # blocks the caller's loop meanwhile
        pool.submit(asyncio.run, coro).result()

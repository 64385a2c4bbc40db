"""Embedded Apache Kafka (KRaft) for dev mode and tests, from Maven Central jars.

The broker runs from the jars of one Kafka version (resolved once by ``mvn`` from
``compose/kafka/<version>/pom.xml`` into a cache shared by dev and tests,
``~/.cache/talkstream/kafka-<version>``) on the local JDK, as a detached process that outlives
the command that started it; :meth:`EmbeddedKafka.stop` ends it. Versions: 4.4.0 (the
default) and 3.9.1 (``TALKSTREAM_KAFKA_VERSION``). Files under ``<data_dir>/kafka``::

    cluster.id          the KRaft cluster id, generated once
    formatted-by        the Kafka version that formatted logs/ (Kafka 3 cannot read Kafka 4's)
    server.properties   rendered from compose/kafka/server.properties at each start
    logs/               the metadata log and the topic partitions
    broker.log          the broker's stdout and stderr (the version's log4j config)
    kafka.pid           the pid of the running broker

One :class:`EmbeddedKafka` is one KRaft node in combined mode (broker and controller in one
process); :mod:`streams.dev.kafka_cluster` runs several of them as a replicated cluster;
:mod:`streams.dev.kafka_jars` knows the versions and fetches their jars;
:mod:`streams.dev.kafka_probes` tells whether a node answers, failed to bind, or runs.

Every failure is a :class:`KafkaLauncherError` (a ``TalkstreamError``, not retriable) whose
message says what to install or change.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import string
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.dev.kafka_jars import CONFIG_DIR as CONFIG_DIR
from streams.dev.kafka_jars import DEFAULT_KAFKA_VERSION as DEFAULT_KAFKA_VERSION
from streams.dev.kafka_jars import VERSIONS as VERSIONS
from streams.dev.kafka_jars import KafkaLauncherError as KafkaLauncherError
from streams.dev.kafka_jars import KafkaVersion as KafkaVersion
from streams.dev.kafka_jars import default_jars_dir as default_jars_dir
from streams.dev.kafka_jars import fetch_jars, kafka_version
from streams.dev.kafka_jars import find_java as find_java
from streams.dev.kafka_probes import (
    POLL_SECONDS,
    bind_failure,
    is_our_broker,
    pid_alive,
    port_open,
    run_sync,
)
from streams.dev.kafka_probes import KafkaStatus as KafkaStatus
from streams.dev.kafka_probes import NodeFailed as NodeFailed
from streams.dev.kafka_probes import PortUnavailable as PortUnavailable
from streams.dev.kafka_probes import wait_for_metadata as wait_for_metadata

logger = logging.getLogger(__name__)

# the first line of a launched node's server.properties: what `status` reports it runs
_LAUNCHED_AS = "# launched as Kafka "


def new_cluster_id() -> str:
    """A random cluster id as ``kafka-storage random-uuid`` makes it: 16 bytes, base64url."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that look like a command-line flag
            return text


def render_server_properties(
    template: str,
    *,
    host: str,
    port: int,
    controller_port: int,
    log_dir: Path,
    node_id: int = 1,
    voters: str | None = None,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """The node's server.properties. ``voters`` defaults to this node alone; ``overrides``
    are appended, so they win over the template's lines (Java properties: the last wins)."""
    values = {
        "host": host,
        "port": port,
        "controller_port": controller_port,
        "log_dir": log_dir,
        "node_id": node_id,
        "voters": voters or f"{node_id}@{host}:{controller_port}",
        "replication_factor": replication_factor,
        "min_insync_replicas": min_insync_replicas,
    }
    try:
        body = string.Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise KafkaLauncherError(f"bad placeholder in server.properties: {exc}") from exc
    text = "# rendered at each start from compose/kafka/server.properties: edit that\n" + body
    if overrides:
        text += "\n# --- overrides given to the launcher\n"
        text += "".join(f"{key}={value}\n" for key, value in overrides.items())
    return text


class EmbeddedKafka:
    """One KRaft node in combined mode (broker and controller in one process).

    Alone (the default) it is the dev broker; :class:`~streams.dev.kafka_cluster.KafkaCluster`
    gives several of them a shared cluster id, ``voters``, a replication factor and their own
    ``kafka_dir``. ``overrides`` (server properties that win over the template), ``format_args``
    (extra ``kafka-storage format`` arguments, e.g. ``--add-scram``; may carry secrets, never
    logged) and ``probe_options`` (aiokafka TLS/SASL options for the readiness probe) make a
    secured broker.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 9092,
        controller_port: int = 9093,
        jars_dir: Path | None = None,
        heap: str = "512m",
        *,
        version: str = DEFAULT_KAFKA_VERSION,
        config_dir: Path = CONFIG_DIR,
        kafka_dir: Path | None = None,
        node_id: int = 1,
        voters: str | None = None,
        replication_factor: int = 1,
        min_insync_replicas: int = 1,
        overrides: Mapping[str, str] | None = None,
        format_args: Sequence[str] = (),
        probe_options: Mapping[str, Any] | None = None,
        cluster_id_file: Path | None = None,
        class_archive_dir: Path | None = None,
    ) -> None:
        if port == controller_port:
            raise KafkaLauncherError(f"port and controller_port must differ (both {port})")
        self.host, self.port, self.controller_port, self.heap = host, port, controller_port, heap
        self.kafka = kafka_version(version)
        self.version = version
        self.kafka_dir = (
            kafka_dir.expanduser().resolve()
            if kafka_dir is not None
            else Path(data_dir).expanduser().resolve() / "kafka"
        )
        self.jars_dir = jars_dir if jars_dir is not None else default_jars_dir(version)
        self.config_dir = config_dir
        self.node_id, self.voters = node_id, voters
        self.replication_factor, self.min_insync_replicas = replication_factor, min_insync_replicas
        self.overrides = dict(overrides or {})
        self.format_args = tuple(format_args)
        self.probe_options = dict(probe_options or {})
        self.log_dir = self.kafka_dir / "logs"
        self.log_file = self.kafka_dir / "broker.log"
        self.pid_file = self.kafka_dir / "kafka.pid"
        self.properties_file = self.kafka_dir / "server.properties"
        self.cluster_id_file = cluster_id_file or self.kafka_dir / "cluster.id"
        # the JVM's archive of the classes a node loads (see :meth:`_class_archive_args`)
        self.class_archive_dir = class_archive_dir or self.jars_dir
        self.class_dump = self.kafka_dir / "classes.jsa.dump"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_read = 0  # how far the log written since our launch has been searched
        self._log_start = 0  # where our launch's part of the log begins

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> KafkaStatus:
        """Whether our broker runs and answers; :class:`KafkaLauncherError` when the broker of
        this ``kafka_dir`` runs on another port than this one's (started with other settings):
        waiting for it to answer here would wait in vain."""
        pid = self.running_pid()
        if pid is not None:
            self._refuse_another_address(pid)
        running = pid is not None and port_open(self.host, self.port)
        version = (self.running_version() if pid is not None else None) or self.version
        return KafkaStatus(running, pid, self.bootstrap, self.kafka_dir, self.log_file, version)

    def running_address(self) -> str | None:
        """``host:port`` the running broker was started to advertise (its server.properties,
        rendered at its launch; the last ``advertised.listeners`` line wins, as in Kafka);
        None when that file is gone or names none."""
        lines = self._launched_properties()
        advertised = [line for line in lines if line.startswith("advertised.listeners=")]
        if not advertised:
            return None
        first = advertised[-1].partition("=")[2].split(",")[0].strip()
        return first.partition("://")[2] or None

    def running_version(self) -> str | None:
        """The Kafka version the running broker was launched as (its server.properties' first
        line), which may not be this object's (``TALKSTREAM_KAFKA_VERSION`` changed since);
        None when the file does not say (written by a talkstream before this one)."""
        for line in self._launched_properties()[:1]:
            if line.startswith(_LAUNCHED_AS):
                return line.removeprefix(_LAUNCHED_AS).strip()
        return None

    def _launched_properties(self) -> list[str]:
        try:
            return self.properties_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def _refuse_another_address(self, pid: int) -> None:
        address = self.running_address()
        if address is None or address.rpartition(":")[2] == str(self.port):
            return
        raise KafkaLauncherError(
            f"a broker from this data directory ({self.kafka_dir}) runs at {address} "
            f"(pid {pid}), not at {self.bootstrap}: stop it (talkstream kafka stop) or use "
            "another TALKSTREAM_DATA_DIR"
        )

    def fetch_jars(self) -> Path:
        """Resolve the broker's jars into ``jars_dir`` once (a no-op when they are there)."""
        return fetch_jars(self.kafka, self.jars_dir, self.config_dir)

    def cluster_id(self) -> str:
        """The KRaft cluster id of this data dir, generated on first use."""
        with contextlib.suppress(FileNotFoundError):
            return self.cluster_id_file.read_text().strip()
        value = new_cluster_id()
        self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        self.cluster_id_file.write_text(value + "\n")
        return value

    def start(
        self, timeout: float = 60, on_wait: Callable[[str], None] | None = None
    ) -> KafkaStatus:
        """Start the broker unless ours already runs; return once it answers metadata.
        ``on_wait``: given one line when the wait for the broker to answer begins (a start
        takes seconds, and says so at once rather than after)."""
        say = on_wait or (lambda line: None)
        current = self.status()
        if current.pid is not None:
            if not current.running:
                say(
                    f"Kafka at {self.bootstrap} is starting (pid {current.pid}): waiting for it "
                    f"to answer (at most {timeout:g} s)"
                )
                run_sync(wait_for_metadata(self.bootstrap, timeout, options=self.probe_options))
            logger.info("Kafka already running pid=%s bootstrap=%s", current.pid, self.bootstrap)
            return self.status()
        started = time.monotonic()
        self.launch()
        say(
            f"starting Kafka {self.version} at {self.bootstrap} (waiting for it to answer, "
            f"at most {timeout:g} s)"
        )
        self.wait_ready(timeout)
        seconds = time.monotonic() - started
        logger.info(
            "Kafka ready pid=%s bootstrap=%s seconds=%.1f", self._pid(), self.bootstrap, seconds
        )
        return self.status()

    def launch(self) -> int:
        """Format the storage if needed and start the process; do not wait for it.

        A node of a cluster cannot answer before a majority of its voters runs, so the
        cluster launches every node first and waits afterwards (:meth:`wait_ready`).
        """
        self._check_readable()
        java, jars = find_java(), self.fetch_jars()
        for port in (self.port, self.controller_port):
            if port_open(self.host, port):
                raise PortUnavailable(self.host, port, "taken by another process (another Kafka?)")
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        template = self._config_file("server.properties").read_text()
        self.properties_file.write_text(
            f"{_LAUNCHED_AS}{self.version}\n"
            + render_server_properties(
                template,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.log_dir,
                node_id=self.node_id,
                voters=self.voters,
                replication_factor=self.replication_factor,
                min_insync_replicas=self.min_insync_replicas,
                overrides=self.overrides,
            )
        )
        self.properties_file.chmod(0o600)  # overrides may hold a keystore password
        self.class_dump.unlink(missing_ok=True)  # a killed run's, maybe cut short
        self._format(java, jars)
        with self.log_file.open("a") as log:
            self._log_start = log.tell()
            log.write(f"--- talkstream: starting Kafka {self.version} at {time.ctime()}\n")
            log.flush()
            self._log_read = log.tell()
            proc = subprocess.Popen(
                self._java(java, jars, "kafka.Kafka", str(self.properties_file)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.kafka_dir,
                start_new_session=True,  # a Ctrl-C meant for the parent does not reach it
            )
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        logger.info(
            "starting Kafka %s node=%s pid=%s bootstrap=%s",
            self.version,
            self.node_id,
            proc.pid,
            self.bootstrap,
        )
        return proc.pid

    def wait_ready(
        self, timeout: float, brokers: int = 1, watching: Sequence[EmbeddedKafka] = ()
    ) -> None:
        """Wait until the node launched by :meth:`launch` answers metadata listing ``brokers``
        brokers; stop it (and say why, from its log) if it dies or never answers.
        ``watching``: the nodes whose start the wait watches (a cluster's launched together,
        which it waits for: one that fails ends the wait at once, named); this one alone by
        default."""

        def starting() -> None:
            for node in watching or (self,):
                node.check_starting()

        try:
            run_sync(
                wait_for_metadata(
                    self.bootstrap,
                    timeout,
                    check=starting,
                    options=self.probe_options,
                    brokers=brokers,
                )
            )
        except NodeFailed:
            raise
        except KafkaLauncherError as exc:
            proc = self._proc
            if proc is not None and proc.poll() is None:  # alive, not answering: stop it
                self.stop()
                raise KafkaLauncherError(
                    f"{exc}; stopped it. Last lines of {self.log_file}:\n{self.log_tail()}"
                ) from None
            raise

    def check_starting(self) -> None:
        """Raise :class:`NodeFailed` if the process :meth:`launch` started has exited, or runs
        without one of its listeners (then it is killed: it never started, nothing is lost).
        A listener that could not bind is :class:`PortUnavailable`, whether the node exited of
        it (the broker's listener) or runs on without it (the controller's)."""
        proc = self._proc
        if proc is None:
            return
        exited = proc.poll() is not None
        failed = self._bind_failure()
        if failed is not None:
            self.kill()  # a no-op once it has exited
            self.pid_file.unlink(missing_ok=True)
            host, port, reason = failed
            raise PortUnavailable(
                host,
                port,
                f"{reason.lower()}; Kafka node {self.node_id} could not bind it and was stopped",
            )
        if exited:
            self.pid_file.unlink(missing_ok=True)
            raise NodeFailed(
                f"Kafka node {self.node_id} exited with code {proc.returncode} while starting; "
                f"last lines of {self.log_file}:\n{self.log_tail()}"
            )

    def _bind_failure(self) -> tuple[str, int, str] | None:
        """(host, port, reason) of a listener that could not bind, from the log written since
        our launch (read from where the previous look stopped, at a line's start)."""
        failed, self._log_read = bind_failure(self.log_file, self._log_read)
        return failed

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM our broker, SIGKILL it after ``timeout``; False when it was not running."""
        pid = self._own_child() or self.running_pid()
        if pid is None:
            return False
        logger.info("stopping Kafka pid=%s", pid)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            if self._signal(pid, sig, wait):
                self._keep_class_dump(whole=sig == signal.SIGTERM)
                return True
            logger.warning("Kafka pid=%s still alive %.0fs after %s", pid, wait, sig.name)
        raise KafkaLauncherError(f"Kafka pid={pid} survived SIGKILL")

    def kill(self) -> int | None:
        """SIGKILL the broker (a hard bounce: no controlled shutdown); its pid, None if it
        was not running."""
        pid = self._own_child() or self.running_pid()
        if pid is None:
            return None
        logger.info("killing Kafka node=%s pid=%s", self.node_id, pid)
        if not self._signal(pid, signal.SIGKILL, 10.0):
            raise KafkaLauncherError(f"Kafka pid={pid} survived SIGKILL")
        self._keep_class_dump(whole=False)
        return pid

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` of the log, of this launch's part once :meth:`launch` ran (the
        log is appended to at each start: an error must not quote an earlier run's end)."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_start)
                return _tail(log.read().decode(errors="replace"), lines)
        except FileNotFoundError:
            return "(no broker log)"

    def _signal(self, pid: int, sig: signal.Signals, wait: float) -> bool:
        """Send ``sig``; True once the process is gone (within ``wait`` seconds)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if pid_alive(pid):
            return False
        if self._proc is not None and self._proc.pid == pid:
            self._proc.poll()  # reap our child
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return True

    def exited(self) -> int | None:
        """The exit code of the broker :meth:`launch` started here, once it has exited; None
        while it runs, or when this object started none."""
        proc = self._proc
        return None if proc is None else proc.poll()

    def _pid(self) -> int | None:
        return self.running_pid()

    def _own_child(self) -> int | None:
        """The pid of the process :meth:`launch` started here while it lives. It is ours
        whatever its command line says: until the child has exec'd Java, that is still
        Python's, and the pid file's check (:meth:`running_pid`) would call it stale."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def running_pid(self) -> int | None:
        """The pid of our live broker; a stale pid file is removed."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        if text.isdigit() and int(text) == self._own_child():
            return int(text)
        if text.isdigit() and is_our_broker(int(text), self.properties_file):
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
        logging_file = self._config_file(f"{self.version}/{self.kafka.logging_config}")
        logging_uri = logging_file.resolve().as_uri()
        return [
            *(java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC"),
            *self._class_archive_args(java, main),
            # the client compiler only: a node that lives for a dev session, a test run or a
            # benchmark never earns back what the optimizing compiler's threads take from the
            # two cores it shares with the pipeline (bench/PROFILE.md, thirty-third round)
            "-XX:TieredStopAtLevel=1",
            *("-Djava.awt.headless=true", f"-D{self.kafka.logging_property}={logging_uri}"),
            *("-cp", str(jars / "*"), main, *args),
        ]

    def class_archive(self, java: str) -> Path:
        """The archive of the classes a node of this version loads, made by the JVM at hand
        (one per JDK: another JDK's would be refused)."""
        binary = Path(shutil.which(java) or java).resolve()
        jdk = [str(binary)]
        for part in (binary, binary.parent.parent / "lib" / "server" / "libjvm.so"):
            with contextlib.suppress(OSError):
                made = part.stat()
                jdk.append(f"{made.st_size}:{made.st_mtime_ns}")
        digest = hashlib.sha256(":".join(jdk).encode()).hexdigest()[:12]
        return self.class_archive_dir / f"classes-{digest}.jsa"

    def _class_archive_args(self, java: str, main: str) -> list[str]:
        """The JVM's class data sharing: a node (and the storage tool) maps the classes it
        loads from an archive made once, rather than loading and checking each from the jars
        at every start: a node's start took 2.4 s of CPU and 4.5 s before it answered, 1.3 s
        and 3 s with it (the storage tool 1.0 s, 0.6 s). No archive yet: a node has the JVM
        write one as it exits (a few seconds more at its stop), which :meth:`stop` keeps once
        the JVM has taken it. (Another JDK's archive the JVM would leave aside, silently: each
        JDK has its own.)"""
        archive = self.class_archive(java)
        if archive.is_file():
            return [f"-XX:SharedArchiveFile={archive}"]
        if main == "kafka.Kafka":  # (the classes it cannot archive, a warning each, unsaid)
            return [f"-XX:ArchiveClassesAtExit={self.class_dump}", "-Xlog:cds*=error"]
        return []

    def _keep_class_dump(self, whole: bool) -> None:
        """The archive the node wrote as it exited, kept for the next starts (the first one
        kept: nodes started before it write theirs too); one it may have been killed writing
        (``whole`` False) is not."""
        if not self.class_dump.exists():
            return
        try:
            java = find_java()
            archive = self.class_archive(java)
            if whole and not archive.exists() and _maps(java, self.fetch_jars(), self.class_dump):
                os.replace(self.class_dump, archive)  # whole or not at all, for a start reading it
        except (OSError, KafkaLauncherError, subprocess.SubprocessError) as exc:
            logger.debug("class archive not kept: %s", exc)  # starts go without one
        finally:
            self.class_dump.unlink(missing_ok=True)

    def _check_readable(self) -> None:
        """Kafka 3 cannot read a log formatted by Kafka 4 (it dies with a stack trace): say so
        before starting it. (Kafka 4 reads Kafka 3's: the metadata version stays 3.x until an
        operator upgrades it.)"""
        try:
            formatted_by = self.formatted_by_file.read_text().strip()
        except FileNotFoundError:
            return
        if int(formatted_by.split(".")[0]) > int(self.version.split(".")[0]):
            raise KafkaLauncherError(
                f"{self.log_dir} was formatted by Kafka {formatted_by}, which Kafka "
                f"{self.version} cannot read: use another TALKSTREAM_DATA_DIR (or remove "
                f"{self.kafka_dir}), or TALKSTREAM_KAFKA_VERSION={formatted_by}"
            )

    @property
    def formatted_by_file(self) -> Path:
        return self.kafka_dir / "formatted-by"

    def _format(self, java: str, jars: Path) -> None:
        """A new node's log directory formatted (its cluster id, the SCRAM users of
        ``format_args``). One formatted already is left as it is, as the storage tool's
        ``--ignore-formatted`` would, without the tool's JVM: a second of CPU at each start
        again (a restarted broker, ``make dev`` run again)."""
        if (self.log_dir / "meta.properties").exists():
            return
        args = ("format", "--ignore-formatted", "-t", self.cluster_id())
        command = [*self._java(java, jars, "kafka.tools.StorageTool", *args)]
        command += ["-c", str(self.properties_file), *self.format_args]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise KafkaLauncherError(
                f"formatting {self.log_dir} failed (exit {done.returncode}):\n"
                + _tail(done.stdout + done.stderr)
            )
        logger.debug("kafka storage format: %s", done.stdout.strip())
        self.formatted_by_file.write_text(f"{self.version}\n")


def _maps(java: str, jars: Path, archive: Path) -> bool:
    """Whether the JVM maps ``archive`` with the jars' class path (``-Xshare:on``: or exits
    saying why). One cut short would have every JVM given it die of a SIGBUS as it starts;
    one it cannot use for another reason it would leave aside without a word."""
    shared = ("-Xshare:on", f"-XX:SharedArchiveFile={archive}")
    crash = ("-XX:ErrorFile=/dev/null", "-XX:-CreateCoredumpOnCrash")  # no hs_err_pid*.log here
    command = [java, *shared, *crash, "-cp", str(jars / "*"), "-version"]
    checked = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if checked.returncode != 0:
        logger.info("class archive %s refused: %s", archive, _tail(checked.stdout, 3))
    return checked.returncode == 0


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])

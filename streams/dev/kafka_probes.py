"""How the launcher tells how a Kafka node is doing, without starting anything: whether it
answers (a metadata request listing enough brokers), whether a listener of a node it started
could not bind (the node's log), and whether a pid is alive and a broker of ours (its command
line). What they find is a :class:`KafkaStatus`; what goes wrong while a node starts is a
:class:`NodeFailed`.

:mod:`streams.dev.kafka` starts and stops the nodes with these; it re-exports what its callers
import from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import socket
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.dev.kafka_jars import DEFAULT_KAFKA_VERSION, KafkaLauncherError

POLL_SECONDS = 0.1
# a listener that could not bind. A lone node exits some seconds after it; a cluster's node
# ran on for the whole wait (80 s and more) and never answered
_BIND_FAILED = re.compile(rb"Socket server failed to bind to (\S+):(\d+): ([^.\r\n]+)")


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    running: bool  # our process is alive and its client port accepts connections
    pid: int | None  # set while our process is alive, also while it is still starting
    bootstrap: str
    data_dir: Path
    log_file: Path
    version: str = DEFAULT_KAFKA_VERSION

    def describe(self) -> str:
        where = f"data {self.data_dir}, log {self.log_file}"
        if self.running:
            return f"Kafka {self.version} running at {self.bootstrap} (pid {self.pid}); {where}"
        if self.pid is not None:
            return (
                f"Kafka starting (pid {self.pid}), not answering at {self.bootstrap} yet; {where}"
            )
        return f"Kafka not running (would listen on {self.bootstrap}); {where}"


class NodeFailed(KafkaLauncherError):
    """A node launched here exited or lost a listener while starting (its own message names
    it and quotes its log)."""


class PortUnavailable(NodeFailed):
    """A port of the node's cannot be had: taken when it was to be launched, or when it bound
    (then it was stopped). One line, without the broker's stack trace; the caller that knows
    what sets the port adds it."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host, self.port, self.reason = host, port, reason

    @property
    def host_not_here(self) -> bool:
        """The host is none of this machine's addresses (EADDRNOTAVAIL): no port on it can be
        had, so what to change is the host, not the port."""
        return "assign requested address" in self.reason.lower()


async def wait_for_metadata(
    bootstrap: str,
    timeout: float,
    *,
    check: Callable[[], None] | None = None,
    options: Mapping[str, Any] | None = None,
    brokers: int = 1,
) -> None:
    """Return once ``bootstrap`` answers a metadata request that lists ``brokers`` live brokers.

    Polls until ``timeout`` seconds have passed, then raises :class:`KafkaLauncherError`;
    ``check`` runs before each attempt and may raise to give up early. ``options``: aiokafka
    connection options (TLS, SASL) for a secured listener.
    """
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if check is not None:
            check()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise KafkaLauncherError(f"Kafka at {bootstrap} did not answer within {timeout:g}s")
        attempt = min(5.0, remaining)
        # a plain connect first: aiokafka logs an error for each refused bootstrap
        if await asyncio.to_thread(port_open, host.strip("[]"), int(port)) and (
            await _lists_brokers(bootstrap, attempt, options or {}, brokers)
        ):
            return
        await asyncio.sleep(min(POLL_SECONDS, remaining))


def bind_failure(log_file: Path, offset: int) -> tuple[tuple[str, int, str] | None, int]:
    """(host, port, reason) of a listener that could not bind, from ``log_file`` after
    ``offset``, and the offset to look from next (the start of the line not yet complete)."""
    try:
        with log_file.open("rb") as log:
            log.seek(offset)
            text = log.read()
    except FileNotFoundError:
        return None, offset
    complete = text.rfind(b"\n") + 1
    found = _BIND_FAILED.search(text, 0, complete)
    if found is None:
        return None, offset + complete
    host, port, reason = (group.decode(errors="replace") for group in found.groups())
    return (host, int(port), reason.strip()), offset


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _lists_brokers(
    bootstrap: str, seconds: float, options: Mapping[str, Any], brokers: int
) -> bool:
    admin = AIOKafkaAdminClient(
        **{**options, "bootstrap_servers": bootstrap},
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
    return len(cluster.get("brokers") or []) >= brokers


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A process that exited is not alive, reaped or not: our own child
    is reaped here; another's (a broker ``talkstream dev`` started, stopped by ``talkstream
    kafka stop``) stays a zombie until its parent reaps it, which signals do not end."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reaped now
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """``pid`` has exited and waits for its parent to reap it (Linux's ``/proc``; elsewhere,
    without one, a pid that answers signals is taken as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]  # the state follows "(command)"


def is_our_broker(pid: int, properties: Path) -> bool:
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone, or no /proc (macOS): trust the pid file
        return not Path("/proc/self").exists()
    return b"kafka.Kafka" in cmdline and os.fsencode(properties) in cmdline  # not a reused pid


def run_sync(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion from sync code, also when called inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # blocks the caller's loop meanwhile
        pool.submit(asyncio.run, coro).result()

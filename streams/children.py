"""The worker's children: its projector (``TALKSTREAM_PROJECTOR=process``) and its executors
(``TALKSTREAM_EXECUTORS=process``), each ``talkstream <name>`` in a process of its own, so that
their work does not share the worker's GIL. The worker starts, watches and stops each
(:class:`ChildProcess`); a child knows it is one by :data:`PARENT_ENV` and stops with the worker
however the worker ends (:func:`stop_signals`)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from streams.runtime import child_process

log = logging.getLogger(__name__)

PARENT_ENV = "TALKSTREAM_PARENT_WORKER"  # set for the worker's child: the worker's pid
PR_SET_PDEATHSIG = 1


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop this process. In the worker's child: SIGTERM alone (Ctrl-C in a
    terminal reaches the worker, which stops its child itself), and the kernel sends it when
    the worker ends, however it ends (SIGKILL included)."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None:
        return (signal.SIGTERM, signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the worker ended before the request took hold
        raise SystemExit(0)
    return (signal.SIGTERM,)


# the worker starts its child again when it exits: at once (at the watch's next
# second) if it had run this long, else after the pause before, doubled (the first, then up to
# the last): a child that fails at its start (a bug, a setting it cannot use) is started again
# a minute apart at most, an ERROR each time, where it was every second forever
CHILD_RAN_SECONDS = 60.0
CHILD_RESTART_FIRST_SECONDS = 1.0
CHILD_RESTART_MAX_SECONDS = 60.0


class ChildProcess:
    """The worker's projector or executors (``name``: ``talkstream <name>``) as a child
    process: started with the worker, started again if it exits while the worker runs (less
    and less often while it keeps exiting soon after its start: ``CHILD_RESTART_*``), stopped
    with the worker. ``command`` and ``clock``: what a test runs and measures it by."""

    def __init__(
        self,
        name: str,
        command: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._command = command or child_process(name)
        self._clock = clock
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._started = 0.0  # when the child was started (``clock``)
        self._pause = 0.0  # before it is started again, after its last exit
        self._due: float | None = None  # when the child that exited is started again

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def start(self) -> None:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self._child = subprocess.Popen(self._command, env=env)
        self._started, self._due = self._clock(), None

    async def watch(self) -> None:
        """A timer (every second): the child exited while the worker runs (a crash): start
        another, once its pause is over."""
        child = self._child
        if child is None or child.poll() is None or self._stopping:
            return
        now = self._clock()
        if self._due is None:  # its exit, seen now
            ran = now - self._started
            if ran >= CHILD_RAN_SECONDS:  # it had run: once, at once
                self._pause = 0.0
            else:  # it keeps exiting: 1 s, 2 s, 4 s, ... 60 s
                longer = max(self._pause * 2, CHILD_RESTART_FIRST_SECONDS)
                self._pause = min(longer, CHILD_RESTART_MAX_SECONDS)
            self._due = now + self._pause
            log.error(
                "the %s process exited (%s) after %.0f s; starting it again%s",
                self.name,
                child.returncode,
                ran,
                f" in {self._pause:.0f} s" if self._pause else "",
            )
        if now >= self._due:
            self.start()

    def terminate(self) -> None:
        """Tell the child to stop (SIGTERM) and go on: a worker starting to stop stops its
        projector alongside (each gives Kafka its own bounded time), and :meth:`stop` waits
        for it at exit."""
        self._stopping = True
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()

    def stop(self, timeout: float = 15.0) -> None:  # (the executors': their drain and more)
        self.terminate()
        child = self._child
        if child is None or child.poll() is not None:
            return
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

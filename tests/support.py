"""Helpers shared by the test tiers: polling with a deadline, free ports, seed-shaped params,
a child process's output line by line."""

from __future__ import annotations

import copy
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from bench.system import free_port as free_port
from bench.system import free_port_run as free_port_run

T = TypeVar("T")

CHECKOUT = Path(__file__).resolve().parents[1]


def wait_until(
    probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    last = poll(probe, timeout, interval)
    if last:
        return last
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or probe}: {last!r}")


def poll(probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T | None:
    """Poll ``probe`` until it returns something truthy, or for ``timeout`` seconds: what it
    returned last (for a scenario that tries again when something did not happen in time)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    return last


def log_excerpt(text: str, end: int = 3000, first_error: int = 3000) -> str:
    """A process's log as a failure prints it: its end, and before it, when the end does not
    hold it, its first traceback (with the line that introduced it): a process that crashed
    logs its stop at length after the error that began it (faust logs each child's stop, and a
    thread's crash is reported again as each parent stops), and the end alone showed only the
    stop's own errors, the original one gone with the test's temporary directory."""
    tail = text[-end:]
    start = text.find("Traceback (most recent call last):")
    if start < 0 or start >= len(text) - end:
        return tail
    start = text.rfind("\n", 0, max(start - 1, 0)) + 1  # the line that said it, before it
    first = text[start : start + first_error]
    return f"{first}\n[... the first error above; the log's end below ...]\n{tail}"


class Lines:
    """A process's stdout (or ``stream``, its stderr), line by line, read in a thread (so a
    wait has a deadline)."""

    def __init__(self, proc: subprocess.Popen[str], stream: IO[str] | None = None) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        stdout = stream or proc.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def until(self, wanted: str, timeout: float) -> None:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} in {timeout} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"stdout ended before {wanted!r}; printed: {self.seen}")
            self.seen.append(line)
            if wanted in line:
                return

    def rest(self, timeout: float) -> list[str]:
        """Everything up to the end of stdout."""
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return self.seen


def streams_process(
    *args: str,
    env: dict[str, str] | None = None,
    stderr: int = subprocess.DEVNULL,
    background: bool = False,
) -> tuple[subprocess.Popen[str], Lines]:
    """``python -m streams <args>`` from the checkout, as a user starts it, and its output
    (stdout; with ``stderr=subprocess.STDOUT`` both) read line by line. ``background``: as a
    script's ``cmd &`` starts it, SIGINT ignored."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", *args],
        env=env,
        cwd=CHECKOUT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        preexec_fn=ignore_sigint if background else None,
    )
    return proc, Lines(proc)


def streams_run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m streams <args>`` from the checkout to its end: exit code, stdout, stderr."""
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=env,
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # no command waits on the test run's own input
    )


def seed_params(
    email: str = "ada@example.com",
    *,
    site: str = "test-site",
    content: str = "Write a humorous verse for Ada, who bought a kite.",
    usage_limit: dict[str, str] | None = None,
    trigger: str | None = "true",
    talkable_key: str = "talkable-key-0001",
    openai_key: str = "sk-test-openai-0001",
    **extra: Any,
) -> dict[str, Any]:
    """A request shaped like the seed integration page's example."""
    body: dict[str, Any] = {
        "site": site,
        "email": email,
        "api_key": talkable_key,
        "openai": {
            "messages": [{"role": "user", "content": content}],
            "api_key": openai_key,
            "model": "gpt-3.5-turbo",
            "max_tokens": "150",
        },
    }
    if usage_limit is not None:
        body["usage_limit"] = usage_limit
    if trigger is not None:
        body["trigger_criteria"] = trigger
    body.update(extra)
    return body


def usage(
    amount: int, *, now: int, start: int | None = None, used: int = 0, duration: int = 3600
) -> dict[str, str]:
    """``usage_limit`` as Liquid renders it (every value a string)."""
    return {
        "amount": str(amount),
        "duration_in_seconds": str(duration),
        "start_time": str(now if start is None else start),
        "current_time": str(now),
        "current_usage_amount": str(used),
    }


def with_changes(tree: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``tree`` with ``a__b__0`` paths set (``...`` deletes the key)."""
    data = copy.deepcopy(tree)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = value
    return data


def scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def form_pairs(tree: dict[str, Any], style: str = "brackets") -> list[tuple[str, str]]:
    """Rails-style names: lists as ``a[b][]`` (brackets) or ``a[b][0]`` (indexed)."""

    def walk(name: str, value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                yield from walk(f"{name}[{key}]", item)
        elif isinstance(value, list) and value:
            for index, item in enumerate(value):
                yield from walk(f"{name}[]" if style == "brackets" else f"{name}[{index}]", item)
        else:
            yield name, scalar(value) if not isinstance(value, dict | list) else ""

    pairs: list[tuple[str, str]] = []
    for key, value in tree.items():
        pairs.extend(walk(str(key), value))
    return pairs

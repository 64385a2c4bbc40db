"""Helpers shared by the test tiers: polling with a deadline, free ports, seed-shaped params."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or probe}: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

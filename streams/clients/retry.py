"""One retry loop for both outside services (tenacity).

Retries only errors whose ``retriable`` is true, with exponential backoff and full jitter,
never sooner than the service's ``retry-after``; bounded in attempts and in total time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from streams.errors import UpstreamError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    total_deadline: float = 90.0
    base: float = 0.25
    cap: float = 10.0


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retriable


async def call_with_retries(
    policy: RetryPolicy, attempt: Callable[[], Awaitable[T]]
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds or gives up; returns (result, tries)."""
    backoff = wait_random_exponential(multiplier=policy.base, max=policy.cap)

    def wait(state: RetryCallState) -> float:
        delay = backoff(state)
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.cap))
        return delay

    retrying = AsyncRetrying(
        retry=retry_if_exception(_retriable),
        stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.total_deadline),
        wait=wait,
        reraise=True,
    )
    tries = 0
    try:
        async for try_ in retrying:
            with try_:
                tries += 1
                result = await attempt()
    except UpstreamError as exc:
        exc.tries = tries
        raise
    return result, tries


def parse_retry_after(headers: object) -> float | None:
    """``retry-after-ms`` (OpenAI) or ``retry-after`` in seconds; HTTP dates are ignored."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return None

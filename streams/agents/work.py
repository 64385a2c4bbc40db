"""What each executor does with one kind of command: the generator's OpenAI call and the
publisher's Talkable call, each as a :class:`~streams.upstream.scheduler.Job` for its target's
queue, and the result the ledger reads back. Whatever goes wrong in a call becomes a classified
failure with its reason (never a secret).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from models.events import (
    GenerateText,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    PublishCompletion,
)
from models.params import site_identity
from streams.clients.openai_chat import ChatClient, Completion, token_cost
from streams.clients.talkable import Publication, TalkableClient
from streams.codecs import decode
from streams.errors import QueueTimeout, TalkstreamError, UpstreamError
from streams.secrets import SecretBox, key_fingerprint
from streams.upstream.limits import Limits
from streams.upstream.scheduler import Job, Outcome

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
V = TypeVar("V")
# a generation that timed out this many times while its key answered other calls ends: each
# try may have been billed (a publication's retries cost nothing and are idempotent: they wait)
SLOW_GENERATION_TIMEOUTS = 3
Report = Callable[[Outcome[Any]], Awaitable[None]]


class Work(Generic[C]):
    """What one executor does with one kind of command: decode it, name its target, make its
    job (the call), and turn the outcome into the result the ledger reads."""

    model: type[C]
    stage: Literal["generating", "publishing"]  # the ledger's stage of its commands' requests

    def decode(self, raw: bytes | None) -> C:
        return decode(self.model, raw)

    def target(self, command: C) -> str:
        raise NotImplementedError

    def family(self, command: C) -> str:
        """The family of the command's target (its jobs'): an OpenAI key, whose organisation
        an answer may name; "" for a target of its own."""
        return ""

    def job(self, command: C, *, issued_s: float, origin: Any, report: Report) -> Job[Any]:
        raise NotImplementedError

    def result(self, command: C, outcome: Outcome[Any], now_ms: int) -> BaseModel:
        raise NotImplementedError


class Generate(Work[GenerateText]):
    model = GenerateText
    stage = "generating"

    def __init__(self, chat: ChatClient, secrets: SecretBox, max_text_bytes: int = 65536) -> None:
        self._chat = chat
        self._secrets = secrets
        self._max_text_bytes = max_text_bytes

    def target(self, command: GenerateText) -> str:
        """The key and the model: OpenAI limits each model of a key apart, and says the
        model's limits in its answers (one pace per key followed whichever model spoke last)."""
        return f"{self._key(command)}/{command.chat.model}"

    def family(self, command: GenerateText) -> str:
        return self._key(command)

    def _key(self, command: GenerateText) -> str:
        key_id = _key_id(self._secrets, command.openai_key_id, command.openai_api_key)
        return f"openai:{key_id or 'unknown'}"

    def job(
        self, command: GenerateText, *, issued_s: float, origin: Any, report: Report
    ) -> Job[Any]:
        async def call() -> tuple[Timed[Completion], Limits]:
            api_key = _opened(self._secrets, command.openai_api_key, "OpenAI key (openai.api_key)")
            started = time.monotonic()
            completion, limits = await _classified(self._chat.complete(command.chat, api_key))
            too_large = text_too_large(completion.text, self._max_text_bytes, limits)
            if too_large is not None:
                raise too_large
            return Timed(completion, _since(started)), limits

        return Job(
            key=command.request_id,
            attempt=command.attempt,
            scope=f"model:{command.chat.model}",
            cost=token_cost(command.chat),
            least=command.chat.max_tokens,  # OpenAI counts it whole against tokens a minute
            slow_after=SLOW_GENERATION_TIMEOUTS,
            family=self._key(command),  # a refusal of the key stops its every model's calls
            issued_s=issued_s,
            call=call,
            report=report,
            origin=origin,
            probe=command.redrive,
        )

    def result(self, command: GenerateText, outcome: Outcome[Any], now_ms: int) -> BaseModel:
        common = _reported(command, outcome, now_ms)
        if outcome.error is not None:
            return GenerationAttemptFailed(
                **common, **_failure(outcome.error), latency_ms=_failed_call_ms(outcome)
            )
        done: Timed[Completion] = _value(outcome)
        return GenerationAttemptSucceeded(
            **common,
            text=done.value.text,
            model=done.value.model,
            prompt_tokens=done.value.prompt_tokens,
            completion_tokens=done.value.completion_tokens,
            latency_ms=done.latency_ms,
            truncated=done.value.truncated,
        )


class Publish(Work[PublishCompletion]):
    model = PublishCompletion
    stage = "publishing"

    def __init__(self, talkable: TalkableClient, secrets: SecretBox) -> None:
        self._talkable = talkable
        self._secrets = secrets

    def target(self, command: PublishCompletion) -> str:
        """The site in any case (``Shop``, ``shop``: one site, one pace, one circuit, one
        refusal remembered); the call names it as the webhook typed it."""
        return f"talkable:{site_identity(command.site)}"

    def job(
        self, command: PublishCompletion, *, issued_s: float, origin: Any, report: Report
    ) -> Job[Any]:
        async def call() -> tuple[Publication, Limits]:
            api_key = _opened(self._secrets, command.talkable_api_key, "Talkable key (api_key)")
            return await _classified(self._talkable.publish(command, api_key))

        # a site is one target whatever key calls it; a refusal covers the key that was refused
        key_id = _key_id(self._secrets, command.talkable_key_id, command.talkable_api_key)
        return Job(
            key=command.request_id,
            attempt=command.attempt,
            scope="site",
            key_scope=f"key:{key_id}" if key_id else "key",
            cost=0,
            issued_s=issued_s,
            call=call,
            report=report,
            origin=origin,
            probe=command.redrive,
        )

    def result(self, command: PublishCompletion, outcome: Outcome[Any], now_ms: int) -> BaseModel:
        common = _reported(command, outcome, now_ms)
        if outcome.error is not None:
            return PublicationAttemptFailed(
                **common,
                **_failure(outcome.error),
                status=outcome.error.status,
                latency_ms=_failed_call_ms(outcome),
            )
        published: Publication = _value(outcome)
        return PublicationAttemptSucceeded(
            **common,
            site=command.site,
            redrive=command.redrive,
            duplicate=published.duplicate,
            latency_ms=_call_ms(outcome),
            event_number=published.event_number,
            landed_event_number=published.event_number or command.event_number,
        )


@dataclass(frozen=True)
class Timed(Generic[V]):
    value: V
    latency_ms: int


def _reported(
    command: GenerateText | PublishCompletion, outcome: Outcome[Any], now_ms: int
) -> dict[str, Any]:
    """What every result carries: whose attempt it was, when it ended, and what it cost."""
    return {
        "request_id": command.request_id,
        "person": command.person,
        "attempt": command.attempt,
        "at_ms": now_ms,
        "tries": outcome.tries,
        "waited_ms": int(outcome.waited_s * 1000),
    }


def _key_id(secrets: SecretBox, key_id: str, sealed: str) -> str:
    """The key's fingerprint as the command carries it; for a command from before commands
    carried it, made from the key ("" if it cannot be opened: the call fails with the reason)."""
    if not key_id:
        with contextlib.suppress(TalkstreamError):
            key_id = key_fingerprint(secrets.open(sealed))
    return key_id


def _value(outcome: Outcome[Any]) -> Any:
    assert outcome.value is not None, "a success carries its value"
    return outcome.value


def _failure(error: UpstreamError) -> dict[str, Any]:
    return {
        "error_class": error.reason,
        "error_message": str(error)[:500],
        "retriable": error.retriable,
        "waited_out": isinstance(error, QueueTimeout),
        "not_called": not error.called,
    }


def _opened(secrets: SecretBox, sealed: str, key: str) -> str:
    """The webhook's ``key``, opened; one no key of this worker opens fails its call, saying
    what to fix (it said "sealed secret cannot be opened with the configured keys" only: an
    operator who had given the ingress a new key, a compose ``export`` run again, was not
    told where to look)."""
    try:
        return secrets.open(sealed)
    except TalkstreamError:
        raise UpstreamError(
            f"the webhook's {key} cannot be opened: the ingress that took it sealed it with a "
            "key not among this worker's TALKSTREAM_SECRET_KEYS. Give every worker and "
            "ingress the same keys (when rotating, the old key after the new one), then "
            "redrive",
            reason="SealedKey",
            called=False,
        ) from None


async def _classified(call: Awaitable[V]) -> V:
    """Any exception of the call becomes a classified failure: nothing waits for a deadline
    because an error was only logged. A message is kept only where it is ours (no secret)."""
    try:
        return await call
    except UpstreamError:
        raise
    except TalkstreamError as exc:
        raise UpstreamError(str(exc), reason=type(exc).__name__) from None
    except Exception as exc:
        log.exception("unexpected error in an upstream call")
        raise UpstreamError(
            f"unexpected {type(exc).__name__} making the call", reason="InternalError"
        ) from None


def text_too_large(text: str, max_bytes: int, limits: Limits | None = None) -> UpstreamError | None:
    """A text larger than ``max_bytes`` in UTF-8: its request ends (no retry makes it
    smaller). The person's ledger entry holds the text of every publication in flight or
    parked, and is one Kafka record of at most 1 MiB: one larger stopped the worker, and every
    worker after it that read that person again."""
    size = len(text.encode("utf-8", "replace"))
    if size <= max_bytes:
        return None
    return UpstreamError(
        f"OpenAI's text is {size:,} bytes, more than TALKSTREAM_MAX_TEXT_BYTES ({max_bytes:,}):"
        " lower max_tokens",
        reason="TextTooLarge",
        limits=limits,
    )


def _failed_call_ms(outcome: Outcome[Any]) -> int:
    """A failed attempt's latency: its last call's time (a generation's from schema 12, a
    publication's from 13: it was 0, not measured), 0 when it made none (``not_called``: a
    refusal remembered, a key that cannot be opened, a request too large for its target; a
    wait that ended before any call)."""
    error = outcome.error
    if error is not None and not error.called:
        return 0
    return _call_ms(outcome)


def _call_ms(outcome: Outcome[Any]) -> int:
    """The attempt's last call's time, as the scheduler measured it (0: it made none)."""
    return 0 if outcome.call_s is None else round(outcome.call_s * 1000)


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

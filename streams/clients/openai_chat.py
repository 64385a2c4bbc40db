"""OpenAI Chat Completions adapter: one shared ``AsyncOpenAI``, per-request keys.

The SDK's own retries are off (``max_retries=0``); ours live in :mod:`streams.clients.retry`.
Retried: connection errors, timeouts, 408/409/429/5xx. Never: 400/401/403/404/422.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import openai
from openai import AsyncOpenAI

from models.events import ChatRequest
from streams.clients.retry import RetryPolicy, call_with_retries, parse_retry_after
from streams.errors import GenerationError

KEYED_CLIENTS = 256
RETRIABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_KEYLIKE = re.compile(r"(sk|key|Bearer)[-_ ]?[A-Za-z0-9*_\-]{6,}", re.IGNORECASE)


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    tries: int


class ChatClient:
    def __init__(self, base_url: str, timeout: float, policy: RetryPolicy) -> None:
        self._client = AsyncOpenAI(
            base_url=base_url, api_key="set-per-request", max_retries=0, timeout=timeout
        )
        self._policy = policy
        self._by_key: dict[str, AsyncOpenAI] = {}

    async def complete(self, chat: ChatRequest, api_key: str) -> Completion:
        client = self._for_key(api_key)

        async def attempt() -> Completion:
            try:
                response = await client.chat.completions.create(
                    model=chat.model,
                    messages=chat.messages,  # type: ignore[arg-type]
                    max_tokens=chat.max_tokens,
                    # every other param unchanged (the SDK refuses unknown keyword names)
                    extra_body=chat.extra or None,
                )
            except openai.APIStatusError as exc:
                raise GenerationError(
                    f"OpenAI answered {exc.status_code}: {scrub(exc.message, api_key)}",
                    status=exc.status_code,
                    retriable=exc.status_code in RETRIABLE_STATUSES,
                    retry_after=parse_retry_after(exc.response.headers),
                ) from None
            except openai.APITimeoutError:
                raise GenerationError("OpenAI timed out", retriable=True) from None
            except openai.APIConnectionError as exc:
                raise GenerationError(
                    f"OpenAI unreachable: {type(exc.__cause__ or exc).__name__}", retriable=True
                ) from None
            except openai.OpenAIError as exc:
                raise GenerationError(f"OpenAI client error: {scrub(str(exc), api_key)}") from None
            if not response.choices or response.choices[0].message.content is None:
                raise GenerationError("OpenAI returned no text", retriable=True)
            usage = response.usage
            return Completion(
                text=response.choices[0].message.content,
                model=response.model,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                tries=0,
            )

        completion, tries = await call_with_retries(self._policy, attempt)
        return Completion(**{**completion.__dict__, "tries": tries})

    def _for_key(self, api_key: str) -> AsyncOpenAI:
        """The shared client with this request's key; copies are kept per key (LRU), since
        building one per call is a measurable part of the generator's time."""
        client = self._by_key.pop(api_key, None)
        if client is None:
            client = self._client.with_options(api_key=api_key)
        self._by_key[api_key] = client  # most recently used last
        if len(self._by_key) > KEYED_CLIENTS:
            del self._by_key[next(iter(self._by_key))]
        return client

    async def close(self) -> None:
        self._by_key.clear()
        await self._client.close()


def scrub(message: str, secret: str) -> str:
    """Drop the key and anything that looks like one from an upstream message."""
    if secret:
        message = message.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", message)[:300]

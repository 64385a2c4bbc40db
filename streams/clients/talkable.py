"""Talkable API v2 adapter: the write-back of a generated text (DESIGN.md §2).

``POST {base}/origins/event`` with ``Authorization: Bearer <site api key>``. Event custom
properties attach to the person, where campaigns read them. A 400 "Duplicate entity" for our
own event number means an earlier attempt landed: success. 429/5xx/connection errors are
retried; any other 4xx is final.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from models.events import PublishCompletion
from streams.clients.openai_chat import scrub
from streams.clients.retry import RetryPolicy, call_with_retries, parse_retry_after
from streams.errors import PublishError

DUPLICATE_ENTITY = "duplicate entity"


@dataclass(frozen=True)
class Publication:
    duplicate: bool
    tries: int


class TalkableClient:
    def __init__(self, base_url: str, timeout: float, policy: RetryPolicy) -> None:
        self._url = base_url.rstrip("/") + "/origins/event"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._policy = policy
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def publish(self, command: PublishCompletion, api_key: str) -> Publication:
        body = {
            "site_slug": command.site,
            "type": "Event",
            "data": {
                "email": command.email,
                "event_category": command.event_category,
                "event_number": command.event_number,
                "subtotal": 0,
                "custom_properties": command.custom_properties,
            },
        }
        headers = {"Authorization": f"Bearer {api_key}"}

        async def attempt() -> bool:
            try:
                async with self._session().post(self._url, json=body, headers=headers) as resp:
                    status = resp.status
                    if 200 <= status < 300:
                        return False
                    message = await _error_message(resp)
                    retry_after = parse_retry_after(resp.headers)
            except TimeoutError:
                raise PublishError("Talkable timed out", retriable=True) from None
            except aiohttp.ClientError as exc:
                raise PublishError(
                    f"Talkable unreachable: {type(exc).__name__}", retriable=True
                ) from None
            if status == 400 and DUPLICATE_ENTITY in message.lower():
                return True
            raise PublishError(
                f"Talkable answered {status}: {scrub(message, api_key)}",
                status=status,
                retriable=status == 429 or status >= 500,
                retry_after=retry_after,
            )

        duplicate, tries = await call_with_retries(self._policy, attempt)
        return Publication(duplicate=duplicate, tries=tries)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


async def _error_message(response: aiohttp.ClientResponse) -> str:
    try:
        payload = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return response.reason or "error"
    if isinstance(payload, dict):
        return str(payload.get("error_message") or payload.get("message") or "error")
    return "error"

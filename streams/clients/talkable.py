"""Talkable API v2 adapter: the write-back of a generated text (DESIGN.md §2), one call.

``POST {base}/origins/event`` with ``Authorization: Bearer <site api key>``. Event custom
properties attach to the person, where campaigns read them. What an answer means, as data on
:class:`~streams.errors.PublishError` (waiting and retrying are the scheduler's):

    answer                                  reason          the scheduler
    2xx with a JSON object (Talkable's      (success)       reports it
        ``{"ok": true, ...}``)
    2xx with ``"ok": false`` (Talkable's    BadRequest      reports
        error envelope; "Duplicate entity"
        in it: as the 400 below)
    2xx whose body is not a JSON object     BadAnswer       asks again, ends it the third
        (HTML from a proxy, empty)                          time (no circuit)
    3xx (not followed: a base URL that      BadRequest      reports
        moved; the message says where to)
    404 with Talkable's envelope (no such   SiteNotFound    reports; refuses the site a
        ``site_slug``)                                      while
    404 / 405 that is not Talkable's        BadRequest      reports (the message names the
        envelope (a base URL without                        base URL to check)
        ``/api/v2``)
    400 (or 2xx ``"ok": false``)            written under   another request of the same
        "Duplicate entity", the request's   its other       id holds it (the same params,
        own number (``..-<request_id>``)    number          their person forgotten); with
                                                            no other number (an earlier
                                                            version's attempt), or that one
                                                            held too: (success), an earlier
                                                            attempt landed
    the same, a number the campaign gave    DuplicateEvent- reports (the text was not
                                            Number          written: another event has it)
    429                                     RateLimited     waits (retry-after)
    401 / 403                               Unauthorized /  reports; refuses the site's key
                                            Forbidden       a while
    any other 4xx (400, 422 "Validation     BadRequest      reports
        failed: ...")
    5xx, 408                                ServerError     waits (the circuit counts it)
    timeout / connection error (also        Timeout /       waits (the circuit counts it)
        while reading the body)             Unreachable
    a TLS certificate that does not         Certificate-    reports (verified again, it
        verify (self-signed, another        Error           fails again)
        host's, expired)
    a key that cannot be a header value     InvalidKey      reports (nothing was sent)

A refusal's message (401, 403, 404) says first what to do: the key and the site are the
webhook's, so a redrive sends them again. Messages never carry the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from models.events import PublishCompletion
from models.params import completion_event_number
from streams.clients.openai_chat import (
    certificate_error,
    certificate_failure,
    failure_name,
    scrub,
    shown_url,
)
from streams.errors import PublishError, status_error
from streams.upstream.limits import Limits, read_limits

DUPLICATE_ENTITY = "duplicate entity"


@dataclass(frozen=True)
class Publication:
    duplicate: bool
    event_number: str | None = None  # the number it landed under, when not the command's


class TalkableClient:
    def __init__(self, base_url: str, timeout: float, max_connections: int = 256) -> None:
        self._url = base_url.rstrip("/") + "/origins/event"
        self._shown = shown_url(base_url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._http = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._http

    async def publish(self, command: PublishCompletion, api_key: str) -> tuple[Publication, Limits]:
        """The command's event, under its number; if Talkable holds another request's event
        under the request's own default number, under ``other_event_number`` (one call more)."""
        publication, limits = await self._publish(command, command.event_number, api_key)
        if publication.duplicate and command.other_event_number:
            other = command.other_event_number
            publication, limits = await self._publish(command, other, api_key)
            return Publication(duplicate=publication.duplicate, event_number=other), limits
        return publication, limits

    async def _publish(
        self, command: PublishCompletion, number: str, api_key: str
    ) -> tuple[Publication, Limits]:
        body = {
            "site_slug": command.site,
            "type": "Event",
            "data": {
                "email": command.email,
                "event_category": command.event_category,
                "event_number": number,
                "subtotal": 0,
                "custom_properties": command.custom_properties,
            },
        }
        headers = {"Authorization": f"Bearer {api_key}"}
        try:
            # not followed: aiohttp would follow a 301/302 of this POST as a GET (no body), and
            # drop the key on the way to another origin (http → https), so a base URL Talkable
            # redirects would fail every write-back as "answered 404" or a refused key
            post = self._session().post(
                self._url, json=body, headers=headers, allow_redirects=False
            )
            async with post as resp:
                status = resp.status
                limits = read_limits(resp.headers, secret=api_key)
                payload = await _payload(resp)
                message = _error_message(status, payload, resp.reason)
                if 200 <= status < 300 and message is None:
                    # a JSON object: Talkable's {"ok": true, ...}, or an API like it that
                    # says less (its error envelope, "ok": false, is not a success)
                    if not isinstance(payload, dict):
                        raise _not_the_api(status, resp.content_type, limits)
                    return Publication(duplicate=False), limits
                message = message or "error"
                # what we add to Talkable's words, scrubbed of the key on its own: scrubbed
                # with them, a short key ("k", "test") cut our text ("no Tal[redacted]able")
                hint = ""
                if 300 <= status < 400:
                    moved = resp.headers.get("Location") or "nowhere said"
                    hint = (
                        f" (redirected to {scrub(moved, api_key)}: set "
                        "TALKSTREAM_TALKABLE_BASE_URL to where it points)"
                    )
                elif status in (404, 405) and not _envelope(payload):
                    # not Talkable's "site not found" (its JSON): no API at this path
                    hint = (
                        f" (no Talkable API at TALKSTREAM_TALKABLE_BASE_URL {self._shown}: it"
                        " ends in /api/v2, e.g. https://www.talkable.com/api/v2)"
                    )
        except TimeoutError:
            raise PublishError("Talkable timed out", reason="Timeout", retriable=True) from None
        except aiohttp.ClientError as exc:
            untrusted = certificate_failure(exc)
            if untrusted is not None:
                raise certificate_error(
                    PublishError, "Talkable", untrusted, self._shown, "TALKABLE", api_key
                ) from None
            raise PublishError(
                f"Talkable unreachable: {failure_name(exc)}", reason="Unreachable", retriable=True
            ) from None
        except ValueError:  # aiohttp refuses a header value (a key with control characters)
            raise PublishError(
                "the site's Talkable API key cannot be sent as a header value", reason="InvalidKey"
            ) from None
        if (status == 400 or 200 <= status < 300) and DUPLICATE_ENTITY in message.lower():
            # (a 2xx here is Talkable's error envelope, "ok": false, whose message says so: the
            # same answer as its 400, whatever the status it came with)
            # Talkable answers this only when the event it has under the number holds other
            # data (an identical one is a success). The request's own number is made from its
            # id: an earlier request of the same id (``other_event_number``, tried next), or an
            # earlier attempt of its own that wrote other data (an earlier version's); a number
            # the campaign gave may be another request's event, and then this text never landed.
            if number in (
                completion_event_number(None, command.request_id),
                command.other_event_number,
            ):
                return Publication(duplicate=True), limits
            raise PublishError(
                f"Talkable answered {status} Duplicate entity: it has an event with this request's"
                " event_number and other data (another request's: the campaign gives the same"
                " event_number to more than one request), so the text was not written",
                reason="DuplicateEventNumber",
                status=status,
                limits=limits,
            )
        shown = scrub(message, api_key) + hint
        text = f"Talkable answered {status}: {shown}"
        if 200 <= status < 300:  # "ok": false: Talkable's error envelope, whatever the status
            raise PublishError(text, reason="BadRequest", status=status, limits=limits)
        if status in (401, 403):
            # the key is the webhook's, as the campaign renders it: a redrive sends it again.
            # What to do comes first: a long message is cut at its end
            what = (
                "it refuses the site's API key, the webhook's api_key: put the key of the"
                " site's Settings > API Integration in the campaign, then resend its webhooks;"
                " a redrive sends the same key"
                if _envelope(payload)
                else "a page, not Talkable's JSON: a proxy or a firewall before Talkable refuses"
                " the call, or Talkable the webhook's api_key; check what stands between,"
                " then the key"
            )
            raise PublishError(
                f"Talkable answered {status} ({what}): {shown}",
                reason="Unauthorized" if status == 401 else "Forbidden",
                status=status,
                refuses="key",
                limits=limits,
            )
        if status == 404 and _envelope(payload):
            # Talkable's own 404 (its JSON): the only item an event names is its site. No
            # request of the site can land, so the site is refused a while, not called again
            # for each of them
            raise PublishError(
                f"Talkable answered 404 (it has no site `{command.site}`, the webhook's site:"
                " set the campaign's site to the site's Site ID in Talkable, then resend its"
                f" webhooks; a redrive sends the same site): {shown}",
                reason="SiteNotFound",
                status=status,
                refuses="site",
                limits=limits,
            )
        # a 408: Talkable stopped waiting for the request, nothing was written: asked again
        raise status_error(PublishError, status, text, limits, outage=(408,))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


_NOT_JSON = object()


async def _payload(response: aiohttp.ClientResponse) -> Any:
    """The answer's JSON (None for an empty body), or ``_NOT_JSON``. A body cut off while it
    is read (the connection reset) raises: an outage, not an answer."""
    try:
        return await response.json(content_type=None)
    except ValueError:
        return _NOT_JSON


def _envelope(payload: Any) -> bool:
    """Whether the answer is Talkable's error envelope, ``{"ok": false, ...}``."""
    return isinstance(payload, dict) and payload.get("ok") is False


def _error_message(status: int, payload: Any, reason: str | None) -> str | None:
    """What went wrong, or None for a success: a 2xx whose body is not Talkable's error
    envelope (``{"ok": false, "error_message": ...}``)."""
    success = 200 <= status < 300
    if success and not (isinstance(payload, dict) and payload.get("ok") is False):
        return None
    if isinstance(payload, dict):  # Talkable's envelope; a framework's or a proxy's JSON
        found = payload.get("error_message") or payload.get("message") or payload.get("error")
        return str(found or "error")
    # a page, no body at all (a load balancer's 503), JSON that is not an object: the status's
    # own words ("Service Unavailable"), not "error"
    return "error" if success else reason or "error"


def _not_the_api(status: int, content_type: str, limits: Limits) -> PublishError:
    """A 2xx whose body is not Talkable's JSON (an HTML page, nothing at all): a proxy's or a
    portal's answer, or a base URL that is not the API. Nothing says the event landed, so it
    is not a success; asked again (idempotent), the third such answer ends the request."""
    return PublishError(
        f"Talkable answered {status} with a body that is not its API's JSON"
        f" ({content_type or 'no content type'}): a proxy's page, or"
        " TALKSTREAM_TALKABLE_BASE_URL not pointing at the API",
        reason="BadAnswer",
        status=status,
        retriable=True,
        limits=limits,
        answered=True,
    )

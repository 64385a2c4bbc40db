"""A stand-in for Talkable's API v2 (base URL ``http://host:port/api/v2``).

Implements what talkstream uses, in the shapes of Talkable's published OpenAPI spec:

- ``POST /api/v2/origins/event`` ``{site_slug, type?: "Event", data: {email, event_category,
  event_number, subtotal, custom_properties?, ...}}`` → 201 ``{"ok": true, "result": {"origin":
  {...}, "offer": null}}``. The same ``event_number`` for the site again with identical data →
  200 with the original result; with different data → 400 ``Duplicate entity: ...`` (or
  ``duplicate_status``: 200 imitates an API that says it in the body only). An event's
  custom properties are merged into the person (site + email).
- ``PUT /api/v2/people/{person_slug}`` ``{site_slug, data: {custom_properties?, ...}}`` → 200,
  creating the person if needed; ``GET /api/v2/people/{person_slug}?site_slug=`` → 200 or 400.

Errors use Talkable's envelope ``{"ok": false, "error_message": "..."}``. Faults come from a
mutable :class:`TalkableStandinConfig`, applied in this order: ``down``/``down_until`` (503) →
``site_rate_limits`` (429 with Retry-After) → ``latency_seconds`` → ``fail_next`` → ``hang_every``
→ ``fail_status_every`` → ``unknown_sites`` (404) → auth → validation.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from streams.dev.standin_common import (
    JSON,
    CallLog,
    StandinHandle,
    add_control_routes,
    bearer_key,
    common_faults,
    every,
    key_tail,
    new_app,
    read_json,
    run_blocking,
    start,
)

logger = logging.getLogger(__name__)

DUPLICATE = (
    "Duplicate entity: Talkable already has existing Event with the same event_number"
    " but different data"
)
UNKNOWN_SITE = "No site found by `site_slug`."  # (the wording of Talkable's other 404s/400s)
KEPT_EVENTS = 100_000  # events (and their answers for repeats) a stand-in keeps, the newest
REQUIRED_EVENT_FIELDS = ("email", "event_category", "event_number", "subtotal")
ORIGIN_OPTIONAL_FIELDS = (
    "customer_id", "ip_address", "segment1", "segment2", "segment3", "utm_campaign",
    "utm_content", "utm_medium", "utm_source", "utm_term",
)  # fmt: skip
PERSON_FIELDS = (
    "first_name", "last_name", "email", "phone_number", "username", "customer_id",
    "identifier_hash", "custom_properties", "gated_param_subscribed", "unsubscribed",
    "unsubscribed_at",
)  # fmt: skip


@dataclass
class TalkableStandinConfig:
    api_keys: dict[str, str] | None = None  # site_slug → API key; None accepts any Bearer key
    latency_seconds: float = 0.0
    fail_status_every: int = 0  # answer fail_status to every N-th call; 0 = off
    fail_status: int = 503
    fail_next: list[int] = field(default_factory=list)  # statuses for the next calls, FIFO
    retry_after: str = "1"  # Retry-After (seconds) on injected 429/503
    down: bool = False  # 503 to every API call while set
    down_until: float | None = None  # unix time; 503 to every API call until then
    hang_every: int = 0
    hang_seconds: float = 600.0
    # calls per second each site may make (a bucket holding one second's worth); over it: 429
    # with Retry-After, as Talkable asks clients to back off. Sites not listed: unlimited.
    site_rate_limits: dict[str, float] = field(default_factory=dict)
    # site slugs Talkable does not know: 404 with its envelope, whatever the key (a campaign
    # whose `site` is not its site's Site ID)
    unknown_sites: list[str] = field(default_factory=list)
    # the status of "Duplicate entity" (an event number held with other data): Talkable's
    # reference gives 400; a 2xx says it in the envelope only ("ok": false)
    duplicate_status: int = 400


@dataclass
class _State:
    config: TalkableStandinConfig
    calls: CallLog
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # site → level, at

    def over_limit(self, site: Any) -> float:
        """0 if the site's call fits its rate, else the seconds until one would."""
        rate = self.config.site_rate_limits.get(str(site))
        if not rate:
            return 0.0
        now = time.monotonic()
        level, at = self.buckets.get(str(site), (max(rate, 1.0), now))
        level = min(max(rate, 1.0), level + (now - at) * rate)
        if level >= 1:
            self.buckets[str(site)] = (level - 1, now)
            return 0.0
        self.buckets[str(site)] = (level, now)
        return (1 - level) / rate

    # (site, event_number) → the event's data and answer, the newest KEPT_EVENTS of them: a
    # stand-in left running (`make dev`) held every event it was ever sent (2 MB a minute
    # under a soak's load); Talkable keeps them all, so a repeat of an event older than these
    # is created again here where Talkable would answer it as a duplicate
    origins: collections.OrderedDict[tuple[str, str], JSON] = field(
        default_factory=collections.OrderedDict
    )
    events: collections.deque[JSON] = field(
        default_factory=lambda: collections.deque(maxlen=KEPT_EVENTS)
    )  # the newest KEPT_EVENTS events created (GET /_events)
    people: dict[tuple[str, str], JSON] = field(default_factory=dict)  # (site, email)
    created: int = 0  # events created since the last reset: the next origin's id

    def reset_data(self) -> None:
        self.origins.clear()
        self.events.clear()
        self.people.clear()
        self.created = 0

    def remember(self, site: str, event_number: str, origin: JSON) -> None:
        self.origins[(site, event_number)] = origin
        while len(self.origins) > (self.events.maxlen or KEPT_EVENTS):
            self.origins.popitem(last=False)


STATE = web.AppKey("talkable_standin", _State)
Handler = Callable[[web.Request, _State, Any], Awaitable[web.Response]]


def _fail(status: int, message: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    body = {"ok": False, "error_message": message}
    return web.json_response(body, status=status, headers=headers)


def _ok(result: JSON, status: int = 200) -> web.Response:
    return web.json_response({"ok": True, "result": result}, status=status)


def _status_error(status: int, config: TalkableStandinConfig) -> web.Response:
    messages = {429: "Too many requests", 503: "Service unavailable", 401: "Unauthorized"}
    retry_after = config.retry_after if status in (429, 503) else None
    return _fail(status, messages.get(status, f"Injected failure {status}"), retry_after)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_person(email: str) -> JSON:
    person: JSON = dict.fromkeys(("first_name", "last_name", "customer_id", "username"))
    person.update(phone_number=None, subscribed_at=None, opted_in_at=None, unsubscribed_at=None)
    person.update(email=email, custom_properties={}, sub_choice=False, events_count=0)
    return person


def _find_person(state: _State, site: str, slug: str) -> JSON | None:
    person = state.people.get((site, slug.lower()))
    if person is not None:
        return person
    alt = ("customer_id", "username", "phone_number")
    matches = (p for (s, _), p in state.people.items() if s == site)
    return next((p for p in matches if slug in (p[f] for f in alt)), None)


def _validate_event(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if not body.get("site_slug") or not isinstance(body["site_slug"], str):
        return "`site_slug` is required"
    if body.get("type", "Event") != "Event":
        return '`type` must be within ["Event"]'
    data = body.get("data")
    if not isinstance(data, dict):
        return "`data` is required"
    for name in REQUIRED_EVENT_FIELDS:
        if data.get(name) in (None, ""):
            return f"`{name}` is required"
    email = data["email"]
    if not isinstance(email, str) or "@" not in email.strip("@"):
        return "Email isn't valid"
    if not isinstance(data["event_number"], str | int) or isinstance(data["event_number"], bool):
        return "`event_number` is invalid"
    try:
        float(data["subtotal"])
    except (TypeError, ValueError):
        return "`subtotal` is invalid"
    props = data.get("custom_properties", {})
    if not isinstance(props, dict) or any(isinstance(v, dict | list) for v in props.values()):
        return "`custom_properties` must be an object of scalar values"
    return None


async def create_event(request: web.Request, state: _State, body: Any) -> web.Response:
    invalid = _validate_event(body)
    if invalid is not None:
        return _fail(400, invalid)
    site, data = body["site_slug"], body["data"]
    event_number = str(data["event_number"])
    existing = state.origins.get((site, event_number))
    if existing is not None:
        if existing["data"] == data:
            return _ok(existing["result"])  # an identical retry: answered, not created again
        return _fail(state.config.duplicate_status, DUPLICATE)
    origin: JSON = {name: data.get(name) for name in ORIGIN_OPTIONAL_FIELDS}
    state.created += 1
    origin.update(id=state.created, type="Event", email=data["email"])
    origin.update(event_category=data["event_category"], event_number=event_number)
    origin.update(subtotal=float(data["subtotal"]), refunded_at=None, coupon_code=None)
    origin.update(partially_refunded=False, refund_subtotal=None)
    result: JSON = {"origin": origin, "offer": None}
    state.remember(site, event_number, {"data": data, "result": result})
    props = dict(data.get("custom_properties", {}))
    person = state.people.setdefault((site, data["email"].lower()), _new_person(data["email"]))
    person["custom_properties"].update(props)
    person["events_count"] += 1
    summary = {k: origin[k] for k in ("email", "event_category", "event_number", "subtotal")}
    state.events.append(
        {"site_slug": site, "origin_id": origin["id"], **summary, "custom_properties": props}
    )
    return _ok(result, status=201)


async def update_person(request: web.Request, state: _State, body: Any) -> web.Response:
    if not isinstance(body, dict) or not isinstance(body.get("site_slug"), str):
        return _fail(400, "`site_slug` is required")
    data = body.get("data")
    if not isinstance(data, dict):
        return _fail(400, "`data` is required")
    unknown = sorted(set(data) - set(PERSON_FIELDS))
    if unknown:
        return _fail(400, f"found unpermitted parameter: :{unknown[0]}")
    props = data.get("custom_properties", {})
    if not isinstance(props, dict):
        return _fail(400, "`custom_properties` must be an object")
    site, slug = body["site_slug"], request.match_info["person_slug"]
    person = _find_person(state, site, slug)
    if person is None:
        person = state.people.setdefault((site, slug.lower()), _new_person(slug))
    for name, value in data.items():
        if name == "custom_properties":
            person["custom_properties"].update(props)
        elif name == "gated_param_subscribed":
            person["sub_choice"] = bool(value)
        elif name == "unsubscribed":
            person["unsubscribed_at"] = _now_iso() if value else None
        elif name not in ("email", "identifier_hash"):
            person[name] = value
    return _ok({"person": person})


async def find_person(request: web.Request, state: _State, body: Any) -> web.Response:
    site = request.query.get("site_slug")
    if not site:
        return _fail(400, "`site_slug` is required")
    person = _find_person(state, site, request.match_info["person_slug"])
    if person is None:
        return _fail(400, "No person found by `person_slug`.")
    return _ok({"person": person})


async def _faults(app: web.Application, rec: JSON) -> web.Response | None:
    config = app[STATE].config
    if config.down or (config.down_until is not None and time.time() < config.down_until):
        rec["fault"] = "down"
        return _status_error(503, config)
    wait = app[STATE].over_limit(rec.get("site_slug"))
    if wait:
        rec["fault"] = "site_limit"
        return _fail(429, "Too many requests", str(max(1, math.ceil(wait))))
    injected = await common_faults(app, config, rec, lambda s: _status_error(s, config))
    if injected is not None:
        return injected
    if every(config.fail_status_every, rec["n"]):
        rec["fault"] = "fail_status"
        return _status_error(config.fail_status, config)
    return None


def _authorized(config: TalkableStandinConfig, key: str | None, site: Any) -> bool:
    if key is None:
        return False
    return config.api_keys is None or (site in config.api_keys and config.api_keys[site] == key)


def _api(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap an API handler with recording, fault injection and Bearer auth."""

    async def wrapped(request: web.Request) -> web.Response:
        state = request.app[STATE]
        body = await read_json(request) if request.method in ("POST", "PUT") else None
        fields = body if isinstance(body, dict) else {}
        raw_data = fields.get("data")
        data: JSON = raw_data if isinstance(raw_data, dict) else {}
        key = bearer_key(request)
        site = fields.get("site_slug", request.query.get("site_slug"))
        rec = state.calls.start(
            method=request.method,
            path=request.path,
            site_slug=site,
            email=data.get("email", request.match_info.get("person_slug")),
            event_category=data.get("event_category"),
            event_number=data.get("event_number"),
            custom_properties=data.get("custom_properties"),
            key_tail=key_tail(key),
        )
        response = await _faults(request.app, rec)
        if response is None and site in state.config.unknown_sites:
            rec["fault"] = "unknown_site"
            response = _fail(404, UNKNOWN_SITE)
        if response is None and not _authorized(state.config, key, site):
            rec["fault"] = "unauthorized"
            response = _fail(401, "Unauthorized: invalid or missing API key")
        if response is None:
            response = await handler(request, state, body)
        state.calls.finish(rec, response.status)
        logger.debug(
            "talkable call n=%s status=%s fault=%s", rec["n"], response.status, rec["fault"]
        )
        return response

    return wrapped


async def _get_events(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].events))


async def _delete_events(request: web.Request) -> web.Response:
    request.app[STATE].reset_data()
    return web.json_response({"ok": True})


def build_app(config: TalkableStandinConfig | None = None) -> web.Application:
    state = _State(config or TalkableStandinConfig(), CallLog())
    app = new_app()
    app[STATE] = state
    app.router.add_post("/api/v2/origins/event", _api(create_event))
    app.router.add_put("/api/v2/people/{person_slug}", _api(update_person))
    app.router.add_get("/api/v2/people/{person_slug}", _api(find_person))
    app.router.add_get("/_events", _get_events)
    app.router.add_delete("/_events", _delete_events)
    statuses = frozenset({"fail_next", "fail_status", "duplicate_status"})
    add_control_routes(app, state.config, state.calls, frozenset({"api_keys"}), statuses)
    return app


async def serve(
    config: TalkableStandinConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> StandinHandle[TalkableStandinConfig]:
    """Start on a real socket; ``handle.url`` (``.../api/v2``) is the client's base URL."""
    app = build_app(config)
    state = app[STATE]
    return await start(app, state.config, state.calls, host, port, "/api/v2")


def events(handle: StandinHandle[TalkableStandinConfig]) -> list[JSON]:
    """The accepted events of an in-process stand-in (same as ``GET /_events``)."""
    return list(handle.app[STATE].events)


def run(
    host: str = "127.0.0.1",
    port: int = 8082,
    config: TalkableStandinConfig | None = None,
    on_ready: Callable[[StandinHandle[TalkableStandinConfig]], None] | None = None,
) -> None:
    """Serve until interrupted (the ``talkstream standin talkable`` command)."""
    run_blocking(lambda: serve(config, host, port), on_ready)

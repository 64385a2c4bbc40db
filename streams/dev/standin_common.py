"""Shared plumbing of the stand-in servers: call log, fault schedule, control routes, runners.

Each stand-in keeps a mutable dataclass config (changed in-process by tests, or over HTTP with
``POST /_control``) and a :class:`CallLog`. The control routes live at the server root, outside
the API prefix: ``GET|POST /_control``, ``GET|DELETE /_calls``, ``GET /_stats``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

from streams import heap

logger = logging.getLogger(__name__)

C = TypeVar("C")
JSON = dict[str, Any]

CLOSING = web.AppKey("standin_closing", asyncio.Event)


def key_tail(key: str | None) -> str | None:
    """The last 4 characters of a key (masked entirely when the key is short); never more."""
    if key is None:
        return None
    return key[-4:] if len(key) >= 8 else "****"


def bearer_key(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None if absent or empty."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def every(n: int, call_no: int) -> bool:
    """True for every n-th call (n <= 0 means never)."""
    return n > 0 and call_no % n == 0


def fraction_hit(fraction: float, call_no: int) -> bool:
    """Deterministically hit ``fraction`` of calls, spread evenly (0.5 → calls 2, 4, 6, ...)."""
    if fraction <= 0:
        return False
    return math.floor(call_no * fraction + 1e-9) > math.floor((call_no - 1) * fraction + 1e-9)


class CallLog:
    """Every API call in arrival order (bounded), with the counters driving the fault schedule:
    every call's (``n``), and those of the calls that reached a stage of it (:meth:`reach`)."""

    def __init__(self, max_records: int = 100_000) -> None:
        self.records: collections.deque[JSON] = collections.deque(maxlen=max_records)
        self.count = 0
        self.reached: collections.Counter[str] = collections.Counter()
        self.by_status: collections.Counter[str] = collections.Counter()
        self.by_fault: collections.Counter[str] = collections.Counter()

    def start(self, **fields: Any) -> JSON:
        self.count += 1
        record: JSON = {
            "n": self.count,
            "at": time.time(),
            **fields,
            "status": None,
            "fault": None,
        }
        self.records.append(record)
        return record

    def reach(self, stage: str) -> int:
        """This call's number among the calls that reached ``stage`` of the fault schedule:
        those no fault before it answered."""
        self.reached[stage] += 1
        return self.reached[stage]

    def finish(self, record: JSON, status: int) -> None:
        record["status"] = status
        self.by_status[str(status)] += 1
        if record["fault"]:
            self.by_fault[str(record["fault"])] += 1

    def reset(self) -> None:
        self.records.clear()
        self.count = 0
        self.reached.clear()
        self.by_status.clear()
        self.by_fault.clear()

    def stats(self) -> JSON:
        done = sum(self.by_status.values())
        return {
            "calls": self.count,
            "in_flight": self.count - done,
            "by_status": dict(self.by_status),
            "by_fault": dict(self.by_fault),
        }


async def pause(app: web.Application, seconds: float) -> bool:
    """Sleep ``seconds`` (simulated latency or a hang); True if cut short by server shutdown."""
    if seconds <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(app[CLOSING].wait(), seconds)
        return True
    return False


class FaultConfig(Protocol):
    latency_seconds: float
    fail_next: list[int]
    hang_every: int
    hang_seconds: float


async def common_faults(
    app: web.Application,
    config: FaultConfig,
    record: JSON,
    status_error: Callable[[int], web.Response],
) -> web.Response | None:
    """Latency, then the ``fail_next`` queue, then ``hang_every``: the faults both share."""
    await pause(app, config.latency_seconds)
    if config.fail_next:
        record["fault"] = "fail_next"
        return status_error(config.fail_next.pop(0))
    if every(config.hang_every, record["n"]):
        record["fault"] = "hang"
        if await pause(app, config.hang_seconds):
            return status_error(503)  # the server is shutting down
    return None


async def read_json(request: web.Request) -> Any:
    """The parsed JSON body, or None when the body is missing or not JSON."""
    try:
        return json.loads(await request.read() or b"null")
    except ValueError:
        return None


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)))
    if origin in (set, list) and isinstance(value, list):
        return origin(_coerce(v, args[0]) for v in value)
    if origin is dict and isinstance(value, dict):
        return {str(k): _coerce(v, args[1]) for k, v in value.items()}
    if origin is typing.Literal:
        if value in args:
            return value
        other = "a string not one of them" if isinstance(value, str) else value_kind(value)
        raise ValueError(f"expected one of {list(args)}, got {other}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        # every number of a stand-in's config is a duration, a count, a rate or a fraction:
        # a negative latency (or NaN, which JSON from Python may carry) was taken, and ended
        # as a stand-in that answered at once, or a 500 at the next call
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a number, 0 or more, got {value_kind(value)}")
        return float(value)
    if hint is int and type(value) is int and value < 0:
        raise ValueError(f"expected a whole number, 0 or more, got {value_kind(value)}")
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ValueError(f"expected {_expected(hint)}, got {value_kind(value)}")


def value_kind(value: Any) -> str:
    """What a refused value is, never the value: a knob may hold a key (``unauthorized_keys``,
    ``api_keys``), and a 400 that echoed what was sent put it in a client's log."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return "a number that is not finite"
        if value < 0:
            return "a negative number"
        return "a fraction" if value != int(value) else "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


# what a knob of each type takes, as a 400 says it (it said "expected <class 'float'>")
_EXPECTED = {
    float: "a number, 0 or more",
    int: "a whole number, 0 or more",
    str: "a string",
    bool: "true or false",
}


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (list, set):
        return "a list"
    if origin is dict:
        return "an object"
    return _EXPECTED.get(hint, str(hint))


class ControlRefused(ValueError):
    """A ``POST /_control`` the stand-in does not take: ``field`` names the setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def apply_updates(
    config: Any,
    updates: JSON,
    statuses: frozenset[str] = frozenset(),
    rates: frozenset[str] = frozenset(),
) -> None:
    """Update fields of a dataclass config from JSON values; :class:`ControlRefused` on
    unknown or bad fields, and nothing updated. Fields in ``statuses`` hold HTTP statuses
    (one, or a list), 100 to 599; fields in ``rates`` hold rates (one, or a mapping of them),
    above 0: a rate of 0 divided by zero at the next call (a 500 of the stand-in's own)."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    coerced: JSON = {}
    for name, value in updates.items():
        if name not in names:
            known = ", ".join(sorted(names))
            raise ControlRefused(name, f"unknown config field {name!r} (it takes {known})")
        try:
            coerced[name] = _coerce(value, hints[name])
            if name in statuses:
                _statuses(coerced[name])
            if name in rates:
                _rates(coerced[name])
        except (ValueError, IndexError, StopIteration) as exc:
            raise ControlRefused(name, f"bad value for {name!r}: {exc}") from exc
    for name, value in coerced.items():
        setattr(config, name, value)


def _rates(value: Any) -> None:
    for rate in _numbers(value):
        if not rate > 0:
            raise ValueError("expected a rate above 0, got 0")


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return [value]


def _statuses(value: Any) -> None:
    for status in value if isinstance(value, list) else [value]:
        if not 100 <= status <= 599:
            raise ValueError("expected an HTTP status, 100 to 599, got a number outside it")


def config_view(config: Any, secret_fields: frozenset[str]) -> JSON:
    """The config as JSON, with keys in ``secret_fields`` reduced to their last 4 characters."""
    view: JSON = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in secret_fields and isinstance(value, dict):
            value = {  # keyed by a secret (limits per key), or mapping to one (keys per site)
                # or to several (keys per organisation)
                (key_tail(k) if not isinstance(v, str | set | list) else k): (
                    key_tail(v)
                    if isinstance(v, str)
                    else sorted(str(key_tail(x)) for x in v)
                    if isinstance(v, set | list)
                    else v
                )
                for k, v in value.items()
            }
        elif f.name in secret_fields and isinstance(value, set | list):
            value = sorted(str(key_tail(v)) for v in value)
        elif isinstance(value, set):
            value = sorted(value)
        view[f.name] = value
    return view


def add_control_routes(
    app: web.Application,
    config: Any,
    calls: CallLog,
    secret_fields: frozenset[str],
    statuses: frozenset[str] = frozenset(),
    rates: frozenset[str] = frozenset(),
) -> None:
    """``GET|POST /_control``, ``GET|DELETE /_calls``, ``GET /_stats``. A setting refused is
    a 400 ``{"error": ..., "field": NAME}`` (``statuses``: the fields holding HTTP statuses;
    ``rates``: those holding rates, above 0)."""

    async def get_control(_: web.Request) -> web.Response:
        return web.json_response(config_view(config, secret_fields))

    async def post_control(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        try:
            apply_updates(config, body, statuses, rates)
        except ControlRefused as exc:
            return web.json_response({"error": str(exc), "field": exc.field}, status=400)
        logger.info("standin reconfigured fields=%s", sorted(body))
        return web.json_response(config_view(config, secret_fields))

    async def get_calls(_: web.Request) -> web.Response:
        return web.json_response(list(calls.records))

    async def delete_calls(_: web.Request) -> web.Response:
        calls.reset()
        return web.json_response({"ok": True})

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(calls.stats())

    app.router.add_get("/_control", get_control)
    app.router.add_post("/_control", post_control)
    app.router.add_get("/_calls", get_calls)
    app.router.add_delete("/_calls", delete_calls)
    app.router.add_get("/_stats", get_stats)


def new_app() -> web.Application:
    app = web.Application()
    app[CLOSING] = asyncio.Event()
    return app


@dataclass
class StandinHandle(Generic[C]):
    """A running stand-in: ``url`` is the API base URL a client is configured with."""

    url: str
    root_url: str
    port: int
    config: C
    calls: CallLog
    app: web.Application
    _runner: web.AppRunner

    async def close(self) -> None:
        self.app[CLOSING].set()  # release hanging handlers so shutdown is quick
        await self._runner.cleanup()


async def start(
    app: web.Application, config: C, calls: CallLog, host: str, port: int, base_path: str
) -> StandinHandle[C]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = int(runner.addresses[0][1])
    root = f"http://{host}:{bound_port}"
    logger.info("standin listening url=%s%s", root, base_path)
    return StandinHandle(root + base_path, root, bound_port, config, calls, app, runner)


def run_blocking(
    serve: Callable[[], typing.Awaitable[StandinHandle[C]]],
    on_ready: Callable[[StandinHandle[C]], None] | None = None,
) -> None:
    """Run a stand-in until SIGINT/SIGTERM."""

    async def main() -> None:
        handle = await serve()
        # built: collected as talkstream's processes are (a stand-in of the benchmark spent
        # 40% of its CPU in collections, on the host's two cores beside the pipeline)
        heap.settle()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            if on_ready is not None:
                on_ready(handle)
            await stop.wait()
        finally:
            await handle.close()

    asyncio.run(main())

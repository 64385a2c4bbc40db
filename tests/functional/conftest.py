"""The functional tier's ingress: the real aiohttp app, served in-process on a loopback port,
producing into an in-memory :class:`RecordingSink` instead of Kafka.

Settings are built from explicit values only (:class:`ExplicitSettings` ignores the
environment), so a developer's ``TALKSTREAM_*`` variables cannot change what a test sees. The
encoders below turn one params tree into each body shape Talkable sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from models.events import RequestReceived
from streams.codecs import decode
from streams.ingress import PATH, AccessLogger, build_ingress
from streams.refusals import AppRunner
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.support import form_pairs

# Fixed Fernet key: a sealed value must open with the box the test holds.
FERNET_KEY = "x8rJb7tKx3vYbD0cJ1Zl5f0wT3m2Kq9hV6sN4pR8uAE="
APP_ID = "functest"
TALKABLE_KEY = "tk_live_FUNCTIONAL_talkable_7f3a91"
OPENAI_KEY = "sk-FUNCTIONAL-openai-9c1e42"
WEBHOOK_KEY = "whk_FUNCTIONAL_webhook_55d0"
SIGNED_SITE = "signed-store"
SITE_KEY = "site-security-key-FUNCTIONAL-b71c"
SECRETS = (TALKABLE_KEY, OPENAI_KEY, WEBHOOK_KEY, SITE_KEY)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


class ExplicitSettings(Settings):
    """:class:`Settings` from the values given here and the defaults, never the environment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def make_settings(data_dir: Path, **values: Any) -> Settings:
    return ExplicitSettings(secret_keys=FERNET_KEY, data_dir=data_dir, app_id=APP_ID, **values)


def secret_box() -> SecretBox:
    return SecretBox([FERNET_KEY.encode()])


# --- the Kafka stand-in ---------------------------------------------------------------------


class Produced(NamedTuple):
    topic: str
    key: bytes
    value: bytes


@dataclass
class RecordingSink:
    """Remembers every acknowledged write; while ``outage`` is set, refuses like a down broker."""

    produced: list[Produced] = field(default_factory=list)
    outage: Exception | None = None  # BrokerUnavailable; anything else is a bug
    closed: bool = False

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.closed:
            raise AssertionError("send after close")
        if self.outage is not None:
            raise self.outage
        self.produced.append(Produced(topic, key, value))

    async def ready(self, topic: str, timeout: float) -> str | None:
        return None if self.outage is None else str(self.outage)

    async def close(self) -> None:
        self.closed = True

    def received(self) -> list[RequestReceived]:
        return [decode(RequestReceived, item.value) for item in self.produced]


# --- the ingress under test -----------------------------------------------------------------


class Served(TestServer):
    """An app served as ``talkstream ingress`` and ``talkstream console`` serve theirs: on
    the runner whose connections answer aiohttp's own refusals in JSON (``streams.refusals``)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return AppRunner(self.app, **kwargs)


@dataclass
class Ingress:
    client: TestClient[web.Request, web.Application]
    sink: RecordingSink
    box: SecretBox
    settings: Settings

    @property
    def topic(self) -> str:
        return self.settings.topic("requests")

    async def post(
        self,
        body: bytes = b"",
        content_type: str | None = JSON,
        *,
        query: list[tuple[str, str]] | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> ClientResponse:
        """POST the raw ``body``; ``content_type=None`` sends no Content-Type header at all. A
        ``str`` query goes as it is (percent-encoded already, in any encoding)."""
        all_headers = dict(headers or {})
        skip: tuple[str, ...] = ()
        if content_type is None:
            skip = ("Content-Type",)
        else:
            all_headers["Content-Type"] = content_type
        if isinstance(query, str):
            return await self.client.post(
                f"{PATH}?{query}", data=body, headers=all_headers, skip_auto_headers=skip
            )
        return await self.client.post(
            PATH, data=body, params=query, headers=all_headers, skip_auto_headers=skip
        )


async def start_ingress(
    settings: Settings, clock: Callable[[], float] = time.time, sink: RecordingSink | None = None
) -> Ingress:
    sink = sink if sink is not None else RecordingSink()
    box = secret_box()
    server = Served(build_ingress(settings, sink, box, clock))
    # with the access logger `talkstream ingress` runs with (TestServer drops init kwargs)
    await server.start_server(access_log_class=AccessLogger)
    client = TestClient(server)
    await client.start_server()
    return Ingress(client, sink, box, settings)


StartIngress = Callable[..., Awaitable[Ingress]]


@pytest.fixture
async def ingress_with(tmp_path: Path) -> AsyncIterator[StartIngress]:
    """Start an ingress with the given settings values and clock (several per test if need be)."""
    started: list[Ingress] = []

    async def start(clock: Callable[[], float] = time.time, **values: Any) -> Ingress:
        ingress = await start_ingress(make_settings(tmp_path, **values), clock)
        started.append(ingress)
        return ingress

    yield start
    for ingress in started:
        await ingress.client.close()


@pytest.fixture
async def ingress(ingress_with: StartIngress) -> Ingress:
    """The ingress with default settings: no site keys, signatures optional."""
    return await ingress_with()


# --- the params and their shapes ------------------------------------------------------------


def seed_params() -> dict[str, Any]:
    """The seed page's params as Liquid renders them: every value a string."""
    return {
        "site": "acme-store",
        "email": " Alice@Example.com ",
        "api_key": TALKABLE_KEY,
        "event_number": "order-42-complete",
        "openai": {
            "messages": [
                {"role": "system", "content": "You write short, funny verses."},
                {
                    "role": "user",
                    "content": "There once was a user named Alice, who bought a kayak & paddle; "
                    "now create a humorous verse = with this information [sic].",
                },
            ],
            "api_key": OPENAI_KEY,
            "model": "gpt-4o-mini",
            "max_tokens": "150",
            "temperature": "0.7",
            "stop": ["\n\n", "END"],
        },
        "usage_limit": {
            "amount": "3",
            "duration_in_seconds": "3600",
            "start_time": "1700000000",
            "current_time": "1700000100",
            "current_usage_amount": "0",
        },
        "trigger_criteria": "true",
    }


class Body(NamedTuple):
    content_type: str | None
    body: bytes
    query: list[tuple[str, str]] | str | None = None  # a str: the raw query string


def form_body(tree: dict[str, Any], style: str = "brackets") -> bytes:
    return urlencode(form_pairs(tree, style)).encode()


def multipart(pairs: list[tuple[str, str]], boundary: str = "TalkableBoundary7MA4YWxk") -> Body:
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in pairs
    ]
    body = "".join(chunks) + f"--{boundary}--\r\n"
    return Body(f"multipart/form-data; boundary={boundary}", body.encode())


TALKABLE_EVENT = {
    "person": {"email": "alice@example.com", "first_name": "Alice"},
    "origin": {"event_category": "generate_text", "event_number": "order-42"},
}


def envelope(site: str) -> dict[str, str]:
    """A legacy webhook's own fields: its security key, site and type never become params."""
    return {"key": WEBHOOK_KEY, "site": site, "type": "event_web_hook"}


def shapes(tree: dict[str, Any]) -> dict[str, Body]:
    """One webhook in each shape Talkable can deliver it."""
    params = {k: v for k, v in tree.items() if k != "site"}
    return {
        "json": Body(JSON, json.dumps(tree).encode()),
        "json without content type": Body(None, json.dumps(tree).encode()),
        "rails form []": Body(FORM, form_body(tree)),
        "rails form [0]": Body(FORM, form_body(tree, "indexed")),
        "multipart": multipart(form_pairs(tree)),
        "legacy form": Body(
            FORM,
            urlencode(
                {
                    **envelope(tree["site"]),
                    "extras": json.dumps(params),
                    "payload": json.dumps(TALKABLE_EVENT),
                }
            ).encode(),
        ),
        "legacy json": Body(
            JSON,
            json.dumps(
                {**envelope(tree["site"]), "extras": params, "payload": TALKABLE_EVENT}
            ).encode(),
        ),
        "legacy json, extras as a string": Body(
            JSON,
            json.dumps(
                {
                    **envelope(tree["site"]),
                    "extras": json.dumps(params),
                    "payload": json.dumps(TALKABLE_EVENT),
                }
            ).encode(),
        ),
        "query string": Body(FORM, b"", form_pairs(tree)),
        "query string, no body or content type": Body(None, b"", form_pairs(tree, "indexed")),
    }


def sign(key: str, body: bytes) -> str:
    """``x-talkable-signature`` as Talkable computes it: Base64 of the hex HMAC-SHA256."""
    return base64.b64encode(
        hmac.new(key.encode(), body, hashlib.sha256).hexdigest().encode()
    ).decode()


# --- raw HTTP, for what a client library would not send -------------------------------------


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # by lower-cased name
    body: bytes
    raw: bytes  # everything the server sent before it closed


async def sent_until_closed(server: TestServer, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` as it is on a connection of its own; what the server sent until it
    closed it. A server that refuses a request before it has read all of it closes with bytes
    unread, which the kernel answers with a reset, not an end: its answer, received before the
    reset, is read from the socket first (asyncio's stream reader drops what it holds when a
    reset comes)."""
    assert server.host is not None and server.port is not None
    loop = asyncio.get_running_loop()
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.setblocking(False)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused midway
            await loop.sock_sendall(sock, request)
        chunks = []

        async def read() -> None:
            try:
                while chunk := await loop.sock_recv(sock, 65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                pass

        await asyncio.wait_for(read(), timeout)
    return b"".join(chunks)


async def exchange(server: TestServer, request: bytes, timeout: float = 10) -> Answer:
    """Send ``request`` as it is on a connection of its own and read until the server closes
    it (a request that does not ask ``Connection: close`` must be one it refuses)."""
    raw = await sent_until_closed(server, request, timeout)
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Answer(int(status_line.split()[1]), headers, rest[:length], raw)

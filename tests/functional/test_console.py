"""The operator console in-process: the real aiohttp app on a real SQLite projection (made by
the real rules), with an in-memory log standing in for Kafka (dead letters, a request's
content, redrive) and a fixed clock."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from yarl import URL

from models.events import (
    ChatRequest,
    GenerationAttemptFailed,
    GenerationAttemptSucceeded,
    PublicationAttemptFailed,
    PublicationAttemptSucceeded,
    RequestReceived,
    RequestSpec,
    SealedSecrets,
)
from models.params import UsageLimit, person_key
from streams.cli import main
from streams.console.app import build_console, console_engine, max_form_bytes, max_form_fields
from streams.console.auth import CSP
from streams.console.log import (
    LETTERS_PER_PARTITION,
    Content,
    Letter,
    Letters,
    Message,
    Sought,
    content_of,
)
from streams.console.pacing import Pacing, parse
from streams.console.pages import TEMPLATES
from streams.console.queries import ConsoleQueries, Filters
from streams.console.views import SERVICES
from streams.errors import BrokerUnavailable
from streams.ops.redrive import Redriven, RedriveReport, Selection
from streams.projection import migrate
from streams.projection.engine import make_engine, safe_url
from streams.projection.store import ProjectionStore
from streams.secrets import key_fingerprint
from tests.functional.conftest import Answer, Served, exchange, make_settings, sent_until_closed
from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures)
from tests.projection_support import (
    LONG_ERROR,
    LONG_MODEL,
    LONG_SITE,
    T0_MS,
    Log,
    mixed_log,
    too_long_log,
)

TOKEN = "console-token-for-the-functional-tests"
NOW_MS = T0_MS + 10 * 60_000
SCRIPT = "<script>alert('pwned')</script>"
SCRIPT_EMAIL = "<script>alert(1)</script>@example.com"
# a listed request's id (its link names which request of the id by its event time, ``at``)
RID = r'class="rid" href="/request\?id=([^"&]+)&amp;at=\d+"'
ARRIVED_MS = T0_MS + 44_000  # the webhook arrived 44 s after the event time Talkable rendered
SEALED = "gAAAAABsealed-talkable-key-token"


@dataclass
class FakeLog:
    """Kafka for the console: its letters, a content with a script tag, and the redrives."""

    letters_: list[Letter] = field(default_factory=list)
    redrives: list[tuple[Selection, bool]] = field(default_factory=list)
    down: bool = False  # Kafka out of reach
    unread: int = 0  # older letters than the console reads
    contents: list[tuple[str, int]] = field(default_factory=list)  # (request, arrived) read
    received: dict[str, RequestReceived] = field(default_factory=dict)  # webhooks of the log
    generated: dict[str, GenerationAttemptSucceeded] = field(default_factory=dict)  # their texts
    # their last failed generation's and last publication's results
    failures: dict[str, GenerationAttemptFailed] = field(default_factory=dict)
    publications: dict[str, Any] = field(default_factory=dict)

    async def letters(self) -> Letters:
        self._reachable()
        return Letters(list(self.letters_), self.unread)

    def _reachable(self) -> None:
        if self.down:
            raise BrokerUnavailable("Kafka at 127.0.0.1:1 is not reachable: connection refused")

    async def content(self, sought: Sought) -> Content:
        request_id, _, arrived_ms, generated_ms, failed_ms, published_ms = sought
        self._reachable()
        self.contents.append((request_id, arrived_ms))
        if request_id in self.received:  # each result found only when looked for (its time)
            return content_of(
                request_id,
                self.received[request_id],
                self.generated.get(request_id),
                failed=self.failures.get(request_id) if failed_ms is not None else None,
                published=self.publications.get(request_id) if published_ms is not None else None,
            )
        return Content(
            received=True,
            messages=[Message("user", f"A verse for {SCRIPT}")],
            model="gpt-4o-mini",
            max_tokens=60,
            event_number=f"generate_text_complete-{request_id}",
            usage_limit={
                "amount": 3,
                "duration_in_seconds": 3600,
                "start_time": T0_MS // 1000,
                "current_time": T0_MS // 1000,
                "current_usage_amount": 0,
            },
            text=f"Roses are red {SCRIPT}" if generated_ms is not None else None,
            text_attempt=1 if generated_ms is not None else None,
        )

    async def redrive(self, selection: Selection, *, dry_run: bool) -> RedriveReport:
        self.redrives.append((selection, dry_run))
        matching = [
            x
            for x in self.letters_
            if selection.request_ids is None or x.request_id in selection.request_ids
        ]
        return RedriveReport(
            examined=len(self.letters_),
            redriven=[
                Redriven(
                    what=f"{x.request_id} → the ledger",
                    reason=x.reason,
                    topic=x.topic,
                    partition=x.partition,
                    offset=x.offset,
                    request_id=x.request_id,
                    written_ms=x.at_ms,
                )
                for x in matching
            ],
            skipped=len(self.letters_) - len(matching),
        )


def late_webhook(log: Log) -> None:
    """A webhook whose Liquid-rendered current_time was 44 s old when it arrived."""
    event_s = T0_MS // 1000
    log.send(
        RequestReceived(
            request_id="late-1",
            delivery_id="late-1/d1",
            person=person_key("acme", SCRIPT_EMAIL),
            at_ms=ARRIVED_MS,
            spec=RequestSpec(
                site="acme",
                email=SCRIPT_EMAIL,
                chat=ChatRequest(model="gpt-4o-mini", messages=[], max_tokens=60),
                usage_limit=UsageLimit(
                    amount=3,
                    duration_in_seconds=3600,
                    start_time=event_s,
                    current_time=event_s,
                    current_usage_amount=0,
                ),
            ),
            secrets=SealedSecrets(talkable_api_key=SEALED, openai_api_key=SEALED),
        )
    )


# a Talkable refusal of the site's key, whole: the widest column of the pages that show it
REFUSED = (
    "Talkable answered 401 (it refuses the site's API key, the webhook's api_key: put the key of"
    " the site's Settings > API Integration in the campaign, then resend its webhooks; a redrive"
    " sends the same key): invalid API key"
)


def projection(
    path: Path, extra: int = 0, url: str | None = None, people: tuple[tuple[str, str], ...] = ()
) -> str:
    log = mixed_log()
    late_webhook(log)
    parked = log.received("park-1", email="pat@example.com", at_ms=T0_MS + 7000)
    log.generated(parked, at_ms=T0_MS + 7500)
    log.send(  # Talkable refused the site's key: parked, dead-lettered
        PublicationAttemptFailed(
            request_id=parked.request_id,
            person=parked.person,
            attempt=1,
            at_ms=T0_MS + 8000,
            error_class="Unauthorized",
            error_message=REFUSED,  # as long as Talkable's client says it
        )
    )
    for i in range(extra):
        log.received(f"bulk-{i:03d}", site="bulk", email=f"p{i}@example.com", at_ms=T0_MS + i)
    for i, (site, email) in enumerate(people):
        log.received(f"person-{i:03d}", site=site, email=email, at_ms=T0_MS + 100 + i)
    url = url or f"sqlite:///{path / 'projection.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    store.close()
    return url


LETTERS = [
    Letter(  # work the ledger gave up on, deciding a failed publication's result
        topic="functest-completions",
        partition=-1,
        offset=-1,
        reason=f"Unauthorized: {REFUSED}",  # as long as the publisher writes it
        request_id="park-1",
        at_ms=T0_MS + 8001,
        letter_partition=0,
        letter_offset=0,
        decided="functest-requests/2/41",
    ),
    Letter(
        topic="functest-requests",
        partition=1,
        offset=9,
        reason=f"does not decode: {SCRIPT}",
        request_id=None,
        at_ms=T0_MS + 9000,
        letter_partition=1,
        letter_offset=0,
    ),
]


@dataclass
class Console:
    client: TestClient[Any, Any]
    log: FakeLog
    url: str  # the projection's

    @property
    def origin(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")

    async def login(self) -> None:
        response = await self.client.post(
            "/login",
            data={"token": TOKEN, "next": "/"},
            headers={"Origin": self.origin},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()

    async def page(self, path: str, status: int = 200) -> str:
        response = await self.client.get(path, allow_redirects=False)
        body = await response.text()
        assert response.status == status, body[:2000]
        return body

    async def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', await self.page("/deadletters"))
        assert found
        return found.group(1)

    async def post(self, path: str, data: Any, **headers: str) -> ClientResponse:
        return await self.client.post(
            path, data=data, headers={"Origin": self.origin, **headers}, allow_redirects=False
        )


async def start(
    tmp_path: Path,
    extra: int = 0,
    url: str | None = None,
    people: tuple[tuple[str, str], ...] = (),
    revision: str | None = None,
    letters: tuple[Letter, ...] = (),
    **settings: Any,
) -> Console:
    """The console on a projection made by the real rules (migrated to ``revision`` as
    another version leaves it, when given), its log holding ``LETTERS`` and ``letters``."""
    url = projection(tmp_path, extra, url, people)
    store = ProjectionStore.from_url(url, migrate_schema=False)
    if revision is not None:
        with store.engine.begin() as connection:
            connection.execute(
                text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = :r"), {"r": revision}
            )
    fake = FakeLog([*LETTERS, *letters])

    async def no_workers() -> Pacing:
        return Pacing(unreachable=["http://127.0.0.1:1/metrics"])

    app = build_console(
        make_settings(tmp_path, **settings),
        ConsoleQueries(store.engine),
        fake,
        token=TOKEN,
        now_ms=lambda: NOW_MS,
        pacing=no_workers,
        database=store.url,
    )
    client = TestClient(Served(app))
    await client.start_server()
    return Console(client, fake, url)


async def on_engine(
    tmp_path: Path, engine: Engine, url: str, pacing: Pacing | None = None
) -> TestClient[Any, Any]:
    """The console, started, on a database of the test's own (not a projection made here);
    ``pacing``: what the workers' metrics say (none: no worker is asked)."""

    async def workers() -> Pacing:
        return pacing or Pacing(unreachable=[])

    app = build_console(
        make_settings(tmp_path),
        ConsoleQueries(engine),
        FakeLog(),
        token=TOKEN,
        now_ms=lambda: NOW_MS,
        pacing=workers,
        database=url,
    )
    client = TestClient(Served(app))
    await client.start_server()
    return client


async def overview_page(
    tmp_path: Path, engine: Engine, url: str, pacing: Pacing | None = None
) -> str:
    """The overview of the last 15 minutes, read once from a console on ``engine`` (disposed
    afterwards), as :func:`on_engine` starts it."""
    client = await on_engine(tmp_path, engine, url, pacing)
    try:
        response = await client.get("/?window=15m", headers={"Authorization": f"Bearer {TOKEN}"})
        return await response.text()
    finally:
        await client.close()
        engine.dispose()


@pytest.fixture
async def console(tmp_path: Path, database_url: str) -> AsyncIterator[Console]:  # noqa: F811
    """The console on the projection in SQLite and in PostgreSQL (the same queries on both)."""
    started = await start(tmp_path, url=database_url)
    yield started
    await started.client.close()


@pytest.fixture
async def signed_in(console: Console) -> Console:
    await console.login()
    return console


PAGES = [
    "/",
    "/requests",
    "/requests?site=acme",
    "/request?id=pub-1",
    "/request/content?id=pub-1",
    "/person?site=acme&email=ada@example.com",
    "/deadletters",
    "/static/LICENSE.txt",
]
ACTIONS = ["/deadletters/preview", "/deadletters/redrive", "/logout"]


async def test_a_request_too_long_to_read_leaves_its_bytes_and_the_token_out_of_the_log(
    console: Console, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    server = console.client.server
    answer = await sent_until_closed(  # aiohttp answers, then closes
        server,
        f"GET /requests HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}"
        f"{'0' * 9000}\r\n\r\n".encode(),
    )
    assert b"431 Request Header Fields Too Large" in answer
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "aiohttp.server"]
    assert said == [("WARNING", "refused a malformed HTTP request: LineTooLong (431)")]
    assert not any(r.exc_info for r in caplog.records)
    assert TOKEN not in caplog.text


def refused(answer: Answer, status: int, field: str) -> str:
    """``status`` with one error naming ``field`` in JSON, quoting nothing of the request (the
    token, the query); its message."""
    assert answer.status == status, answer.raw[:2000]
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    [error] = json.loads(answer.body)["errors"]
    assert error["field"] == field, error
    assert TOKEN.encode() not in answer.raw and b"secret" not in answer.raw, answer.raw
    return str(error["message"])


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [
        (
            f"GET /requests HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}{'0' * 9000}",
            431,
            "headers",
        ),
        (
            f"GET /requests?token={TOKEN}&secret={'0' * 9000} HTTP/1.1\r\nHost: t",
            414,
            "request line",
        ),
        (f"GET /requests?token={TOKEN}&secret=1 HTTP/9.Z\r\nHost: t", 400, "request line"),
        (f"GE(T /requests?token={TOKEN}&secret=1 HTTP/1.1\r\nHost: t", 400, "method"),
        (f"GET /requests HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \x01{TOKEN}", 400, "headers"),
    ],
    ids=[
        "a header too long",
        "a request line too long",
        "an HTTP version that is none",
        "a method that is no token",
        "a control character in a header",
    ],
)
async def test_a_request_the_parser_refuses_is_answered_in_json_without_the_token(
    tmp_path: Path, request_: str, status: int, field: str
):
    """aiohttp's text answer quoted what it choked on: the request line, query and all, or the
    first hundred bytes of a header, the operator's token with them."""
    console = await start(tmp_path)
    try:
        answer = await exchange(console.client.server, f"{request_}\r\n\r\n".encode("latin-1"))
    finally:
        await console.client.close()
    refused(answer, status, field)


async def test_what_the_router_and_the_body_limit_refuse_is_json_and_still_secured(
    tmp_path: Path,
):
    """An unknown path (404), a method a page does not take (405), a form past the console's
    limit (413): aiohttp's text, now the product's JSON, with the console's headers."""
    console = await start(tmp_path)
    server = console.client.server
    bearer = f"Host: t\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close"
    try:
        missing = await exchange(
            server, f"GET /nope?secret=1 HTTP/1.1\r\n{bearer}\r\n\r\n".encode()
        )
        method = await exchange(server, f"DELETE /requests HTTP/1.1\r\n{bearer}\r\n\r\n".encode())
        limit = max_form_bytes(make_settings(tmp_path))
        form = b"csrf=" + b"a" * limit
        large = await exchange(
            server,
            f"POST /deadletters/preview HTTP/1.1\r\n{bearer}\r\nContent-Type: "
            f"application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n".encode()
            + form,
        )
        fields = max_form_fields(make_settings(tmp_path))
        form = b"&".join([b"csrf=x"] + [b"id=x"] * fields)
        many = await exchange(
            server,
            f"POST /deadletters/preview HTTP/1.1\r\n{bearer}\r\nContent-Type: "
            f"application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n".encode()
            + form,
        )
    finally:
        await console.client.close()
    assert refused(many, 413, "body") == f"more than {fields} form fields"
    assert refused(missing, 404, "path") == "no such path"
    assert refused(method, 405, "method") == "not allowed here; allowed: GET, HEAD"
    assert method.headers["allow"] == "GET,HEAD"
    assert refused(large, 413, "body") == f"larger than {limit} bytes"
    for answer in (missing, method, large, many):
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_a_bug_and_a_refused_request_are_answered_with_the_security_headers(
    tmp_path: Path,
):
    """A page handler that raised was answered 500 by aiohttp's connection, outside the
    middleware that added the console's headers: no CSP, no nosniff, no no-store. So was a
    request the HTTP parser refused. Every answer carries them now, 404 as before."""

    async def broken(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("a bug in a page")

    store = ProjectionStore.from_url(projection(tmp_path, 0, None, ()), migrate_schema=False)
    app = build_console(
        make_settings(tmp_path),
        ConsoleQueries(store.engine),
        FakeLog(),
        token=TOKEN,
        now_ms=lambda: NOW_MS,
        pacing=_no_pacing,
        database=store.url,
    )
    app.router.add_get("/broken", broken)
    client = TestClient(Served(app))
    await client.start_server()
    bearer = f"Host: t\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close"
    try:
        bug = await exchange(client.server, f"GET /broken HTTP/1.1\r\n{bearer}\r\n\r\n".encode())
        missing = await exchange(
            client.server, f"GET /nowhere HTTP/1.1\r\n{bearer}\r\n\r\n".encode()
        )
        garbled = await exchange(client.server, b"GET /requests HTTP/9.x\r\nHost: t\r\n\r\n")
    finally:
        await client.close()
        store.engine.dispose()
    assert refused(bug, 500, "server") == "internal error"
    assert refused(missing, 404, "path") == "no such path"
    assert garbled.status == 400
    for answer in (bug, missing, garbled):
        assert answer.headers["content-security-policy"] == CSP, answer
        assert answer.headers["x-content-type-options"] == "nosniff", answer
        assert answer.headers["x-frame-options"] == "SAMEORIGIN", answer
        assert answer.headers["referrer-policy"] == "same-origin", answer
        assert answer.headers["cache-control"] == "no-store", answer


async def _no_pacing() -> Pacing:
    return Pacing(unreachable=[])


async def test_every_page_and_action_needs_the_token(console: Console):
    for path in PAGES:
        response = await console.client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"].startswith("/login?next=")
        wrong = await console.client.get(path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status == 401, path
    for path in ACTIONS:
        response = await console.post(path, {"request_id": "park-1"})
        if path == "/logout":  # a stale page's button: there is no session to end
            assert response.status == 303 and response.headers["Location"] == "/login", path
            continue
        assert response.status == 401, path
    assert console.log.redrives == []
    # only the login form, its stylesheet and its icon are public
    login = await console.client.get("/login")
    assert login.status == 200
    assert (await console.client.get("/static/console.css")).status == 200
    # every page names its icon, so a browser does not ask for /favicon.ico (a 404 it
    # reported as an error of each page)
    assert '<link rel="icon" href="/static/favicon.svg"' in await login.text()
    icon = await console.client.get("/static/favicon.svg")
    assert icon.status == 200 and icon.content_type == "image/svg+xml"


async def test_a_token_put_in_a_url_is_not_carried_to_the_login_page(console: Console):
    response = await console.client.get(f"/requests?site=acme&token={TOKEN}", allow_redirects=False)
    assert response.status == 303
    assert URL(response.headers["Location"]).query["next"] == "/requests?site=acme"
    assert TOKEN not in await console.page(response.headers["Location"])


async def test_a_wrong_token_does_not_log_in(console: Console):
    response = await console.client.post(
        "/login", data={"token": "guess-guess-guess-guess"}, headers={"Origin": console.origin}
    )
    assert response.status == 401
    # a browser's: the form again, saying so (a 401 says how to authenticate)
    assert response.content_type == "text/html"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="talkstream console"'
    assert "That is not the token" in await response.text()
    assert (await console.client.get("/", allow_redirects=False)).status == 303


async def test_login_sets_a_strict_httponly_cookie_and_opens_every_page(console: Console):
    response = await console.client.post(
        "/login",
        data={"token": TOKEN, "next": "/requests"},
        headers={"Origin": console.origin},
        allow_redirects=False,
    )
    assert response.status == 303 and response.headers["Location"] == "/requests"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    for path in PAGES:
        await console.page(path)


@pytest.mark.parametrize("secure", [False, True])
async def test_the_cookie_is_secure_when_the_console_is_reached_over_https(
    tmp_path: Path, secure: bool
):
    console = await start(tmp_path, console_secure_cookie=secure)
    try:
        response = await console.post("/login", {"token": TOKEN, "next": "/"})
        assert response.status == 303
        flags = [part.strip().lower() for part in response.headers["Set-Cookie"].split(";")]
        assert ("secure" in flags) is secure
    finally:
        await console.client.close()


async def test_a_logged_out_session_cookie_opens_nothing_though_it_still_decrypts(
    signed_in: Console,
):
    # the cookie as another tab, a proxy's log or a thief keeps it
    kept = {c.key: c.value for c in signed_in.client.session.cookie_jar}
    csrf = await signed_in.csrf()
    assert (await signed_in.post("/logout", {"csrf": csrf})).status == 303
    signed_in.client.session.cookie_jar.update_cookies(kept)
    response = await signed_in.client.get("/requests", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/login?next=")
    refused = await signed_in.post("/deadletters/preview", {"csrf": csrf, "request_id": "park-1"})
    assert refused.status == 401 and signed_in.log.redrives == []
    # a new login opens a new session
    await signed_in.login()
    await signed_in.page("/requests")


async def test_a_bearer_token_opens_pages_without_a_session(console: Console):
    response = await console.client.get("/requests", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    assert "Set-Cookie" not in response.headers


async def test_login_never_redirects_to_another_site(console: Console):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = await console.client.post(
            "/login",
            data={"token": TOKEN, "next": target},
            headers={"Origin": console.origin},
            allow_redirects=False,
        )
        assert response.headers["Location"] == "/", target


async def test_actions_need_the_csrf_token_and_the_consoles_own_origin(signed_in: Console):
    csrf = await signed_in.csrf()
    refused = [
        await signed_in.post("/deadletters/preview", {"request_id": "park-1"}),
        await signed_in.post("/deadletters/preview", {"request_id": "park-1", "csrf": "forged"}),
        await signed_in.post(
            "/deadletters/preview",
            {"request_id": "park-1", "csrf": csrf},
            Origin="http://evil.example",
        ),
        await signed_in.client.post(
            "/deadletters/redrive", data={"id": "park-1", "csrf": csrf}, allow_redirects=False
        ),  # no Origin, no Referer
    ]
    assert [r.status for r in refused] == [403, 403, 403, 403]
    assert signed_in.log.redrives == []
    ok = await signed_in.post("/deadletters/preview", {"request_id": "park-1", "csrf": csrf})
    assert ok.status == 200
    # a page no browser makes can't be framed elsewhere nor run a script
    headers = ok.headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "script-src" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "SAMEORIGIN"


async def test_what_the_door_refuses_is_json_naming_what_and_a_401_says_how_to_authenticate(
    signed_in: Console,
):
    """A script reads the door's refusals as it reads every other answer: the product's JSON,
    naming what is refused and quoting nothing it sent (a wrong token least of all); a 401
    carries its challenge. They were text; a 401 had no WWW-Authenticate."""
    guess = "a-wrong-token-guessed-by-a-script"
    csrf = await signed_in.csrf()
    answers = {
        "a wrong bearer token": await signed_in.client.get(
            "/requests", headers={"Authorization": f"Bearer {guess}"}
        ),
        "a POST from another site": await signed_in.post(
            "/deadletters/preview", {"csrf": csrf}, Origin="http://evil.example"
        ),
        "a wrong CSRF token": await signed_in.post("/deadletters/preview", {"csrf": guess}),
    }
    signed_in.client.session.cookie_jar.clear()  # its session gone (it expired)
    answers["a POST without a session"] = await signed_in.post(
        "/deadletters/redrive", {"id": "park-1", "csrf": csrf}
    )
    # a script that forgot its bearer token sends no Origin either (curl sends none): it is
    # told to authenticate, not that it came from another site (it was a 403 "Origin")
    answers["a script's POST without its token"] = await signed_in.client.post(
        "/deadletters/redrive", data={"id": "park-1"}, allow_redirects=False
    )
    challenge = 'Bearer realm="talkstream console"'
    expected = {
        "a wrong bearer token": (
            401,
            {"field": "Authorization", "message": "wrong token"},
            f'{challenge}, error="invalid_token"',
        ),
        "a POST from another site": (
            403,
            {
                "field": "Origin",
                "message": "cross-site request refused: a POST must come from the console's "
                "own pages",
            },
            None,
        ),
        "a wrong CSRF token": (
            403,
            {"field": "csrf", "message": "missing or wrong CSRF token: reload the page"},
            None,
        ),
        "a POST without a session": (
            401,
            {"field": "Authorization", "message": "log in first (or send a bearer token)"},
            challenge,
        ),
        "a script's POST without its token": (
            401,
            {"field": "Authorization", "message": "log in first (or send a bearer token)"},
            challenge,
        ),
    }
    for case, response in answers.items():
        status, error, authenticate = expected[case]
        said = await response.text()
        assert (response.status, response.content_type) == (status, "application/json"), case
        assert json.loads(said) == {"errors": [error]}, case
        assert response.headers.get("WWW-Authenticate") == authenticate, case
        assert response.headers["Content-Security-Policy"] == CSP, case
        assert [x for x in (guess, TOKEN, csrf, "evil") if x in said] == [], case
    assert signed_in.log.redrives == []


async def test_values_from_webhooks_are_escaped_everywhere(signed_in: Console):
    pages = [
        await signed_in.page("/requests"),
        await signed_in.page("/request?id=late-1"),
        await signed_in.page("/request/content?id=pub-1"),
        await signed_in.page("/deadletters"),
        await signed_in.page(f"/person?site=acme&email={SCRIPT_EMAIL.replace('<', '%3C')}"),
    ]
    for body in pages:
        assert "<script" not in body.lower()
    # (a listed email may break before its "@" or a ".")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;<wbr>@example<wbr>.com" in pages[0]
    assert "Roses are red &lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in pages[2]
    assert "does not decode: &lt;script&gt;" in pages[3]
    assert SEALED not in "".join(pages)


async def test_search_pages_do_not_overlap_and_go_back(tmp_path: Path):
    console = await start(tmp_path, extra=120)
    try:
        await console.login()
        seen: list[str] = []
        path = "/requests?site=bulk"
        pages = []
        while path:
            body = await console.page(path)
            pages.append(body)
            ids = re.findall(RID, body)
            seen += ids
            older = re.search(r'id="older" href="([^"]+)"', body)
            path = older.group(1).replace("&amp;", "&") if older else ""
        assert [len(re.findall('class="rid"', p)) for p in pages] == [50, 50, 20]
        assert seen == [f"bulk-{i:03d}" for i in reversed(range(120))]  # newest first
        newer = re.search(r'id="newer" href="([^"]+)"', pages[2])
        assert newer
        back = await console.page(newer.group(1).replace("&amp;", "&"))
        assert re.findall(RID, back) == seen[50:100]
    finally:
        await console.client.close()


# a deployment of many tenants: more sites than a page (or the old site list) holds, a person on
# each, and one person on the last of them only
MANY_SITES = (
    *((f"shop-{i:04d}", "zed@example.com") for i in range(1001)),
    ("shop-1000", "amy@example.com"),
)


@pytest.fixture
async def many_sites(tmp_path: Path, database_url: str) -> AsyncIterator[Console]:  # noqa: F811
    started = await start(tmp_path, url=database_url, people=MANY_SITES)
    await started.login()
    yield started
    await started.client.close()


async def test_an_email_on_any_site_is_found_on_every_site_however_many(many_sites: Console):
    body = await many_sites.page("/requests?email=zed@example.com")
    sites = re.findall(r'<td class="value">(shop-\d+)</td>', body)
    assert sites == [f"shop-{i:04d}" for i in range(1000, 950, -1)]  # newest first
    last = await many_sites.page("/requests?email=amy@example.com")
    assert re.findall(RID, last) == ["person-1001"]
    # every page of them, none twice, down to the first site
    seen, path = [], "/requests?email=zed@example.com"
    while path:
        body = await many_sites.page(path)
        seen += re.findall(r'<td class="value">(shop-\d+)</td>', body)
        older = re.search(r'id="older" href="([^"]+)"', body)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert seen == [f"shop-{i:04d}" for i in range(1000, -1, -1)]


def suggested(body: str) -> list[str]:
    found = re.search(r'<datalist id="sites">(.*?)</datalist>', body, re.S)
    assert found
    return re.findall(r'<option value="([^"]+)">', found.group(1))


async def test_a_site_its_webhooks_spelled_several_ways_is_found_in_any_case(tmp_path: Path):
    """`Shop` and `shop` are two spellings to the projection (each webhook's), one site to the
    ledger's limits and the publisher's pace: a search for `SHOP` was taken for the first and
    said "no requests", then said no site was named so, linking each spelling, which found its
    own requests only. Any case now finds every spelling's requests together, saying which
    spellings they are; so does the person page, and a person's key of either spelling."""
    people = (("Shop", "ann@example.com"), ("shop", "bob@example.com"), ("shop", "ann@example.com"))
    console = await start(tmp_path, people=people)
    try:
        await console.login()
        for typed in ("SHOP", "shop", "Shop"):
            found = await console.page(f"/requests?site={typed}")
            # before: 'No site is named “SHOP”. 2 sites have it in their name:', and a link a
            # spelling, ``shop`` finding its own (``[:1] == ["shop"]``)
            assert 'id="site-unknown"' not in found, typed
            assert (
                f"“{typed}” is one site its webhooks spelled 2 ways (Shop, shop): their"
                " requests together."
            ) in found
            assert sorted(re.findall(r'<td class="value">(\w+)</td>', found)) == [
                "Shop",
                "shop",
                "shop",
            ]
            assert f'id="f-site" value="{typed}"' in found  # as the operator typed it
            person = await console.page(f"/person?site={typed}&email=ann@example.com")
            assert sorted(re.findall(r'<td class="value">(\w+)</td>', person)) == [
                "Shop",
                "shop",
            ]
            # named as the overview names it, its spellings beside it (it said "on SHOP")
            assert re.search(
                r'<h1>ann@example.com <span class="muted">on shop <span class="spellings"'
                r' id="person-spellings"[^>]*>\(Shop, shop\)</span></span></h1>',
                person,
            ), typed
        # a part of its name lists it once, its spellings beside it: it said "2 sites have it
        # in their name", a link a spelling (each finding the requests of both)
        part = await console.page("/requests?site=HO")
        assert "No site is named “HO”. 1 site has it in its name:" in part
        links = re.findall(r'<li><a href="/requests\?([^"]+)">(\w+)</a>(.*?)</li>', part)
        assert [(link, site) for link, site, _ in links] == [("site=shop", "shop")]
        assert "(Shop, shop)" in links[0][2]
    finally:
        await console.client.close()


async def test_a_site_s_spellings_are_read_once_a_page(tmp_path: Path, monkeypatch: Any):
    """The person page and the search read every site (a probe a site: thousands) to find a
    site's spellings, then the search read them all again for its filter: twice a page. The
    page now hands the search the spellings it read (the search form's suggestions, which
    look for the name in every site's, are the search page's other read)."""
    people = (("Shop", "ann@example.com"), ("shop", "ann@example.com"))
    console = await start(tmp_path, people=people)
    scans: list[str] = []
    every_site = ConsoleQueries._sites

    def counted(session: Any, limit: int | None = None) -> list[str]:
        scans.append("sites")
        return every_site(session, limit)

    monkeypatch.setattr(ConsoleQueries, "_sites", staticmethod(counted))
    try:
        await console.login()
        person = await console.page("/person?site=SHOP&email=ann@example.com")
        assert sorted(re.findall(r'<td class="value">(\w+)</td>', person)) == ["Shop", "shop"]
        assert len(scans) == 1  # 2 before
        scans.clear()
        found = await console.page("/requests?site=SHOP")
        assert sorted(re.findall(r'<td class="value">(\w+)</td>', found)) == ["Shop", "shop"]
        assert len(scans) == 2  # the spellings and the suggestions; 3 before
    finally:
        await console.client.close()


async def test_the_overview_lists_a_site_its_webhooks_spelled_several_ways_once(tmp_path: Path):
    """The overview's sites table had a row a spelling (``Shop`` and ``shop``, each its
    requests in flight), as ``talkstream stats`` did, though they are one site to the ledger,
    the publisher's pace and the console's own search (its link finds both). Now one row, as
    ``stats`` names it: lower-cased when spelled several ways, the spellings said."""
    people = (("Shop", "ann@example.com"), ("shop", "bob@example.com"), ("shop", "cy@example.com"))
    console = await start(tmp_path, people=people)
    try:
        await console.login()
        body = await console.page("/")
        table = re.search(r'<table class="grid" id="sites">(.*?)</table>', body, re.S)
        assert table
        rows = re.findall(r'<td class="value"><a href="([^"]*)">([^<]+)</a>(.*?)</td>', table[1])
        named = [name for _, name, _ in rows]
        # before: [..., 'Shop', 'shop']
        assert "Shop" not in named and named.count("shop") == 1, named
        [(link, _, said)] = [row for row in rows if row[1] == "shop"]
        assert link == "/requests?site=shop" and "(Shop, shop)" in said
        shop = re.search(r'requests\?site=shop">.*?</tr>', table[1], re.S)
        assert shop
        # published, limited, skipped, duplicate, failed, then in flight: both spellings' three
        counts = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', shop[0])]
        assert counts[:6] == [0, 0, 0, 0, 0, 3], shop[0]
    finally:
        await console.client.close()


async def test_the_search_form_suggests_a_few_sites_and_finds_any_by_a_part_of_its_name(
    many_sites: Console,
):
    """The form suggested every site of the projection (80 KB of them at 2,001 sites, in
    every search page): now a hundred at most, and a site no site is named lists those that
    have it in their name, so that any site is still found."""
    blank = await many_sites.page("/requests")
    # nothing typed: the sites of the newest requests (by event time), newest first
    assert suggested(blank)[:5] == ["acme", "globex", "shop-1000", "shop-0999", "shop-0998"]
    assert len(suggested(blank)) == 100
    assert len(re.search(r"<datalist.*?</datalist>", blank, re.S).group(0)) < 4_000
    # a site typed in another case is that site, and is what is suggested
    one = await many_sites.page("/requests?site=SHOP-0999")
    assert suggested(one) == ["shop-0999"] and 'id="site-unknown"' not in one
    assert re.findall(r'<td class="value">(shop-\d+)</td>', one) == ["shop-0999"]
    # a part of a name: the sites that have it, links keeping the other filters
    part = await many_sites.page("/requests?site=P-09&email=zed@example.com")
    assert "No site is named “P-09”. 100 sites have it in their name:" in part
    links = re.findall(r'<li><a href="/requests\?([^"]+)">(shop-\d+)</a></li>', part)
    assert [site for _, site in links] == [f"shop-{i:04d}" for i in range(900, 1000)]
    assert suggested(part) == [site for _, site in links]
    followed = await many_sites.page("/requests?" + links[50][0].replace("&amp;", "&"))
    assert 'id="f-email" value="zed@example.com"' in followed
    assert re.findall(r'<td class="value">(shop-\d+)</td>', followed) == ["shop-0950"]
    many = await many_sites.page("/requests?site=shop-0")
    assert "1,000 sites have it in their name (the first 100 by name: type more of it):" in many
    assert len(re.findall(r"<li><a href=", many)) == 100
    none = await many_sites.page("/requests?site=nowhere")
    assert "No site is named “nowhere”, and no site has it in its name." in none


async def test_the_overview_lists_many_sites_a_page_at_a_time_found_by_name(many_sites: Console):
    def rows(body: str) -> list[str]:
        table = re.search(r'<table class="grid" id="sites">(.*?)</table>', body, re.S)
        assert table
        return re.findall(r'<td class="value"><a href="[^"]*">([^<]+)</a>', table.group(1))

    first = await many_sites.page("/")
    # acme and globex (requests that ended in the last hour), and the shops (in flight)
    assert rows(first) == ["acme", "globex", *(f"shop-{i:04d}" for i in range(48))]
    assert "Sites 1\u201350 of 1,003, by name." in first
    assert 'id="sites-previous"' not in first
    seen, path = rows(first), re.search(r'id="sites-next" href="([^"]+)"', first)
    while path:
        body = await many_sites.page(path.group(1).replace("&amp;", "&"))
        assert len(rows(body)) == 50 or not re.search(r'id="sites-next"', body)
        seen += rows(body)
        path = re.search(r'id="sites-next" href="([^"]+)"', body)
    assert seen == ["acme", "globex", *(f"shop-{i:04d}" for i in range(1001))]
    # sites by a part of their name, in any case
    found = await many_sites.page("/?window=15m&site=SHOP-010")
    assert rows(found) == [f"shop-{i:04d}" for i in range(100, 110)]
    assert "Sites 1\u201310 of 10 whose name contains “SHOP-010”" in found
    assert 'name="site" value="SHOP-010"' in found  # the window form keeps the filter
    none = await many_sites.page("/?site=nothing-like-it")
    assert "no site whose name contains “nothing-like-it”" in none
    bad = await many_sites.page("/?page=22", status=400)
    assert '<p class="error">page: a number from 1 to 21</p>' in bad
    # the busiest first, ties by name: every site once across the pages
    busiest = await many_sites.page("/?order=in_flight")
    # shop-1000: 2 in flight; then 1 each, by name
    assert rows(busiest)[:4] == ["shop-1000", "acme", "shop-0000", "shop-0001"]
    assert "Sites 1\u201350 of 1,003, most in flight first." in busiest
    seen, path = rows(busiest), re.search(r'id="sites-next" href="([^"]+)"', busiest)
    while path:
        body = await many_sites.page(path.group(1).replace("&amp;", "&"))
        seen += rows(body)
        path = re.search(r'id="sites-next" href="([^"]+)"', body)
    assert len(seen) == 1003 and set(seen) == {"acme", "globex", *(s for s, _ in MANY_SITES)}
    failed = await many_sites.page("/?order=failed")
    assert rows(failed)[0] == "acme"  # its publication refused, its generation failed
    wrong = await many_sites.page("/?order=worst", status=400)
    assert "order: one of name, failed, ended, in_flight, tokens" in wrong


async def test_large_counts_are_shown_with_their_thousands_apart(tmp_path: Path):
    console = await start(tmp_path, people=tuple(("big", f"p{i}@example.com") for i in range(1200)))
    try:
        await console.login()
        body = await console.page("/?site=big")
        [row] = re.findall(
            r"<tr>\s*<td class=\"value\"><a href=\"/requests\?site=big\">.*?</tr>", body, re.S
        )
        assert '<td class="num">1,200</td>' in row  # in flight
    finally:
        await console.client.close()


async def test_a_site_typed_in_another_case_is_the_site_as_the_projection_spells_it(
    signed_in: Console,
):
    body = await signed_in.page("/requests?site=ACME&state=failed")
    assert re.findall(RID, body) == ["park-1", "fail-1"]
    assert 'id="f-site" value="acme"' in body
    person = await signed_in.page("/person?site=Acme&email=ada@example.com")
    assert 'ada@example.com <span class="muted">on acme</span>' in person
    await signed_in.page("/requests?site=nobody")  # a site with no requests: none, not an error
    # no more sites than the form suggests: every one of them, by name
    assert suggested(await signed_in.page("/requests")) == ["acme", "globex"]


async def test_a_webhook_judged_at_once_took_no_time_though_its_event_time_is_earlier(
    signed_in: Console,
    database_url: str,  # noqa: F811
):
    """Limited on arrival, 44 s after the event time Talkable rendered: recorded at the event
    time, it ended when it arrived (end to end 0), not 44 s before."""
    limited = Log().received("late-lim", site="late", at_ms=T0_MS, limit=0)
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    log.send(limited.model_copy(update={"at_ms": ARRIVED_MS}), now_ms=ARRIVED_MS)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()
    body = await signed_in.page("/requests?site=late")
    [row] = re.findall(r"<tr>\s*<td><a class=\"rid\".*?</tr>", body, re.S)
    assert "late-lim" in row and ">limited<" in row
    assert re.findall(r'<td class="num">([^<]*)</td>', row) == ["0 ms", "0"]
    timeline = await signed_in.page("/request?id=late-lim")
    assert 'id="end-to-end">0 ms<' in timeline


async def test_a_request_with_values_longer_than_their_columns_is_shown_with_them_cut(
    signed_in: Console,
    database_url: str,  # noqa: F811
):
    """A model name, an error's class, a site longer than their columns: projected (PostgreSQL
    refused the batch before, the projector stuck on it), cut to the column and ending with
    "…", on both databases; listed under the site as cut, and shown on its page."""
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    log = too_long_log(first_offset=1000)  # offsets after the fixture's
    assert store.apply(log.records) == len(log.records)
    store.close()
    site = LONG_SITE[:199] + "\u2026"
    listed = await signed_in.page(f"/requests?site={quote(site)}")
    assert sorted(re.findall(RID, listed)) == ["long-dup", "long-fail", "long-pub"]
    published = await signed_in.page("/request?id=long-pub")
    assert LONG_MODEL[:199] + "\u2026" in published and LONG_MODEL not in published
    failed = await signed_in.page("/request?id=long-fail")
    assert LONG_ERROR[:199] + "\u2026" in failed and LONG_ERROR not in failed


async def test_a_failure_a_redrive_moved_past_is_labelled_an_earlier_error(
    signed_in: Console,
    database_url: str,  # noqa: F811
):
    """The projection keeps a request's latest failure once a redrive succeeded: the page names
    it the reason only in a failed state, an earlier error beside any other (as audit does),
    and an earlier attempt's while the redrive runs (nothing has recovered yet)."""
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    log.redriven("redone", site="redo", lands=True)
    log.redriven("redoing", site="redo", email="bo@example.com", lands=False)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()

    def label(page: str) -> str:
        [dt] = re.findall(r'<dt>([^<]*)</dt><dd class="error" id="reason">', page)
        return dt

    assert label(await signed_in.page("/request?id=redone")) == (
        "earlier error (before it was published)"
    )
    assert label(await signed_in.page("/request?id=redoing")) == (
        "an earlier attempt's error (it is in flight)"
    )
    assert label(await signed_in.page("/request?id=park-1")) == "reason"  # failed: its reason


async def test_each_request_of_an_id_the_ledger_took_again_has_its_own_page(
    signed_in: Console,
    database_url: str,  # noqa: F811
):
    """The same params a month after the first, the person forgotten by the ledger: a request
    of its own under the same id. The search lists both, each linked to its own page (by its
    event time); the id alone is the latest, and each page names the other."""
    month_ms = 32 * 86_400_000
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    log.full("same-id", site="again", at_ms=T0_MS)
    later = log.received("same-id", site="again", at_ms=T0_MS + month_ms, delivery="d2")
    log.failed(later, at_ms=later.at_ms + 500)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()

    body = await signed_in.page("/requests?site=again")
    links = re.findall(r'class="rid" href="/request\?([^"]+)"', body)
    assert links == [
        f"id=same-id&amp;at={T0_MS + month_ms}",  # newest first
        f"id=same-id&amp;at={T0_MS}",
    ]
    latest = await signed_in.page("/request?id=same-id")
    assert 'id="state">generation_failed<' in latest
    assert re.findall(r'<tr class="step st-(\w+)">', latest) == [
        "received",
        "admitted",
        "generating",
        "generation_failed",
    ]
    assert f'<a href="/request?id=same-id&amp;at={T0_MS}">1</a>' in latest
    assert f'src="/request/content?id=same-id&amp;at={T0_MS + month_ms}"' in latest
    first = await signed_in.page(f"/request?id=same-id&at={T0_MS}")
    assert 'id="state">published<' in first
    steps = re.findall(r'<tr class="step st-(\w+)">', first)
    assert steps == ["received", "admitted", "generating", "generated", "publishing", "published"]
    assert f'<a href="/request?id=same-id&amp;at={T0_MS + month_ms}">2</a>' in first
    # a request page of an id of one request names no other
    assert 'id="same-id"' not in await signed_in.page("/request?id=pub-1")


async def test_a_persons_limit_is_that_of_the_request_that_reported_the_window(
    signed_in: Console,
    database_url: str,  # noqa: F811
):
    """The usage limit the person page shows is read from the webhook of the request whose
    window it shows; a later request of the same id (the ledger took the same params again a
    month on), received and not admitted yet, is another webhook: not the one read."""
    month_ms = 32 * 86_400_000
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    log.full("same-id", site="again", at_ms=T0_MS, limit=3)
    log.received("same-id", site="again", at_ms=T0_MS + month_ms, delivery="d2", limit=3)
    later = [r.event.type for r in log.records].index("RequestReceived", 1)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records[: later + 1])  # the later one received, not admitted yet
    store.close()

    signed_in.log.contents.clear()
    body = await signed_in.page("/person?site=again&email=ada@example.com")
    assert re.search(r'<span class="big">1 of 3</span>', body)
    assert signed_in.log.contents == [("same-id", T0_MS)]  # not T0_MS + month_ms


async def test_a_persons_requests_under_their_key_and_as_keyed_before_are_one_person(
    signed_in: Console,
    database_url: str,  # noqa: F811
):
    """The person's key folds the site's case from schema 11 (``casey:...`` for ``Casey`` and
    ``CASEY``); a request written before carries it as its site was typed (``Casey:...``).
    The person's page and search find both, and each request links to its person by the site
    its webhook typed (the key's own site part, lower-cased, is no spelling it had)."""
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    log.full("case-old", site="Casey", person="Casey:ada@example.com", at_ms=T0_MS, limit=5)
    log.full("case-new", site="Casey", at_ms=T0_MS + 1000, limit=5)
    log.received("case-caps", site="CASEY", at_ms=T0_MS + 2000, limit=5)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()

    person = await signed_in.page("/person?site=Casey&email=ada@example.com")
    assert re.findall(RID, person) == ["case-caps", "case-new", "case-old"]
    assert re.search(r'<span class="label">requests</span><span class="big">3</span>', person)
    search = await signed_in.page("/requests?site=Casey&email=ada@example.com")
    assert re.findall(RID, search) == ["case-caps", "case-new", "case-old"]  # one person
    links = re.findall(r'href="/person\?site=(\w+)&amp;email=ada%40example.com"', person)
    assert links == ["CASEY", "Casey", "Casey"]
    request = await signed_in.page("/request?id=case-caps")
    assert re.findall(r'id="person-link" href="/person\?site=(\w+)&amp;', request) == ["CASEY"]


DAY_MS = 86_400_000


def _letter_of(r: RequestReceived, at_ms: int, offset: int) -> Letter:
    """The ledger's letter of a generation it gave up on, written at ``at_ms``."""
    return Letter(
        topic="functest-generate",
        partition=-1,
        offset=-1,
        reason="AuthenticationError: 401 invalid key",
        request_id=r.request_id,
        at_ms=at_ms,
        letter_partition=0,
        letter_offset=offset,
        decided=f"functest-requests/0/{offset}",
    )


async def test_a_letter_links_to_the_request_of_its_id_it_was_written_of(
    signed_in: Console,
    database_url: str,  # noqa: F811
) -> None:
    """Two requests of one id (the same params a month apart, the person forgotten by the
    ledger in between), each parked with a letter: each letter opens its own request's page
    and says what became of that one; the id alone opened the latest for both. The preview
    and the redrive link the request they redrive (the ledger's: the latest)."""
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    first = log.received("twice-1", email="tim@example.com", at_ms=T0_MS - 32 * DAY_MS)
    log.failed(first, at_ms=first.at_ms + 500)
    again = log.received("twice-1", email="tim@example.com", at_ms=T0_MS + 2000, delivery="d2")
    log.failed(again, at_ms=again.at_ms + 500)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()
    older, newer = _letter_of(first, first.at_ms + 501, 5), _letter_of(again, again.at_ms + 501, 6)
    signed_in.log.letters_ = [newer, older]  # newest first, as read

    body = await signed_in.page("/deadletters")
    links = re.findall(r'class="rid" href="/request\?([^"]+)"', body)
    assert links == [f"id=twice-1&amp;at={again.at_ms}", f"id=twice-1&amp;at={first.at_ms}"]
    rows = body.split('id="letters"')[1].split("<tr>")[2:]
    assert "parked: can be redriven" in rows[0] and 'class="redrive-one"' in rows[0]
    # the earlier request is parked still, but the ledger knows only the later one now
    assert "parked; its id named a later request since" in rows[1]
    assert 'class="redrive-one"' not in rows[1]
    assert 'id="parked-count">1<' in body
    for link, at_ms in zip(links, (again.at_ms, first.at_ms), strict=True):
        page = await signed_in.page("/request?" + link.replace("&amp;", "&"))
        assert f"<b>{1 if at_ms == first.at_ms else 2}</b>" in page  # which of the id's two

    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", {"request_id": "twice-1", "csrf": csrf})
    shown = await preview.text()
    assert 'id="would-count">1<' in shown
    assert f'href="/request?id=twice-1&amp;at={again.at_ms}"' in shown
    confirm = await signed_in.post("/deadletters/redrive", {"id": "twice-1", "csrf": csrf})
    done = await confirm.text()
    assert 'id="redriven-count">1<' in done
    whole = '<span class="whole">twice-1</span></a>'  # an id breaks only at "~" and "/"
    assert f'href="/request?id=twice-1&amp;at={again.at_ms}">{whole}' in done

    # a redrive of the earlier request's letter (as a report says it: a letter's time) names
    # that request, as it was
    signed_in.log.letters_ = [older]
    confirm = await signed_in.post("/deadletters/redrive", {"id": "twice-1", "csrf": csrf})
    assert f'href="/request?id=twice-1&amp;at={first.at_ms}">{whole}' in await confirm.text()


async def test_a_duplicate_links_to_the_request_it_repeated(
    signed_in: Console,
    database_url: str,  # noqa: F811
) -> None:
    """A repeat names the fingerprint it repeated (``duplicate_of``); its link opened the
    latest request of that id: a month-old one when the repeat was of the id's next request,
    or the other way round; and a request named ``<id>~<delivery>`` (the ledger had forgotten
    the fingerprint, the person heard of since) was never reached."""
    log = Log(_next=dict.fromkeys(range(4), 2000))  # offsets after the fixture's
    tim = "tim@example.com"
    first = log.full("rep-1", at_ms=T0_MS - 40 * DAY_MS, email=tim)
    log.received("rep-1", at_ms=first.at_ms + 60_000, delivery="d2", email=tim)  # a repeat of it
    # the person forgotten: the same params take the id again
    again = log.full("rep-1", at_ms=T0_MS + 2000, delivery="d3", email=tim)
    log.received("rep-1", at_ms=again.at_ms + 60_000, delivery="d4", email=tim)  # a repeat of it
    # a person heard of all along: the fingerprint forgotten, the same params named apart
    amy = "amy@example.com"
    log.full("fp-1", at_ms=T0_MS - 31 * DAY_MS, email=amy)
    log.full("other-1", at_ms=T0_MS - 15 * DAY_MS, email=amy)
    named = log.received("fp-1", at_ms=T0_MS + 3000, delivery="d2", email=amy)  # in flight
    log.received("fp-1", at_ms=named.at_ms + 60_000, delivery="d3", email=amy)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()

    cases = {
        "rep-1~rep-1/d2": ("rep-1", first.at_ms, "published"),
        "rep-1~rep-1/d4": ("rep-1", again.at_ms, "published"),
        "fp-1~fp-1/d3": ("fp-1~fp-1/d2", named.at_ms, "generating"),
    }
    for repeat, (original, at_ms, state) in cases.items():
        page = await signed_in.page(f"/request?id={quote(repeat)}")
        assert 'id="state">rejected_duplicate<' in page
        link = f"/request?id={quote(original, safe='~')}&amp;at={at_ms}"
        assert f'<a id="duplicate-of" href="{link}">{original}</a>' in page, repeat
        opened = await signed_in.page(link.replace("&amp;", "&"))
        assert f'id="request-id">{original}<' in opened and f'id="state">{state}<' in opened


async def test_search_by_email_alone_state_and_time(signed_in: Console):
    body = await signed_in.page("/requests?email=ADA@example.com")
    assert re.findall(RID, body) == [
        "lim-1",
        "pub-2",
        "pub-1",
    ]
    failed = await signed_in.page("/requests?state=failed")
    assert re.findall(RID, failed) == ["park-1", "fail-1"]
    since = await signed_in.page("/requests?site=acme&since=2026-01-01T00:00:04Z&until=1767225605")
    assert re.findall(RID, since) == ["pub-2"]
    bad = await signed_in.page("/requests?since=yesterday-ish", status=400)
    assert "since: &#39;yesterday-ish&#39; is not a time" in bad and "ISO-8601" in bad
    # the field the error names is the one labelled so (it was "event time from")
    assert re.search(r'<label>[^<]*\bsince <input type="text" name="since"', bad)
    huge = await signed_in.page("/requests?since=99999999999999999999", status=400)
    assert "since: &#39;99999999999999999999&#39; is out of range" in huge
    # an age counts back from now: since 1h, until 2h ends before it starts
    reversed_ = await signed_in.page("/requests?since=1h&until=2h", status=400)
    assert " is after until " in reversed_ and "the range is empty" in reversed_
    # every bad value names its field, as the form labels it
    state = await signed_in.page("/requests?state=nonsense", status=400)
    assert "state: &#39;nonsense&#39; is not a state: one of failed, in_flight" in state
    cursor = await signed_in.page("/requests?after=not-a-cursor", status=400)
    assert '<p class="error">after: not a page cursor</p>' in cursor


async def test_a_listed_request_ended_by_a_decision_says_why(signed_in: Console):
    """A search's (and a person's) "reason" was the upstream error's class only: a request
    limited, skipped or a duplicate showed an empty reason, so an operator looking for who hit
    their usage limit, and at what count, had to open each request. It is now the decision's
    cause; a failure still shows its error's class."""
    reason_of = (
        r'id=([^"&]+)&amp;at=\d+">.*?<span class="state s-(\w+)">.*?<td class="why">([^<]*)</td>'
    )

    def reasons(page: str) -> dict[str, tuple[str, str]]:
        return {rid: (state, why) for rid, state, why in re.findall(reason_of, page, re.S)}

    listed = reasons(await signed_in.page("/requests"))
    assert listed["lim-1"] == ("limited", "usage window full: 2 of 2 used")
    assert listed["skip-1"] == ("skipped", "trigger criteria not met")
    assert listed["pub-3~pub-3/d2"] == (
        "rejected_duplicate",
        "same request already seen within the dedupe window",
    )
    assert listed["fail-1"] == ("generation_failed", "AuthenticationError")
    assert listed["park-1"] == ("publish_failed", "Unauthorized")
    assert listed["pub-1"] == ("published", "")
    person = reasons(await signed_in.page("/person?site=acme&email=ada@example.com"))
    assert person["lim-1"] == ("limited", "usage window full: 2 of 2 used")
    # its step says the count once: it read "usage window full: 2 of 2 used (window 2 used)"
    page = await signed_in.page("/request?id=lim-1")
    [cause] = re.findall(
        r'<span class="state s-limited">limited</span>.*?<td>(.*?)</td>\s*<td>', page, re.S
    )
    assert cause == "usage window full: 2 of 2 used", cause
    # an admission's count is its own: said
    assert 'admitted <span class="muted">(window 1 used)</span>' in await signed_in.page(
        "/request?id=pub-1"
    )


async def test_a_request_in_flight_says_how_long_it_has_been(signed_in: Console):
    """What is stuck: a request in flight showed "—" for its end to end, in a search and on
    its page, so an operator could not tell one that arrived a second ago from one stuck for
    minutes without reading its arrival against the clock. It says how long so far, from its
    arrival (late-1 arrived 44 s after T0, the console's clock is T0 + 10 min)."""
    listed = await signed_in.page("/requests?state=in_flight")
    row = re.search(r'id=late-1&amp;at=\d+">.*?</tr>', listed, re.S)
    assert row is not None
    assert '<td class="num"><span class="so-far">9.3 min so far</span></td>' in row[0]
    page = await signed_in.page("/request?id=late-1")
    assert 'id="end-to-end">9.3 min so far (in flight)<' in page
    ended = await signed_in.page("/requests?site=acme&state=published")
    assert "so far" not in ended


async def test_the_timeline_shows_both_clocks_and_measures_from_arrival(signed_in: Console):
    body = await signed_in.page("/request?id=late-1")
    assert re.search(r'id="arrived">2026-01-01 00:00:44.000<', body)
    assert re.search(r'id="event-time">2026-01-01 00:00:00.000 .*-44.0 s from arrival', body)
    rows = re.findall(r'<tr class="step st-(\w+)">\s*<td>([^<]+)', body)
    # the judgement happened on arrival, at its event time 44 s earlier
    assert rows == [
        ("received", "2026-01-01 00:00:44.000"),
        ("admitted", "2026-01-01 00:00:44.000"),
        ("generating", "2026-01-01 00:00:44.000"),
    ]
    assert body.count("event time 2026-01-01 00:00:00.000") == 3
    assert "+0 ms" in body

    published = await signed_in.page("/request?id=pub-1")
    assert re.search(r'id="end-to-end">900 ms<', published)
    steps = re.findall(
        r'<td class="num">([+-][^<]+)</td>\s*<td><span class="state s-(\w+)', published
    )
    assert steps[-1] == ("+900 ms", "published")
    assert 'href="/person?site=acme&amp;email=ada%40example.com"' in published
    assert 'src="/request/content?id=pub-1"' in published


async def test_the_timeline_says_a_text_was_cut_at_its_token_cap(signed_in: Console):
    """A text cut at the completion's cap is published as it is; its TextGenerated said so
    (lifecycle schema 5), and no page did. A projection not migrated yet (a console upgraded
    before the projector) has no such column: its timeline is shown all the same, without it.
    The cap is named by no name: it went to OpenAI as ``max_tokens``, or as
    ``max_completion_tokens`` to a model that takes only that (the page said "max_tokens")."""
    cut = await signed_in.page("/request?id=pub-2")
    assert re.search(
        r'12 in \+ 30 out <span class="warn" id="truncated">text cut at its token cap<', cut
    )
    steps = re.findall(r'<tr class="step st-(\w+)">(.*?)</tr>', cut, re.DOTALL)
    assert [state for state, row in steps if "(text cut at its token cap)" in row] == ["generated"]
    assert "cut at its token cap" not in await signed_in.page("/request?id=pub-1")

    engine = signed_in.client.app[SERVICES].queries.engine
    migrate.migrate_to(engine, "0006")  # behind the console, with the column: still said
    behind = await signed_in.page("/request?id=pub-2")
    assert 'id="schema-behind"' in behind and 'id="truncated">text cut at its token cap<' in behind
    migrate.migrate_to(engine, "0005")  # the migration before the column
    behind = await signed_in.page("/request?id=pub-2")
    assert 'id="schema-behind"' in behind and 'id="state">published<' in behind
    assert "cut at its token cap" not in behind
    migrate.upgrade(engine)  # (what the migrations down and up lost, a replay gives back)
    assert "cut at its token cap" not in await signed_in.page("/request?id=pub-2")


async def test_the_timeline_names_the_talkable_event_a_published_text_landed_under(
    signed_in: Console,
):
    """The projection keeps the number Talkable holds a published request's event under
    (``requests.event_number``, migration 0009), what finds its event in Talkable; no page
    showed it (the content frame shows the number its webhook gives, from the log, which is
    gone past the topic's retention and is not where a text Talkable made write under
    another number landed). A request not published, or whose publication was reported
    before lifecycle schema 8, shows none; a projection not migrated to 0009 yet is shown
    without it."""
    page = await signed_in.page("/request?id=pub-1")  # under the campaign's own number
    assert '<code id="talkable-event">order-42-complete</code>' in page
    page = await signed_in.page("/request?id=pub-2")
    assert '<code id="talkable-event">generate_text_complete-pub-2</code>' in page
    for unnumbered in ("retry-1", "fail-1", "park-1", "lim-1"):
        page = await signed_in.page(f"/request?id={unnumbered}")
        assert 'id="talkable-event"' not in page, unnumbered

    await _shown_without(signed_in, "talkable-event", before="0009", of=("pub-1", "published"))


async def _shown_without(
    signed_in: Console, element: str, *, before: str, of: tuple[str, str]
) -> None:
    """A projection migrated back to the migration before ``before`` (which added what
    ``element`` shows): the request ``of`` (its id, its state) is shown, said behind, without
    it; and still without it once migrated up again (what the migrations down and up lost, a
    replay gives back)."""
    request_id, state = of
    engine = signed_in.client.app[SERVICES].queries.engine
    migrate.migrate_to(engine, f"{int(before) - 1:04d}")
    behind = await signed_in.page(f"/request?id={request_id}")
    assert 'id="schema-behind"' in behind and f'id="state">{state}<' in behind
    assert f'id="{element}"' not in behind
    migrate.upgrade(engine)
    assert f'id="{element}"' not in await signed_in.page(f"/request?id={request_id}")


async def test_a_parked_publication_names_the_talkable_event_it_attempted(signed_in: Console):
    """A publication Talkable refused wrote no event, and no page said under which number it
    tried: each publication transition keeps it (``transitions.event_number``, migration
    0010), and the page of a request parked or still publishing names its latest. A published
    request names where it landed instead; a projection not migrated to 0010 yet is shown
    without it."""
    parked = await signed_in.page("/request?id=park-1")  # Talkable refused the site's key
    assert '<code id="attempted-event">generate_text_complete-park-1</code>' in parked
    assert "did not land: see the reason" in parked and 'id="talkable-event"' not in parked
    for other in ("pub-1", "fail-1", "lim-1"):
        assert 'id="attempted-event"' not in await signed_in.page(f"/request?id={other}"), other

    await _shown_without(
        signed_in, "attempted-event", before="0010", of=("park-1", "publish_failed")
    )


async def test_a_request_page_that_names_no_request_is_a_400_naming_its_id(signed_in: Console):
    """``/request?id=`` (a link cut short, an empty search) answered 404 "No such request"
    where every other value a page cannot use is a 400 naming its field."""
    for path in ("/request", "/request/content"):
        for query in ("?id=", "?id=+", "", "?at=1767225600000"):
            page = await signed_in.page(f"{path}{query}", status=400)
            assert (
                '<p class="error" id="error">id: empty: say which request (its request id, as '
                "search lists it)</p>"
            ) in page and "Which request?" in page
        await signed_in.page(f"{path}?id=nonesuch", status=404)


async def test_the_content_frame_shows_the_webhook_text_and_event_number(signed_in: Console):
    body = await signed_in.page("/request/content?id=pub-1")
    assert 'id="event-number">generate_text_complete-pub-1<' in body
    assert "Roses are red" in body and "A verse for" in body
    assert '<span id="token-cap">token cap 60</span>' in body


def _adas_webhook(chat: ChatRequest, **fingerprints: str) -> RequestReceived:
    """The webhook of request pub-1 (Ada's, of site acme), with ``chat``, as the console
    reads it from [requests]; ``fingerprints``: the keys' ids the ingress wrote."""
    return RequestReceived(
        request_id="pub-1",
        delivery_id="pub-1/d1",
        person=person_key("acme", "ada@example.com"),
        at_ms=T0_MS,
        spec=RequestSpec(site="acme", email="ada@example.com", chat=chat),
        secrets=SealedSecrets(talkable_api_key=SEALED, openai_api_key=SEALED),
        **fingerprints,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("given", ["max_tokens", "max_completion_tokens"])
async def test_the_content_frame_shows_each_messages_name_and_the_caps_given_name(
    signed_in: Console, given: str
):
    """A message's optional ``name`` (OpenAI's, of its participant) is shown beside its role (the
    frame showed role and text only); the token cap is named only by the name the campaign
    gave it, ``max_completion_tokens``, sent as given: the request does not record whether
    the cap went as ``max_tokens`` or as ``max_completion_tokens`` (the frame never said, the
    page said "max_tokens")."""
    extra = {"max_completion_tokens": 400} if given == "max_completion_tokens" else {}
    messages = [
        {"role": "system", "content": "You write verses."},
        {"role": "user", "content": "A verse for Ada", "name": "Ada_Lovelace"},
    ]
    signed_in.log.received["pub-1"] = _adas_webhook(
        ChatRequest(model="my-reasoner", messages=messages, max_tokens=400, extra=extra)
    )
    body = await signed_in.page("/request/content?id=pub-1")
    shown = re.findall(
        r'<span class="role">(\w+)</span>(.*?)<pre class="text" id="message-(\d)">', body
    )
    assert shown == [
        ("system", "", "1"),
        ("user", ' <span class="name" id="message-2-name">Ada_Lovelace</span>', "2"),
    ]
    cap = re.search(r'<span id="token-cap">(.*?)</span>', body)
    assert cap is not None
    if given == "max_completion_tokens":
        assert cap[1] == "token cap 400 (max_completion_tokens, as the campaign gave it)"
    else:
        assert cap[1] == "token cap 400"
    assert "max_tokens" not in body


async def test_the_content_frame_names_the_webhooks_keys_by_their_fingerprints(
    signed_in: Console,
):
    """A request stuck generating (or refused) is tied to its keys: the fingerprints the
    overview's OpenAI keys table and the worker's metrics name their targets by, read from the
    webhook (the frame named no key, so an operator could not tell which key's row, with its
    queue and open circuit, held the request); never the key itself."""
    openai_key, talkable_key = "sk-console-fingerprint-0001", "talkable-fingerprint-0001"
    chat = ChatRequest(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "A verse for Ada"}],
        max_tokens=60,
    )
    signed_in.log.received["pub-1"] = _adas_webhook(
        chat,
        openai_key_id=key_fingerprint(openai_key),
        talkable_key_id=key_fingerprint(talkable_key),
    )
    body = await signed_in.page("/request/content?id=pub-1")
    assert f'id="openai-key">{key_fingerprint(openai_key)}<' in body
    assert f'id="talkable-key">{key_fingerprint(talkable_key)}<' in body
    assert openai_key not in body and talkable_key not in body and SEALED not in body
    # a webhook from before the ingress wrote them: no fingerprint, said so
    signed_in.log.received["pub-1"] = _adas_webhook(chat)
    body = await signed_in.page("/request/content?id=pub-1")
    assert 'id="openai-key">—<' in body and 'id="talkable-key">—<' in body


@pytest.mark.parametrize(
    ("attempt", "tries", "said"),
    [
        (1, 1, "(attempt 1)"),
        (
            1,
            4,
            "(attempt 1, its call 4: the worker retried the 3 before it, which failed or were"
            " throttled)",
        ),
        (
            2,
            2,
            # one call before it: "the one ..., which ... was", not "the 1 ..., which ... were"
            "(attempt 2, its call 2: the worker retried the one before it, which failed or was"
            " throttled)",
        ),
    ],
    ids=["first-call", "after-three-500s", "re-issued"],
)
async def test_the_generated_text_says_the_call_of_its_attempt_it_came_from(
    signed_in: Console, attempt: int, tries: int, said: str
):
    """A text OpenAI gave at the fourth call, after three 500s the worker retried within the
    attempt, read "(attempt 1)": the lifecycle counts the ledger's attempts (re-issues), not
    the calls of one. The attempt's result says how many it made (``tries``)."""
    webhook = _adas_webhook(ChatRequest(model="gpt-4o-mini", messages=[], max_tokens=60))
    signed_in.log.received["pub-1"] = webhook
    signed_in.log.generated["pub-1"] = GenerationAttemptSucceeded(
        request_id="pub-1",
        person=webhook.person,
        attempt=attempt,
        at_ms=T0_MS + 700,
        text="a verse",
        model="gpt-4o-mini",
        tries=tries,
    )
    body = await signed_in.page("/request/content?id=pub-1")
    assert f'<span class="muted small" id="text-attempt">{said}</span>' in body


def _result(kind: Any, request_id: str, calls: int, attempt: int = 1, **more: Any) -> Any:
    """A generation's failure or a publication's result of ``request_id`` after ``calls``."""
    person = person_key("globex" if request_id == "pub-3" else "acme", "ada@example.com")
    if kind is GenerationAttemptFailed or kind is PublicationAttemptFailed:
        more = {"error_class": "ServerError", "error_message": "500", **more}
    return kind(
        request_id=request_id, person=person, attempt=attempt, at_ms=T0_MS, tries=calls, **more
    )


@pytest.mark.parametrize(
    ("result", "said"),
    [
        (
            _result(PublicationAttemptSucceeded, "pub-1", 9),
            'Talkable calls (published)</dt><dd id="talkable-calls">attempt 1: 9 calls <span'
            ' class="muted">(the worker retried the 8 before the last, which failed or were'
            " throttled)</span></dd>",
        ),
        (
            _result(PublicationAttemptSucceeded, "pub-1", 2, attempt=2),
            '<dd id="talkable-calls">attempt 2: 2 calls <span class="muted">(the worker retried'
            " the one before the last, which failed or was throttled)</span></dd>",
        ),
        (
            _result(PublicationAttemptFailed, "pub-1", 1, status=400),
            "Talkable calls (its publication failed)</dt><dd"
            ' id="talkable-calls">attempt 1: 1 call</dd>',
        ),
        (  # a refusal that still covered it (schema 10 says so; before, its tries were 0)
            _result(PublicationAttemptFailed, "pub-1", 1, not_called=True),
            '<dd id="talkable-calls">attempt 1: not called</dd>',
        ),
        (
            _result(GenerationAttemptFailed, "fail-1", 3),
            'OpenAI calls (its generation failed)</dt><dd id="openai-calls">attempt 1: 3'
            ' calls <span class="muted">(the worker retried the 2 before the last, which failed'
            " or were throttled)</span></dd>",
        ),
    ],
    ids=["published-at-call-9", "re-issued-call-2", "refused", "not-called", "generation"],
)
async def test_the_content_frame_says_the_calls_of_the_last_attempt_at_each_upstream(
    signed_in: Console, result: Any, said: str
):
    """A request Talkable refused after eight 500s the worker retried within one attempt read
    "attempts 1", "attempt 1" on each step, and nothing of its calls: as if Talkable had been
    called once (the lifecycle counts the ledger's attempts, not the calls of one). The frame
    says the calls of its last publication, and of a generation that failed, from the
    attempt's result on the log, as it says the generated text's."""
    request_id = result.request_id
    webhook = _adas_webhook(ChatRequest(model="gpt-4o-mini", messages=[], max_tokens=60))
    signed_in.log.received[request_id] = webhook.model_copy(update={"request_id": request_id})
    if isinstance(result, GenerationAttemptFailed):
        signed_in.log.failures[request_id] = result
    else:
        signed_in.log.publications[request_id] = result
    body = await signed_in.page(f"/request/content?id={request_id}")
    assert said in body
    # the attempts the page and a search count say whose they are, and where the calls are
    page = await signed_in.page(f"/request?id={request_id}")
    assert "(the ledger's; the calls of each upstream's last: below)" in page
    found = await signed_in.page("/requests")
    assert "the worker's own retries of a 5xx, a timeout or a 429 within one are not" in found
    # a generation that failed, then succeeded (retry-1, re-issued): its text says its call,
    # and no failed generation's calls are looked for
    signed_in.log.received["retry-1"] = webhook.model_copy(update={"request_id": "retry-1"})
    signed_in.log.failures["retry-1"] = _result(GenerationAttemptFailed, "retry-1", 3)
    retried = await signed_in.page("/request/content?id=retry-1")
    assert 'id="openai-calls"' not in retried


async def test_a_persons_usage_window_against_its_limit(signed_in: Console):
    body = await signed_in.page("/person?site=acme&email=ada@example.com")
    assert re.search(r'<span class="big">2 of 3</span>', body)  # lim-1: the window was full
    assert "(ended: the next request opens a new one)" not in body  # NOW is 10 min in
    assert re.findall(RID, body) == [
        "lim-1",
        "pub-2",
        "pub-1",
    ]
    await signed_in.page("/person?site=acme&email=nobody@example.com", status=404)
    # a person page that names no one is a 400 naming each field left empty (it was a 404)
    for query, fields in (
        ("site=acme&email=", ["email"]),
        ("site=+&email=ada@example.com", ["site"]),
        ("", ["site", "email"]),
    ):
        unnamed = await signed_in.page(f"/person?{query}", status=400)
        said = "; ".join(f"{f}: empty: say which person (its site and email)" for f in fields)
        assert f'<p class="error" id="error">{said}</p>' in unnamed and "Which person?" in unnamed
    # a cursor that is not one: the newest page, and a 400 that says so (as search does)
    bad = await signed_in.page("/person?site=acme&email=ada@example.com&before=xx", status=400)
    assert '<p class="error">before: not a page cursor</p>' in bad and "lim-1" in bad


async def test_numbers_past_the_databases_integers_in_a_link_are_no_server_error(
    signed_in: Console,
):
    """An edited link's ``at`` or cursor past a BIGINT went to the database, which refused it
    (SQLite: OverflowError; PostgreSQL: out of range): a 500 and a traceback in the log. An
    ``at`` it cannot read is a 400 naming it, as a non-number is, that shows the latest
    request of the id (as a bad cursor shows the newest page); a cursor it cannot read is the
    400 any bad cursor is."""
    huge = "9" * 23
    for at in (huge, "²", "soon"):  # "²" is a digit to str.isdigit, not to int()
        page = await signed_in.page(f"/request?id=pub-1&at={at}", status=400)
        said = f"at: &#39;{at}&#39; is not an event time (ms since the epoch): the id&#39;s latest"
        assert f'<p class="error" id="error">{said}' in page
        assert 'id="state">published<' in page
        frame = await signed_in.page(f"/request/content?id=pub-1&at={at}", status=400)
        assert f'<p class="error" id="asked">{said}' in frame and "Roses are red" in frame
    # an empty one names none: the latest, as without it
    assert 'id="error"' not in await signed_in.page("/request?id=pub-1&at=")
    for at_ms in (10**30, -(10**30)):
        raw = json.dumps([at_ms, "pub-1"]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        searched = await signed_in.page(f"/requests?before={cursor}", status=400)
        assert '<p class="error">before: not a page cursor</p>' in searched
        person = f"/person?site=acme&email=ada@example.com&after={cursor}"
        assert '<p class="error">after: not a page cursor</p>' in await signed_in.page(
            person, status=400
        )


async def test_dead_letters_show_what_became_of_their_requests(signed_in: Console):
    body = await signed_in.page("/deadletters")
    assert 'id="letter-count">2<' in body and 'id="parked-count">1<' in body
    assert "</b> letters, <b" in body and "</b> parked request that can be redriven" in body
    assert "Preview redrive of this one…" in body
    assert "parked: can be redriven" in body
    # the ledger's letter: the topic its command was for, and the record it was deciding
    assert (
        '<code>functest-completions</code> <span class="muted">(work the ledger gave up on, '
        "deciding <code>functest-requests/2/41</code>)</span>"
    ) in body
    assert "<code>functest-requests/1/9</code>" in body  # a message: where it was read
    filtered = await signed_in.page("/deadletters?reason=401")
    assert 'id="letter-count">1<' in filtered and "</b> letter, <b" in filtered
    bad = await signed_in.page("/deadletters?until=soon", status=400)
    assert "until: &#39;soon&#39; is not a time" in bad
    reversed_ = await signed_in.page("/deadletters?since=1h&until=2h", status=400)
    assert "the range is empty" in reversed_


async def test_a_letter_of_a_record_that_does_not_decode_is_said_not_redriven(
    signed_in: Console,
) -> None:
    """The page told an operator that messages that did not decode "are redriven with
    talkstream redrive --topic", which sent one that still does not decode back to its topic,
    to be dead-lettered again. The page and the preview say such letters are not redriven,
    what to fix, and that they stay; a message this version reads is still "a message"."""
    poison = replace(LETTERS[1], undecodable=True)
    signed_in.log.letters_ = [LETTERS[0], poison]
    body = await signed_in.page("/deadletters")
    assert "does not decode: not redriven (fix the producer)" in body
    assert "Messages (no request) are not redriven here" in body
    csrf = await signed_in.csrf()
    preview = await (await signed_in.post("/deadletters/preview", {"csrf": csrf})).text()
    assert (
        '<p class="muted" id="undecodable">1 letter of a record that does not decode is not'
        " redriven: fix the producer; it stays in the dead-letter topic.</p>"
    ) in preview
    assert 'id="would-count">1<' in preview  # the parked request is still offered
    signed_in.log.letters_ = [LETTERS[0], poison, replace(poison, offset=10)]
    preview = await (await signed_in.post("/deadletters/preview", {"csrf": csrf})).text()
    assert "2 letters of records that do not decode are not redriven" in preview
    signed_in.log.letters_ = list(LETTERS)  # a message this version reads
    body = await signed_in.page("/deadletters")
    assert "not redriven (fix the producer)" not in body and ">a message<" in body
    preview = await (await signed_in.post("/deadletters/preview", {"csrf": csrf})).text()
    assert 'id="undecodable"' not in preview


def test_a_letter_read_from_the_log_says_whether_its_record_decodes_now() -> None:
    """What the console reads of a letter: whether this version decodes its record (as
    ``talkstream redrive`` decides), for a message of any of the four topics; parked work,
    which the ledger runs again, is never said not to decode."""
    from types import SimpleNamespace

    from models.events import DeadLetter
    from streams.codecs import encode
    from streams.console.log import _letter
    from streams.settings import Settings
    from tests.unit.domain_builders import received

    settings = Settings(app_id="functest")

    def read(topic: str, value: bytes, partition: int = 1) -> Letter | None:
        letter = DeadLetter(
            topic=settings.topic(topic),
            partition=partition,
            offset=9 if partition >= 0 else -1,
            reason="does not decode: value: Invalid JSON",
            key="k",
            value_b64=base64.b64encode(value).decode(),
            at_ms=T0_MS,
        )
        record = SimpleNamespace(value=encode(letter), timestamp=T0_MS, partition=0, offset=3)
        return _letter(record, settings)

    for topic in ("requests", "generate", "completions", "lifecycle"):
        found = read(topic, b"garbage")
        assert found is not None and found.undecodable, topic
    readable = read("requests", encode(received("req-1")))
    assert readable is not None and not readable.undecodable
    parked = read("completions", b"garbage", partition=-1)  # (the letter's own "unreadable")
    assert parked is not None and not parked.undecodable


async def test_dead_letters_of_a_site_typed_in_another_case_are_that_sites(signed_in: Console):
    body = await signed_in.page("/deadletters?site=ACME")
    assert 'id="letter-count">1<' in body and 'name="site" value="acme"' in body
    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", {"site": "Acme", "csrf": csrf})
    assert preview.status == 200 and 'id="would-count">1<' in await preview.text()
    [(selection, dry_run)] = signed_in.log.redrives
    assert dry_run and selection.site == "acme" and selection.request_ids == {"park-1"}


def test_dead_letters_of_a_site_are_those_of_every_spelling_of_it() -> None:
    """The dead-letter page's site compared each letter's request's site as typed: ``SHOP``
    (shown as typed, several spellings sharing it) listed none of ``Shop``'s or ``shop``'s
    letters. A site in any case is one site: every spelling's letters, not another site's."""
    from types import SimpleNamespace

    from streams.console.letters import LetterFilters
    from streams.projection.tables import RequestRow

    typed = LetterFilters(
        site="SHOP", reason=None, topic=None, since_ms=None, until_ms=None, request_id=None
    )
    letter: Any = SimpleNamespace(request_id="r", topic="t", reason="why", at_ms=T0_MS)
    assert all(typed.matches(letter, RequestRow(site=site)) for site in ("Shop", "shop"))
    assert not typed.matches(letter, RequestRow(site="shop-2"))


async def test_dead_letters_are_listed_a_page_at_a_time_and_counted_in_full(
    signed_in: Console,
):
    """Thousands of letters (an outage) are not one page of megabytes: 200 a page, newest
    first, with links that keep the filters; the counts and the redrive cover them all."""
    many = [
        replace(LETTERS[1], reason=f"does not decode #{i}", letter_offset=i, at_ms=T0_MS - i)
        for i in range(450)
    ]
    signed_in.log.letters_ = [LETTERS[0], *many]
    first = await signed_in.page("/deadletters")
    assert 'id="letter-count">451<' in first and 'id="parked-count">1<' in first
    assert first.count('class="reason"') == 200 and "does not decode #198<" in first
    assert "letters 1\u2013200 of 451" in first and 'id="newer"' not in first
    assert 'id="older" href="/deadletters?page=2"' in first
    last = await signed_in.page("/deadletters?page=3")
    assert last.count('class="reason"') == 51 and "does not decode #449<" in last
    assert 'href="/deadletters?page=2">← newer' in last and 'id="older"' not in last
    assert (await signed_in.page("/deadletters?page=99")).count('class="reason"') == 51
    kept = await signed_in.page("/deadletters?reason=decode")
    assert 'href="/deadletters?reason=decode&amp;page=2"' in kept
    bad = await signed_in.page("/deadletters?page=0", status=400)
    assert "page: &#39;0&#39; is not a page number" in bad


async def test_older_letters_than_the_page_reads_are_counted_and_sent_to_the_cli(
    signed_in: Console,
):
    """The page reads the newest letters of each partition: a blast that parked more says how
    many older ones it neither shows nor redrives, and what reaches them (it said nothing: an
    operator redrove 'every' parked request from it and left the rest parked)."""
    assert 'id="unread"' not in await signed_in.page("/deadletters")
    signed_in.log.unread = 1234
    body = await signed_in.page("/deadletters")
    assert f"Only the newest {LETTERS_PER_PARTITION} letters of each partition" in body
    assert "<b>1,234</b> older letters are neither shown nor redriven from this page" in body
    assert "<code>talkstream redrive</code>" in body
    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", {"csrf": csrf})
    assert "<b>1,234</b> older letters are neither shown" in await preview.text()


async def test_dead_letters_by_the_topic_they_came_from(signed_in: Console):
    # the filter offers the topics letters come from, named as the README names them
    body = await signed_in.page("/deadletters")
    choices = re.findall(r'<option value="([^"]*)"', body.split('name="topic"')[1])
    assert choices == ["", "requests", "generate", "completions", "lifecycle"]
    for topic in ("completions", "functest-completions"):  # without the app id, or in full
        page = await signed_in.page(f"/deadletters?topic={topic}")
        assert 'id="letter-count">1<' in page and "functest-requests/2/41" in page
        assert '<option value="completions" selected>' in page
    none = await signed_in.page("/deadletters?topic=lifecycle")
    assert 'id="letter-count">0<' in none
    typo = await signed_in.page("/deadletters?topic=completion", status=400)
    # named as the page's other fields are ("since: ...", "page: ...")
    assert "topic: &#39;completion&#39; is not a topic dead letters come from" in typo
    assert "functest-requests, functest-generate" in typo
    assert 'id="letter-count"' not in typo and 'id="not-read"' in typo  # none were read
    bad_page = await signed_in.page("/deadletters?page=x", status=400)
    assert "page: &#39;x&#39; is not a page number" in bad_page
    assert 'id="letter-count"' not in bad_page and "no dead letters" not in bad_page
    # a digit that is not an ASCII one ("²": isdigit, and int() refuses it) is named too: it
    # said "invalid literal for int() with base 10: '²'", naming no field
    superscript = await signed_in.page("/deadletters?page=%C2%B2", status=400)
    assert "page: &#39;²&#39; is not a page number" in superscript

    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", {"topic": "completions", "csrf": csrf})
    assert preview.status == 200 and 'id="would-count">1<' in await preview.text()
    [(selection, dry_run)] = signed_in.log.redrives
    assert dry_run and selection.topic == "functest-completions"


async def test_a_whole_request_id_breaks_only_after_its_tilde_or_before_its_slash(
    signed_in: Console,
):
    """A request id (listed, in a redrive's preview, in what it redrove) broke at its hyphens:
    ``pub-`` over ``3~pub-`` over ``3/d2``. Its parts are kept whole, a ``<wbr>`` between."""
    templates = signed_in.client.app[TEMPLATES]
    shown = templates.from_string('{% from "_rid.html" import rid %}{{ rid(given) }}').render(
        given="pub-3~pub-3/d2<b>"
    )

    assert shown == (
        '<span class="whole">pub-3~</span><wbr><span class="whole">pub-3</span><wbr>'
        '<span class="whole">/d2&lt;b&gt;</span>'
    )


async def test_redrive_previews_with_a_dry_run_then_redrives_what_it_showed(signed_in: Console):
    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", {"reason": "401", "csrf": csrf})
    body = await preview.text()
    assert preview.status == 200 and 'id="would-count">1<' in body
    [(selection, dry_run)] = signed_in.log.redrives
    assert dry_run and selection.request_ids == frozenset({"park-1"})
    assert selection.reason_contains == "401"

    confirm = await signed_in.post(
        "/deadletters/redrive",
        [("reason", "401"), ("id", "park-1"), ("id", "pub-1"), ("id", "nope"), ("csrf", csrf)],
    )
    done = await confirm.text()
    assert confirm.status == 200 and 'id="redriven-count">1<' in done
    assert "</b> request went back to the ledger" in done
    (selection, dry_run) = signed_in.log.redrives[-1]
    # only what is still parked: pub-1 was published
    assert not dry_run and selection.request_ids == frozenset({"park-1"})
    assert "Not parked any more, so not redriven: pub-1<" in done
    assert "Not in the projection, so not redriven: nope<" in done


async def test_a_redrive_of_every_letter_the_page_can_list_fits_in_its_form(signed_in: Console):
    """The confirm form carries the id of each request the preview showed: as many as the
    page lists (500 letters a partition), not only what fits in 64 KiB (about 1,800)."""
    settings = signed_in.client.app[SERVICES].settings
    ids = [("id", f"{i:032x}") for i in range(LETTERS_PER_PARTITION * settings.partitions)]
    csrf = await signed_in.csrf()
    confirm = await signed_in.post("/deadletters/redrive", [*ids, ("csrf", csrf)])
    done = await confirm.text()
    assert confirm.status == 200, done[:200]
    assert f"Not in the projection, so not redriven: {0:032x}, " in done


async def test_a_redrive_names_a_letter_of_an_earlier_attempt_it_left_alone(
    signed_in: Console, monkeypatch: pytest.MonkeyPatch
):
    """The filters selected a parked request's older letter, not the one it was parked again
    by: the redrive sends nothing for it (the ledger would ignore it), and the page says so
    rather than counting it redriven."""
    said = "park-1 (a letter of publishing attempt 1; parked since by publishing attempt 2, ...)"

    async def redrive(selection: Selection, *, dry_run: bool) -> RedriveReport:
        return RedriveReport(examined=2, earlier_attempt=[said])

    monkeypatch.setattr(signed_in.log, "redrive", redrive)
    csrf = await signed_in.csrf()
    confirm = await signed_in.post(
        "/deadletters/redrive", [("reason", "401"), ("id", "park-1"), ("csrf", csrf)]
    )
    done = await confirm.text()
    assert confirm.status == 200 and 'id="redriven-count">0<' in done
    assert "A letter of an earlier attempt, so not redriven" in done
    assert "parked since by publishing attempt 2" in done


async def test_a_redrive_names_the_requests_parked_too_long_ago_for_the_ledger(
    signed_in: Console, monkeypatch: pytest.MonkeyPatch
):
    """A request parked past the ledger's retention is forgotten there: the redrive sends
    nothing for it, and the preview and the redrive page say so and what to do instead."""
    said = "park-1 (parked 31 days ago; the ledger has forgotten it ... send the webhook again"

    async def redrive(selection: Selection, *, dry_run: bool) -> RedriveReport:
        return RedriveReport(examined=1, too_old=[said])

    monkeypatch.setattr(signed_in.log, "redrive", redrive)
    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", [("reason", "401"), ("csrf", csrf)])
    confirm = await signed_in.post(
        "/deadletters/redrive", [("reason", "401"), ("id", "park-1"), ("csrf", csrf)]
    )
    for page in (await preview.text(), await confirm.text()):
        assert "Parked longer ago than the ledger keeps parked requests" in page
        assert "park-1 (parked 31 days ago" in page


async def test_a_letter_of_a_webhook_whose_params_did_not_fit_is_not_offered_a_redrive(
    signed_in: Console,
    database_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A webhook whose params did not fit the person's ledger entry ended generation_failed
    (``EntryTooLarge``) without being parked: the page said "parked: can be redriven" and
    offered a redrive the ledger runs nothing for. It says it was never parked and offers none;
    the preview and the redrive page name what the redrive left alone."""
    log = Log(_next=dict.fromkeys(range(4), 1000))  # offsets after the fixture's
    r = log.received("big-1", email="bea@example.com", at_ms=T0_MS + 2000)
    log.failed(r, at_ms=r.at_ms)
    store = ProjectionStore.from_url(database_url, migrate_schema=False)
    store.apply(log.records)
    store.close()
    reason = (
        "EntryTooLarge: the person's ledger entry would hold 603,145 bytes of requests in"
        " flight or parked with its params, more than the 585,728 of MAX_ENTRY_BYTES (786,432)"
        " left for them: their other requests in flight or parked hold their params and texts"
    )
    signed_in.log.letters_ = [replace(_letter_of(r, r.at_ms + 1, 5), reason=reason)]

    body = await signed_in.page("/deadletters")
    assert "never parked (its params did not fit): send the webhook again" in body
    assert "parked: can be redriven" not in body and 'class="redrive-one"' not in body
    assert 'id="parked-count">0<' in body

    said = "big-1"  # what the redrive says of it, after its id (tests/unit/test_redrive.py)

    async def redrive(selection: Selection, *, dry_run: bool) -> RedriveReport:
        return RedriveReport(examined=1, never_parked=[said])

    monkeypatch.setattr(signed_in.log, "redrive", redrive)
    csrf = await signed_in.csrf()
    preview = await signed_in.post("/deadletters/preview", [("site", "acme"), ("csrf", csrf)])
    confirm = await signed_in.post(
        "/deadletters/redrive", [("site", "acme"), ("id", "big-1"), ("csrf", csrf)]
    )
    for page in (await preview.text(), await confirm.text()):
        assert "Never parked (their params did not fit the person's ledger entry)" in page
        assert "they are not redriven: big-1" in page


async def test_an_overview_window_it_does_not_offer_is_a_400_showing_the_last_hour(
    signed_in: Console,
):
    for window in ("garbage", "-1h", "0"):
        body = await signed_in.page(f"/?window={window}", status=400)
        assert '<p class="error">window: one of 15m, 1h, 6h, 24h</p>' in body
        assert "requests in the last 1h" in body


async def test_the_overview_charts_terminal_states_per_minute_and_sites(signed_in: Console):
    body = await signed_in.page("/?window=15m")
    assert body.count("<rect x=") >= 3
    assert "00:00 UTC: 4 published" in body  # all in minute 0 after T0
    assert "00:00 UTC: 1 publish_failed" in body
    sites = re.search(r'<table class="grid" id="sites">(.*?)</table>', body, re.S)
    assert sites
    assert ">acme<" in sites.group(1) and ">globex<" in sites.group(1)
    assert "not reachable: http://127.0.0.1:1/metrics" in body
    # arrival -> published: 900 ms, 1.0 s, 1.4 s, 1.6 s (nearest rank)
    assert 'id="p50">1.0 s<' in body and 'id="p95">1.6 s<' in body
    # over a day, a bar every ten minutes (a bar a minute would be 0.6 px wide)
    day = await signed_in.page("/?window=24h")
    assert '<h2 id="chart-title">Requests per 10 minutes, by terminal state</h2>' in day
    assert "00:00\u201300:10 UTC: 4 published" in day


def failures_log() -> Log:
    """acme's generations refused for 4 reasons (7 requests, one reason's message holding a
    key as an OpenAI-compatible server might echo it), one request of another site refused."""
    log = Log()
    reasons = ["InsufficientQuota"] * 3 + ["AuthenticationError"] * 2 + ["ModelNotFound", "Odd"]
    for i, reason in enumerate([*reasons, "SiteOnly"]):
        site = "acme" if reason != "SiteOnly" else "globex"
        r = log.received(f"f-{i}", site=site, email=f"f{i}@example.com", at_ms=T0_MS + i * 10)
        log.send(
            GenerationAttemptFailed(
                request_id=r.request_id,
                person=r.person,
                attempt=1,
                at_ms=T0_MS + i * 10 + 5,
                error_class=reason,
                error_message=f"refused key sk-secret-{i}",
            )
        )
    return log


async def test_the_overviews_failed_names_each_sites_commonest_reasons(tmp_path: Path):
    """An operator saw "7" failed and had to open each request to learn why: the cell now
    names the commonest error classes (never an error's message, which may echo a key)."""
    url = f"sqlite:///{tmp_path / 'projection.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(failures_log().records)
    store.close()
    engine = make_engine(url)
    [acme, globex] = ConsoleQueries(engine).overview(T0_MS, NOW_MS).sites
    assert acme.reasons == {
        "InsufficientQuota": 3,
        "AuthenticationError": 2,
        "ModelNotFound": 1,
        "Odd": 1,
    }
    assert acme.leading_reasons() == (
        [("InsufficientQuota", 3), ("AuthenticationError", 2), ("ModelNotFound", 1)],
        1,
    )
    assert globex.reasons == {"SiteOnly": 1}
    body = await overview_page(tmp_path, engine, url)
    cells = re.findall(r'<td class="failed-why">(.*?)</td>', body, re.S)
    listed = [re.findall(r"<li[^>]*>(.*?)</li>", cell) for cell in cells]
    assert [[re.sub(r"<[^>]+>", "", item) for item in items] for items in listed] == [
        ["InsufficientQuota 3", "AuthenticationError 2", "ModelNotFound 1", "others 1"],
        ["SiteOnly 1"],
    ]
    assert "sk-secret" not in body


def test_the_overview_reads_only_indexes_sized_to_what_it_shows(tmp_path: Path):
    """What ended in the window from ``ix_requests_ended`` alone (never the rows: at 1,000,000
    requests the 24-hour overview read 114,000 of them), and the requests in flight by site
    from their own small index (not an index of every request)."""
    engine = make_engine(projection(tmp_path))
    statements: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    ConsoleQueries(engine).overview(NOW_MS - 86_400_000, NOW_MS)
    event.remove(engine, "before_cursor_execute", grab)
    with engine.connect() as connection:
        plans = [
            " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {s}", p))
            for s, p in statements
        ]
    engine.dispose()
    assert len(plans) == 5, plans
    ended = [
        plan
        for plan, (sql, _) in zip(plans, statements, strict=True)
        if "terminal_at" in sql and "error_class" not in sql
    ]
    assert len(ended) == 3 and all("COVERING INDEX ix_requests_ended" in p for p in ended), plans
    # the failures' reasons: the same range, a row read only where the index says it failed
    # (never ix_requests_state: every failed request ever)
    [reasons] = [
        plan for plan, (sql, _) in zip(plans, statements, strict=True) if "error_class" in sql
    ]
    assert "SEARCH requests USING INDEX ix_requests_ended (terminal_at_ms>?" in reasons, plans
    [in_flight] = [p for p in plans if p not in ended and p != reasons]
    assert "USING INDEX ix_requests_in_flight" in in_flight, plans


def test_the_overview_counts_whole_minutes_from_the_projectors_counts_a_minute(tmp_path: Path):
    """Migration 0007: the window's whole minutes from a range of ``ended_minutes`` (the
    counts a minute, site and state), its partial first and last minute and the latencies from
    ``ix_requests_ended``."""
    engine = make_engine(projection(tmp_path))
    queries = ConsoleQueries(engine)
    since = NOW_MS - 86_400_000 + 1_234
    ran = statements_of(engine, lambda: queries.overview(since, NOW_MS, minutes=True))
    with engine.connect() as connection:
        plans = [
            " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {s}", p))
            for s, p in ran
        ]
    engine.dispose()
    minutes = [plan for plan, (sql, _) in zip(plans, ran, strict=True) if "ended_minutes" in sql]
    assert len(minutes) == 2, plans
    assert all("SEARCH ended_minutes USING INDEX" in p and "minute>?" in p for p in minutes), plans
    ended = [
        plan
        for plan, (sql, _) in zip(plans, ran, strict=True)
        if "terminal_at" in sql and "error_class" not in sql
    ]
    # each count's two partial minutes (NOW_MS is on a minute's edge: one), the latencies
    assert len(ended) == 3 and all("COVERING INDEX ix_requests_ended" in p for p in ended), plans
    # the failures' reasons (ended_minutes has no error class): the window's range of the index
    [reasons] = [plan for plan, (sql, _) in zip(plans, ran, strict=True) if "error_class" in sql]
    assert "SEARCH requests USING INDEX ix_requests_ended (terminal_at_ms>?" in reasons, plans


def statements_of(engine: Any, work: Any) -> list[tuple[str, Any]]:
    """The statements ``work()`` ran on ``engine``, with their parameters."""
    statements: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    return statements


def test_the_overview_ranks_its_latencies_in_the_database_not_a_row_per_request(tmp_path: Path):
    """p50 and p95 of arrival -> published, nearest rank, with two rows fetched: the 24-hour
    overview at 1,000,000 requests fetched every published request's latency (114,000) into
    Python, half its time."""
    log = mixed_log()
    for i in range(300):
        log.full(f"many-{i:03d}", email=f"m{i}@example.com", at_ms=T0_MS + i, latency_ms=i * 7)
    url = f"sqlite:///{tmp_path / 'projection.sqlite3'}"
    store = ProjectionStore.from_url(url)
    store.apply(log.records)
    with store.engine.connect() as connection:
        latencies = sorted(
            ended - arrived
            for ended, arrived in connection.execute(
                text(
                    "SELECT terminal_at_ms, COALESCE(arrived_at_ms, received_at_ms)"
                    " FROM requests WHERE state = 'published'"
                )
            )
        )
    store.close()
    engine = make_engine(url)
    queries = ConsoleQueries(engine)
    found: list[Any] = []
    ran = statements_of(engine, lambda: found.append(queries.overview(T0_MS, NOW_MS)))
    [overview] = found
    assert overview.published == len(latencies) == 304
    assert overview.p50_ms == latencies[152 - 1] and overview.p95_ms == latencies[289 - 1]
    with engine.connect() as connection:
        fetched = [len(connection.exec_driver_sql(s, p).all()) for s, p in ran]
    engine.dispose()
    assert max(fetched) < 20, fetched  # minutes, sites, states: never a row per request
    # an empty window: none published, no percentiles
    empty = ConsoleQueries(make_engine(url)).overview(NOW_MS, NOW_MS + 60_000)
    assert (empty.published, empty.p50_ms, empty.p95_ms) == (0, None, None)


@pytest.mark.parametrize(
    "filters",
    [Filters(state="failed"), Filters(state="in_flight"), Filters(site="acme", state="failed")],
    ids=["failed", "in-flight", "a-sites-failed"],
)
def test_a_group_of_states_is_searched_a_state_at_a_time_by_index(tmp_path: Path, filters: Any):
    """Without statistics (SQLite gathers none by itself), ``state IN (...)`` was met by
    reading every failed request ever by ``ix_requests_state`` and sorting them: 160 ms at
    1,000,000 requests against 5 ms for a range of ``ix_requests_state_received`` a state."""
    engine = make_engine(projection(tmp_path))
    queries = ConsoleQueries(engine)
    ran = statements_of(engine, lambda: queries.search(filters))
    with engine.connect() as connection:
        plans = [
            " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {s}", p))
            for s, p in ran
        ]
        assert not connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).all(), "no statistics, as before the projector first gathers them"
    engine.dispose()
    # a site is read in any case: its spellings first, by one loose scan of the sites' index
    # (then a query a spelling and state)
    spelled = [plan for plan in plans if plan.startswith("CO-ROUTINE s ")]
    assert len(spelled) == bool(filters.site), plans
    assert all("USING COVERING INDEX ix_requests_site_received" in p for p in spelled), plans
    searched = [plan for plan in plans if plan not in spelled]
    assert len(searched) > 1, plans
    index = "ix_requests_site_state_received" if filters.site else "ix_requests_state_received"
    assert all(f"USING INDEX {index} (" in plan for plan in searched), plans
    assert not any("TEMP B-TREE" in plan for plan in plans), plans


def test_pacing_is_read_from_the_workers_metrics():
    pacing = Pacing()
    text = (
        "# TYPE talkstream_upstream_queue_depth gauge\n"
        'talkstream_upstream_queue_depth{upstream="talkable",target="acme"} 7.0\n'
        'talkstream_upstream_queue_depth{upstream="openai",target="0123456789abcdef",'
        'model="gpt-4o"} 2.0\n'
        'talkstream_upstream_queue_depth{upstream="openai",target="0123456789abcdef",'
        'model="gpt-4o-mini"} 5.0\n'
        "# TYPE talkstream_upstream_throttled_total counter\n"
        'talkstream_upstream_throttled_total{upstream="talkable",target="acme"} 4.0\n'
        "# TYPE talkstream_upstream_circuit gauge\n"
        'talkstream_upstream_circuit{upstream="talkable",target="acme"} 2.0\n'
    )
    parse(text, pacing)
    parse(text, pacing)  # a second worker: figures add up, the worst circuit wins
    acme = pacing.site("acme")
    assert acme is not None
    assert (acme.queue_depth, acme.throttled, acme.circuit_name) == (14, 8, "open")
    # the workers label a site in any case as one (lower-cased): a site its webhooks spelled
    # "ACME" is that target, not "no calls"
    assert pacing.site("ACME") == acme
    # one key, two models: each its own row (OpenAI limits them apart), the busiest first
    assert [(k.target, k.model, k.queue_depth) for k in pacing.openai()] == [
        ("0123456789abcdef", "gpt-4o-mini", 10),
        ("0123456789abcdef", "gpt-4o", 4),
    ]


def worker_metrics(queued: float, rate: float, circuit: int) -> str:
    target = 'upstream="openai",target="0123456789abcdef",model="gpt-4o"'
    return (
        "# TYPE talkstream_upstream_queue_depth gauge\n"
        f"talkstream_upstream_queue_depth{{{target}}} {queued}\n"
        "# TYPE talkstream_upstream_rate gauge\n"
        f"talkstream_upstream_rate{{{target}}} {rate}\n"
        "# TYPE talkstream_upstream_circuit gauge\n"
        f"talkstream_upstream_circuit{{{target}}} {circuit}\n"
    )


def test_a_targets_pace_is_its_callers_not_the_sum_of_every_worker_that_knew_it():
    """One worker calls a target at a time; the worker it was on before a rebalance still
    reports the pace it learned (and a circuit it never closed): two workers knowing a key's
    15/s pace once showed 30/s."""
    for order in ((3, 0), (0, 3)):  # the worker calling it scraped first or last
        pacing = Pacing()
        for queued in order:
            parse(worker_metrics(queued, 15.0, 0 if queued else 2), pacing)
        [key] = pacing.openai()
        assert (key.queue_depth, key.rate, key.circuit_name) == (3, 15.0, "closed"), order
    idle = Pacing()
    parse(worker_metrics(0, 15.0, 0), idle)
    parse(worker_metrics(0, 12.0, 0), idle)
    [key] = idle.openai()
    assert key.rate == 15.0, "no worker calling it: the highest pace, never the sum"


WORKER = "http://127.0.0.1:9101/metrics"
ACME_ONLY = (
    "# TYPE talkstream_upstream_queue_depth gauge\n"
    'talkstream_upstream_queue_depth{upstream="talkable",target="acme",model=""} 2.0\n'
)


def pacing_of(*texts: str, unreachable: tuple[str, ...] = ()) -> Pacing:
    """What the console read of workers answering ``texts``, and of those ``unreachable``."""
    pacing = Pacing(unreachable=list(unreachable))
    for i, text_ in enumerate(texts):
        parse(text_, pacing)
        pacing.reached.append(f"http://127.0.0.1:{9101 + i}/metrics")
    return pacing


@pytest.mark.parametrize(
    ("pacing", "said"),
    [
        (pacing_of(ACME_ONLY), "no Talkable calls since the worker started"),
        (pacing_of(ACME_ONLY, ACME_ONLY), "no Talkable calls since the workers started"),
        (
            pacing_of(ACME_ONLY, unreachable=("http://127.0.0.1:1/metrics",)),
            "no Talkable calls since the worker that answered started",
        ),
        (
            pacing_of(
                ACME_ONLY
                + 'talkstream_upstream_queue_depth{upstream="talkable",target=":other",model=""}'
                + " 9\n"
            ),
            "not reported: no Talkable calls since the worker started, or not among the 50"
            " busiest sites each names",
        ),
        (  # a site named other is a site, not the rest past the 50 busiest
            pacing_of(
                ACME_ONLY
                + 'talkstream_upstream_queue_depth{upstream="talkable",target="other",model=""} 9\n'
            ),
            "no Talkable calls since the worker started",
        ),
    ],
    ids=["one-worker", "two-workers", "one-unreachable", "past-50-sites", "a-site-named-other"],
)
async def test_a_site_no_worker_reports_says_why_not_a_bare_dash(
    tmp_path: Path, pacing: Pacing, said: str
):
    """A worker keeps a site's 429s, queue and circuit in memory from its first command on:
    after a restart, a site not called since showed "—" in the three, as if nothing were
    known, or a worker were down. It says what is known: no call since the worker started."""
    url = projection(tmp_path)
    engine = make_engine(url)
    body = await overview_page(tmp_path, engine, url, pacing)
    rows = dict(
        re.findall(r'<tr>\s*<td class="value"><a [^>]*>([^<]+)</a></td>(.*?)</tr>', body, re.S)
    )
    # acme's queue (2 a worker), then its circuit
    assert re.search(r'<td class="num">[24]</td>\s*<td><span class="circuit c0">', rows["acme"])
    assert f'<td colspan="3" class="muted unreported">{said}</td>' in rows["globex"]
    assert "—" not in rows["globex"]
    assert "A worker keeps these in memory from the first command for a site on" in body
    # the three columns are the site's Talkable target's, said above them: a site whose
    # requests all failed at OpenAI read "no calls since the worker started" under bare "429s,
    # queue, circuit", though OpenAI had been called for each of them
    assert '<th colspan="3" id="talkable-group">Talkable</th>' in body
    # every site reported: no such note
    parse(ACME_ONLY.replace("acme", "globex"), pacing)
    engine = make_engine(url)
    body = await overview_page(tmp_path, engine, url, pacing)
    assert "unreported" not in body and "A worker keeps these in memory" not in body


async def test_a_site_is_a_dash_when_no_worker_answers(tmp_path: Path):
    """Nothing known (no worker answered): "—", as the note under the table says."""
    url = projection(tmp_path)
    engine = make_engine(url)
    pacing = Pacing(unreachable=[WORKER])
    body = await overview_page(tmp_path, engine, url, pacing)
    assert "unreported" not in body
    assert body.count('<td class="num">—</td><td class="num">—</td><td>—</td>') == 2
    assert f"not reachable: {WORKER} (shown as —)." in body


def test_the_console_refuses_to_start_without_a_token(monkeypatch):
    monkeypatch.delenv("TALKSTREAM_CONSOLE_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["console"])
    assert result.exit_code == 1
    assert "TALKSTREAM_CONSOLE_TOKEN is not set" in result.output
    monkeypatch.setenv("TALKSTREAM_CONSOLE_TOKEN", "short")
    result = CliRunner().invoke(main, ["console"])
    assert result.exit_code == 1 and "too short" in result.output


async def test_pages_say_when_kafka_is_out_of_reach_and_show_what_sql_knows(signed_in: Console):
    signed_in.log.down = True
    letters = await signed_in.page("/deadletters")
    assert 'id="error">Kafka at 127.0.0.1:1 is not reachable' in letters
    # no count is claimed of letters it could not read (it said "0 letters ... no dead letters")
    assert 'id="letter-count"' not in letters and "no dead letters" not in letters
    assert 'id="not-read">No letters were read' in letters
    timeline = await signed_in.page("/request?id=pub-1")  # the projection answers alone
    assert 'id="state">published<' in timeline
    content = await signed_in.page("/request/content?id=pub-1")
    assert "The log could not be read: Kafka at 127.0.0.1:1 is not reachable" in content
    person = await signed_in.page("/person?site=acme&email=ada@example.com")
    assert "limit unknown: Kafka at 127.0.0.1:1 is not reachable" in person
    csrf = re.search(r'name="csrf" value="([^"]+)"', letters)
    assert csrf
    preview = await signed_in.post(
        "/deadletters/preview", {"request_id": "park-1", "csrf": csrf.group(1)}
    )
    assert "not reachable" in await preview.text()
    assert signed_in.log.redrives == []


def as_another_version_left_it(console: Console, revision: str) -> None:
    """The projection's history at ``revision``, written under the running console (a newer
    version's projector migrated it, or the operator took it back)."""
    engine = console.client.app[SERVICES].queries.engine
    with engine.begin() as connection:
        connection.execute(
            text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = :r"), {"r": revision}
        )


async def test_a_projection_a_newer_version_migrated_is_refused_on_every_page_saying_what_to_do(
    signed_in: Console,
):
    """An older console beside a newer version (an upgrade it was not restarted for, a rollback
    that left the projection where the newer one took it) served the projection as it stood,
    though its own version's projector refuses it: nothing said the pages had stopped
    changing."""
    head = migrate.head()
    assert 'id="schema-behind"' not in await signed_in.page("/")
    csrf = await signed_in.csrf()
    as_another_version_left_it(signed_in, "9999")
    for path in [p for p in PAGES if not p.startswith("/static/")]:
        body = await signed_in.page(path, status=503)
        assert "This console is older than its projection" in body, path
        assert (
            f"is at migration 9999, which this version of talkstream does not know (its newest "
            f"is {head}): a newer version migrated it. Take it back with that newer version "
            f"first: `talkstream migrate --to {head} --database-url"
        ) in body, path
        assert "or serve the newer version&#39;s console" in body
        assert "pub-1" not in body and "ada@example.com" not in body, path  # none of its rows
    preview = await signed_in.post("/deadletters/preview", {"request_id": "park-1", "csrf": csrf})
    assert preview.status == 503 and signed_in.log.redrives == []
    await signed_in.page("/static/console.css")  # the 503 page has its style
    # the newer version took it back (or this console was upgraded): the pages again
    as_another_version_left_it(signed_in, head)
    assert 'id="state">published<' in await signed_in.page("/request?id=pub-1")


async def test_a_projection_behind_the_console_is_said_on_every_page_until_it_is_migrated(
    signed_in: Console,
):
    """A console upgraded before the workers (whose projector migrates the projection at its
    start) says so above every page, naming the command that migrates it; each page costs one
    more statement, of one row."""
    head = migrate.head()
    engine = signed_in.client.app[SERVICES].queries.engine
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    previous = str(scripts.get_revision(head).down_revision)
    migrate.migrate_to(engine, previous)  # the migrations' own downgrade
    said = f"The projection is at migration {previous}; this console reads migration {head}."
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for path in [p for p in PAGES if not p.startswith("/static/")]:
        statements.clear()
        body = await signed_in.page(path)
        assert len([s for s in statements if migrate.VERSION_TABLE in s]) == 1, statements
        if path.startswith("/request/content"):
            continue  # a frame of the timeline, which says it
        assert said in body, path
        assert f"(`talkstream migrate --database-url {safe_url(signed_in.url)}` does" in body
    assert "pub-1" in await signed_in.page("/requests")  # and what it can read, it shows
    result = CliRunner().invoke(main, ["migrate", "--database-url", signed_in.url])
    assert result.exit_code == 0, result.output
    assert 'id="schema-behind"' not in await signed_in.page("/")


async def test_the_console_says_at_its_start_that_it_will_serve_no_page_of_a_newer_projection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="streams.console.app")
    console = await start(tmp_path, revision="9999")
    try:
        [said] = [r for r in caplog.records if r.name == "streams.console.app"]
        assert said.levelname == "ERROR"
        assert "no page will be served: the projection database" in said.getMessage()
        assert f"`talkstream migrate --to {migrate.head()}" in said.getMessage()
    finally:
        await console.client.close()


async def test_a_console_started_before_its_projection_exists_makes_no_file_and_no_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """``talkstream dev`` starts the console beside the worker that makes the projection: its
    check at start neither makes an empty file nor warns."""
    caplog.set_level(logging.INFO, logger="streams.console.app")
    missing = tmp_path / "later.sqlite3"
    engine = make_engine(f"sqlite:///{missing}")
    client = await on_engine(tmp_path, engine, f"sqlite:///{missing}")
    try:
        assert not missing.exists()
        said = [r for r in caplog.records if r.name == "streams.console.app"]
        assert not [r for r in said if r.levelno >= logging.WARNING]
        ProjectionStore(engine, migrate_schema=False)  # made, not migrated yet
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE elsewhere (x INTEGER)"))
        response = await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
        body = await response.text()
        assert "The projection has no migration history of ours" in body
    finally:
        await client.close()
        engine.dispose()


async def test_a_console_at_a_mistyped_sqlite_url_says_there_is_none_and_makes_nothing(
    tmp_path: Path,
):
    missing = tmp_path / "no-such-dir" / "typo.sqlite3"
    engine = console_engine(f"sqlite:///{missing}")
    client = await on_engine(tmp_path, engine, f"sqlite:///{missing}")
    try:
        for page in ("/", "/requests", "/sites"):
            response = await client.get(page, headers={"Authorization": f"Bearer {TOKEN}"})
            body = await response.text()
            assert response.status == 503, (page, body)
            assert f"no projection at sqlite:///{missing} yet" in body
            assert "TALKSTREAM_DATABASE_URL" in body
        assert not missing.parent.exists()  # neither the file nor its directory
    finally:
        await client.close()
        engine.dispose()


async def test_a_projection_file_that_is_not_a_database_is_a_page_that_says_so(tmp_path: Path):
    """TALKSTREAM_DATABASE_URL naming a file that is not a SQLite database: each page says the
    projection cannot be read and what SQLite said (503), not a 500 and a stack trace."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 40)
    engine = make_engine(f"sqlite:///{notes}")
    client = await on_engine(tmp_path, engine, f"sqlite:///{notes}")
    try:
        for path in ("/", "/requests", "/request?id=pub-1"):
            response = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            body = await response.text()
            assert response.status == 503, (path, body[:2000])
            assert "The projection cannot be read" in body
            assert "DatabaseError: file is not a database" in body
    finally:
        await client.close()
        engine.dispose()
    assert notes.read_text() == "not a database\n" * 40

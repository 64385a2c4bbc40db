"""The console's door: an operator token for every page and action, and no cross-site writes.

- Every route but the login form, the stylesheet and the probes (``/healthz``, ``/readyz``)
  needs the token: either ``Authorization: Bearer <token>`` on the request (scripts), or a
  session cookie set by the login form (browsers). The cookie is encrypted and authenticated
  (aiohttp-session's ``EncryptedCookieStorage``, Fernet, with a key derived from the token:
  changing the token logs everyone out), ``HttpOnly``, ``SameSite=Strict``, and lasts
  ``TALKSTREAM_CONSOLE_SESSION_HOURS``. Logging out ends the session (its id is refused until
  its cookie would have expired), so a copy of the cookie opens nothing after it.
- Every action is a POST. A POST on a session must come from the console's own pages: its
  ``Origin`` (or, lacking one, its ``Referer``) names the console's host, and its form carries
  the session's CSRF token. A bearer request needs neither (no browser attaches one on its
  own).
- Every answer carries a strict Content-Security-Policy (no script at all, styles and frames
  from the console only), ``nosniff``, ``no-store`` and no framing by other sites: set as it
  is sent (``on_response_prepare``), and on what the server answers outside the app (a bug's
  500, a request the parser refuses: ``streams.refusals.ANSWER_HEADERS``).

What the door refuses is answered in the product's error shape, ``{"errors": [{"field":
..., "message": ...}]}``, naming ``Authorization`` (401, with ``WWW-Authenticate: Bearer``),
``Origin`` or ``csrf`` (403): scripts read it; a browser gets there only from a stale page
(its session ended, its form's CSRF token old), and the message says what to do. A wrong
token at the login form is the form again (401, HTML).

Wrong tokens are logged without the token; the token is never rendered or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from aiohttp_session import setup as setup_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from streams.console.pages import AUTH, CSRF, render
from streams.refusals import ANSWER_HEADERS, body, refusals

log = logging.getLogger(__name__)

COOKIE = "talkstream_console"
# the login form, its stylesheet and its icon (without one, a browser asks every page for
# /favicon.ico, a 404 it reports as an error of the page)
PUBLIC = frozenset({"/login", "/static/console.css", "/static/favicon.svg"})
# a supervisor's probes (``streams.console.probes``), which carry no token: whatever a request
# to them sends, no session is read or made and no token checked
PROBES = frozenset({"/healthz", "/readyz"})
LOGOUT = "/logout"
MIN_TOKEN_CHARS = 16
AUTHORIZATION = "Authorization"
# what a 401 asks for (RFC 6750 3): the operator token as a bearer token (or the login form's)
CHALLENGE = 'Bearer realm="talkstream console"'
WRONG_TOKEN = f'{CHALLENGE}, error="invalid_token"'

TOKEN = web.AppKey("console_token_digest", bytes)
# the sessions logged out, by id, with when their cookie would expire: a copy of a logged-out
# cookie (another tab, a proxy's log, a stolen one) opens nothing, though it still decrypts
ENDED = web.AppKey("console_ended_sessions", dict[str, float])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-src 'self'; "
    "frame-ancestors 'self'; form-action 'self'; base-uri 'none'"
)


def digest(token: str) -> bytes:
    return hashlib.sha256(b"talkstream-console\0" + token.encode()).digest()


def session_key(token: str) -> Fernet:
    """The cookie's Fernet key: derived from the token, never the token itself."""
    material = hashlib.sha256(b"talkstream-console-session\0" + token.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(material))


def check_token(token: str | None) -> str:
    """The token, if it is one the console may start with; else a ValueError saying why."""
    if token is None or not token.strip():
        raise ValueError(
            "TALKSTREAM_CONSOLE_TOKEN is not set: the console shows every request and can "
            "redrive work, so it needs an operator token. Make one, e.g. "
            "`export TALKSTREAM_CONSOLE_TOKEN=$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')`, and log in with it"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"TALKSTREAM_CONSOLE_TOKEN is too short: use at least {MIN_TOKEN_CHARS} random "
            "characters"
        )
    return token


def install(
    app: web.Application, token: str, session_hours: float, secure_cookie: bool = False
) -> None:
    app[TOKEN] = digest(token)
    app[ENDED] = {}
    # every answer's headers: what a handler or a middleware answered, and what the server
    # answers itself, outside every middleware (a bug's 500, a parser's 400)
    app.on_response_prepare.append(_secure_prepared)
    app[ANSWER_HEADERS] = _secure
    # what aiohttp answers itself (404, 405, 413) in JSON: outside the guard, whose read of a
    # form may be 413
    app.middlewares.append(refusals)
    setup_session(
        app,
        EncryptedCookieStorage(
            session_key(token),
            cookie_name=COOKIE,
            max_age=int(session_hours * 3600),
            httponly=True,
            secure=secure_cookie or None,  # Secure only when the console is reached over HTTPS
            samesite="Strict",
        ),
    )
    app.middlewares.append(_guard)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post(LOGOUT, logout)


def _matches(app: web.Application, token: str) -> bool:
    return hmac.compare_digest(digest(token), app[TOKEN])


async def _secure_prepared(request: web.Request, response: web.StreamResponse) -> None:
    _secure(response)


def _secure(response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PROBES:
        return await handler(request)
    bearer = _bearer(request)
    if bearer is not None:
        if not _matches(request.app, bearer):
            log.warning("console: refused a wrong bearer token path=%s", request.path)
            raise _refused(web.HTTPUnauthorized, AUTHORIZATION, "wrong token", WRONG_TOKEN)
        request[AUTH] = "bearer"
        return await handler(request)
    if request.path in PUBLIC:
        _refuse_cross_site(request)  # the login form's POST: no session yet to hold the CSRF
        return await handler(request)
    session = await get_session(request)
    if not _signed_in(request.app, session):
        if request.method == "GET":
            raise web.HTTPSeeOther(f"/login?next={_quote(_back_to(request))}")
        if request.path == LOGOUT:  # (a stale page's button: logged out already)
            raise web.HTTPSeeOther("/login")
        # before the origin's check: a script's POST that forgot its token (no Origin, as
        # curl sends none) is told to authenticate, not that it came from another site
        raise _refused(
            web.HTTPUnauthorized, AUTHORIZATION, "log in first (or send a bearer token)", CHALLENGE
        )
    _refuse_cross_site(request)
    request[AUTH] = "session"
    request[CSRF] = str(session.get("csrf", ""))
    if request.method == "POST":
        form = await request.post()
        sent = form.get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, request[CSRF]):
            log.warning("console: refused a POST without the session's CSRF token")
            raise _refused(
                web.HTTPForbidden, "csrf", "missing or wrong CSRF token: reload the page"
            )
    return await handler(request)


def _refuse_cross_site(request: web.Request) -> None:
    """A POST that does not come from the console's own pages is refused (403, ``Origin``)."""
    if request.method == "POST" and not _same_origin(request):
        log.warning("console: refused a cross-site POST path=%s", request.path)
        raise _refused(
            web.HTTPForbidden,
            "Origin",
            "cross-site request refused: a POST must come from the console's own pages",
        )


def _refused(
    kind: type[web.HTTPException], field: str, message: str, challenge: str | None = None
) -> web.HTTPException:
    """The door's refusal in the product's error shape, naming what it refuses and quoting
    nothing of the request; a 401 says how to authenticate (RFC 9110 11.6.1)."""
    return kind(
        text=json.dumps(body(field, message)),
        content_type="application/json",
        headers={"WWW-Authenticate": challenge} if challenge else None,
    )


def _signed_in(app: web.Application, session: Session) -> bool:
    """The session was opened by a login with this token and has not been logged out."""
    opened = hmac.compare_digest(str(session.get("auth", "")), app[TOKEN].hex())
    sid = session.get("sid")
    return opened and isinstance(sid, str) and sid not in app[ENDED]


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same_origin(request: web.Request) -> bool:
    """The POST came from a page of this console (its Origin, else its Referer, names our
    host). Browsers send Origin on every POST; a request with neither is refused."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc == request.host


def _back_to(request: web.Request) -> str:
    """Where the login goes back to: this page, without a ``token`` its URL was given (the
    console takes none from a URL; carried on, it would sit in the login form's page and the
    browser's history)."""
    if request.path == "/":
        return "/"
    url = request.rel_url
    return str(url.with_query([(k, v) for k, v in url.query.items() if k != "token"]))


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


def _safe_next(value: str | None) -> str:
    """Only a path on this console (never another site: ``//evil``, ``https://evil``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def login_form(request: web.Request) -> web.StreamResponse:
    return render(
        request, "login.html", {"next": _safe_next(request.query.get("next")), "wrong": False}
    )


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token, target = form.get("token"), form.get("next")
    target = _safe_next(target if isinstance(target, str) else None)
    if not isinstance(token, str) or not _matches(request.app, token.strip()):
        log.warning("console: a login with a wrong token from %s", request.remote)
        response = render(request, "login.html", {"next": target, "wrong": True}, status=401)
        response.headers["WWW-Authenticate"] = CHALLENGE
        return response
    session = await new_session(request)
    session["auth"] = request.app[TOKEN].hex()
    session["sid"] = secrets.token_urlsafe(16)
    session["csrf"] = secrets.token_urlsafe(32)
    raise web.HTTPSeeOther(target)


async def logout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    _end(request.app, session)
    session.invalidate()
    raise web.HTTPSeeOther("/login")


def _end(app: web.Application, session: Session) -> None:
    """Refuse this session's cookie from now on (until any copy of it has expired anyway:
    the cookie's age is checked when it is read)."""
    now = time.time()
    ended = app[ENDED]
    for expired in [sid for sid, expires in ended.items() if expires <= now]:
        del ended[expired]
    sid = session.get("sid")
    if isinstance(sid, str):
        ended[sid] = now + (session.max_age or 0)

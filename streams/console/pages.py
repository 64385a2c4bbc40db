"""Rendering a console page: the Jinja2 templates (autoescaped) with what every page shows.

Also the request keys the door (``auth``) sets for the pages: how a request was let in, and the
session's CSRF token that every form carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from aiohttp import web

TEMPLATES = web.AppKey("console_templates", jinja2.Environment)
DATABASE = web.AppKey("console_database", str)  # the projection's URL, password hidden
AUTH = web.RequestKey("console_auth", str)  # how the request was let in: bearer or session
CSRF = web.RequestKey("console_csrf", str)  # the session's CSRF token, for the forms
BEHIND = web.RequestKey("console_behind", str)  # the projection is not migrated yet: why
REVISION = web.RequestKey("console_revision", str)  # the projection's migration (one we know)


def render(
    request: web.Request, template: str, context: Mapping[str, Any], status: int = 200
) -> web.Response:
    """A page: the template with the context every page has (the session's CSRF token for
    its forms, whether someone is signed in, the projection's URL, and what to say above the
    page when the projection is behind the console's schema)."""
    page = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            {
                "csrf": request.get(CSRF, ""),
                "signed_in": request.get(AUTH) is not None,
                "database": request.app.get(DATABASE, ""),
                "behind": request.get(BEHIND),
                "nav": "",
                **context,
            }
        )
    )
    return web.Response(text=page, status=status, content_type="text/html")

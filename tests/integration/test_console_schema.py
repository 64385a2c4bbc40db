"""The operator console in Debian's Chromium when the projection's schema is not the one it
reads: a newer version migrated it under the running console (every page says so, and what
to do, instead of showing rows nothing of this version updates any more), or this version's
projector has not migrated it yet (every page says so above its content, until
``talkstream migrate`` has run).

The console of the functional tests (the real app on a real SQLite projection, a fake log
for Kafka) served on a real port; the projection is migrated by the real migrations and the
real ``talkstream migrate``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from selenium import webdriver
from selenium.webdriver.common.by import By
from sqlalchemy import text

from streams.cli import main
from streams.console.views import SERVICES
from streams.projection import migrate
from tests.functional.test_console import TOKEN, start
from tests.integration.test_console_browser import (  # noqa: F401  (fixtures)
    browser,
    chromium,
    element,
    follow,
)

pytestmark = pytest.mark.integration


def log_in(chrome: webdriver.Chrome, base: str) -> None:
    chrome.get(base + "/login")
    element(chrome, By.NAME, "token").send_keys(TOKEN)
    follow(chrome, element(chrome, By.CSS_SELECTOR, "button[type=submit]"))
    element(chrome, By.ID, "sites")  # the overview


def shown(chrome: webdriver.Chrome, base: str, path: str) -> tuple[str, str]:
    """The page's heading and its text, as the operator reads them."""
    chrome.get(base + path)
    return (
        chrome.find_element(By.TAG_NAME, "h1").text,
        chrome.find_element(By.TAG_NAME, "main").text,
    )


async def test_an_operator_is_told_the_projection_is_newer_or_older_than_the_console(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
):
    console = await start(tmp_path)
    engine = console.client.app[SERVICES].queries.engine
    head = migrate.head()
    previous = str(
        ScriptDirectory.from_config(migrate.alembic_config()).get_revision(head).down_revision
    )
    base = str(console.client.make_url("/")).rstrip("/")

    def walk() -> None:
        log_in(browser, base)
        # a newer version's projector migrates the projection, this console still running
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0099'"))
        for path in ("/", "/requests?site=acme", "/request?id=pub-1", "/deadletters"):
            heading, body = shown(browser, base, path)
            assert heading == "This console is older than its projection", path
            assert "is at migration 0099, which this version of talkstream does not" in body
            assert f"talkstream migrate --to {head} --database-url" in body
            assert "pub-1" not in body
            # the stylesheet loads on it: the reason in the error colour
            colour = browser.find_element(By.ID, "too-new").value_of_css_property("color")
            assert colour == "rgba(183, 28, 28, 1)", colour
        # the newer version takes it back, then further, to what this version had before
        with engine.begin() as connection:
            connection.execute(
                text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = :r"), {"r": head}
            )
        migrate.migrate_to(engine, previous)
        for path in ("/", "/requests?site=acme", "/request?id=pub-1"):
            heading, body = shown(browser, base, path)
            banner = browser.find_element(By.ID, "schema-behind").text
            assert banner.startswith(
                f"The projection is at migration {previous}; this console reads migration {head}"
            ), banner
            assert "talkstream migrate --database-url" in banner
        heading, body = shown(browser, base, "/request?id=pub-1")
        assert browser.find_element(By.ID, "state").text == "published"  # read all the same
        result = CliRunner().invoke(main, ["migrate", "--database-url", console.url])
        assert result.exit_code == 0, result.output
        heading, body = shown(browser, base, "/")
        assert not browser.find_elements(By.ID, "schema-behind")

    try:
        # the browser is driven from a thread: the console answers on this loop meanwhile
        await asyncio.to_thread(walk)
    finally:
        await console.client.close()

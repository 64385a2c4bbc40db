"""Finding a site among a thousand in the console's search form, in Debian's Chromium, as an
operator does: the form suggests a hundred sites at most (it suggested every one, 80 KB of
them at 2,001 sites); a part of a name typed and searched lists the sites that have it, and
one of them followed is that site's search.

The console of the functional tests (the real app on a real SQLite projection, a fake log
for Kafka) served on a real port.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.functional.test_console import MANY_SITES, TOKEN, start
from tests.integration.test_console_browser import (  # noqa: F401  (fixtures)
    browser,
    chromium,
    element,
    follow,
)

pytestmark = pytest.mark.integration


async def test_an_operator_finds_a_site_by_a_part_of_its_name(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
):
    console = await start(tmp_path, people=MANY_SITES)
    base = str(console.client.make_url("/")).rstrip("/")

    def walk() -> None:
        browser.get(base + "/login")
        element(browser, By.NAME, "token").send_keys(TOKEN)
        follow(browser, element(browser, By.CSS_SELECTOR, "button[type=submit]"))
        browser.get(base + "/requests")
        options = browser.find_elements(By.CSS_SELECTOR, "datalist#sites option")
        assert len(options) == 100
        # the suggestions' weight on the page (every site's: ~36 KB of a thousand); the page
        # as a whole also carries its rows, whose links grew with each request's event time
        suggestions = element(browser, By.ID, "sites").get_attribute("outerHTML") or ""
        assert len(suggestions) < 8_000, len(suggestions)
        assert len(browser.page_source) < 40_000, len(browser.page_source)
        element(browser, By.ID, "f-site").send_keys("P-095")
        element(browser, By.ID, "f-email").send_keys("zed@example.com")
        follow(browser, element(browser, By.ID, "f-go"))
        unknown = element(browser, By.ID, "site-unknown")
        assert "No site is named “P-095”. 10 sites have it in their name:" in unknown.text
        links = unknown.find_elements(By.CSS_SELECTOR, "ul.site-links a")
        assert [a.text for a in links] == [f"shop-{i:04d}" for i in range(950, 960)]
        follow(browser, links[7])
        assert element(browser, By.ID, "f-site").get_attribute("value") == "shop-0957"
        assert element(browser, By.ID, "f-email").get_attribute("value") == "zed@example.com"
        assert "zed@example.com" in element(browser, By.ID, "results").text
        assert not browser.find_elements(By.ID, "site-unknown")
        suggested = browser.find_elements(By.CSS_SELECTOR, "datalist#sites option")
        assert [o.get_attribute("value") for o in suggested] == ["shop-0957"]

    try:
        # the browser is driven from a thread: the console answers on this loop meanwhile
        await asyncio.to_thread(walk)
    finally:
        await console.client.close()

"""The operator console's pages fit the window, in Debian's Chromium: a narrow one (a phone,
a split screen) and a normal one, with a site and an email that are each one long word.

The console of the functional tests (the real app on a real SQLite projection, a fake log for
Kafka: layout needs no broker) served on a real port; no page may be wider than the window: a
wide table scrolls in its own box, the header (its "Log out") stays inside the window, and a
long value from a webhook wraps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.functional.test_console import LETTERS, TOKEN, start
from tests.integration.test_console_browser import (  # noqa: F401  (fixtures)
    browser,
    chromium,
    element,
)

pytestmark = pytest.mark.integration

LONG_SITE, LONG_EMAIL = "s" * 120, "a" * 180 + "@example.com"  # no place to break a line
PAGES = [
    "/",
    "/requests",
    "/requests?site=sss",  # no such site: the sites that have it in their name, the long one
    "/request?id=pub-1",
    "/request?id=person-000",
    "/person?site=acme&email=ada@example.com",
    "/person?" + urlencode({"site": LONG_SITE, "email": LONG_EMAIL}),
    "/deadletters",
]


def signed_in(chrome: webdriver.Chrome, base: str, width: int) -> None:
    """The browser ``width`` pixels wide, signed in to the console at ``base``."""
    chrome.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    chrome.get(base + "/login")
    chrome.find_element(By.NAME, "token").send_keys(TOKEN)
    chrome.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # the click navigates asynchronously: the next page asked for before its answer (the
    # session's cookie) was the login form again, a page without the table looked for
    element(chrome, By.CSS_SELECTOR, "form.logout")


async def measured(tmp_path: Path, measure: Callable[[str], Any], **given: Any) -> Any:
    """What ``measure`` (given the console's address) finds on the console of the functional
    tests (``given`` to its ``start``), served for it: the browser is driven from a thread,
    the console answers on this loop meanwhile."""
    console = await start(tmp_path, **given)
    try:
        base = str(console.client.make_url("/")).rstrip("/")
        return await asyncio.to_thread(measure, base)
    finally:
        await console.client.close()


def overflows(
    chrome: webdriver.Chrome, base: str, width: int
) -> dict[str, tuple[int, int, list[str]]]:
    """Each page wider than the window: its width, the window's, and what sticks out."""
    signed_in(chrome, base, width)
    found = {}
    for path in PAGES:
        chrome.get(base + path)
        assert chrome.find_elements(By.TAG_NAME, "main"), path  # signed in, on the page
        wide, window, sticking_out = chrome.execute_script(
            """
            const root = document.documentElement, edge = root.clientWidth;
            const out = [...document.querySelectorAll('header *, main > *')]
              .filter(e => e.getBoundingClientRect().right > edge + 1)
              .map(e => e.tagName + (e.id ? '#' + e.id : ''));
            return [root.scrollWidth, edge, out];
            """
        )
        if wide > window:
            found[path] = (wide, window, sticking_out)
    return found


@pytest.mark.parametrize("width", [400, 1280])
async def test_every_page_fits_the_window(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    people = ((LONG_SITE, LONG_EMAIL),)
    wide = await measured(tmp_path, lambda base: overflows(browser, base, width), people=people)
    assert wide == {}


# a table cell whose text takes more than one line (its text's boxes at two heights or more:
# its text nodes', not its elements', whose boxes may stand higher than their text, as a listed
# email's link, an inline-block, does by its line's half-leading)
ON_MORE_THAN_ONE_LINE = """
    const walk = document.createTreeWalker(td, NodeFilter.SHOW_TEXT), tops = new Set();
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(node);
      for (const r of range.getClientRects()) if (r.width > 0) tops.add(Math.round(r.top));
    }
    return tops.size > 1;
"""


def cells_on_more_than_one_line(
    chrome: webdriver.Chrome, base: str, width: int, paths: list[str], cells: str, most: int
) -> dict[str, list[str]]:
    """Each page's table ``cells`` (a CSS selector) of at most ``most`` characters whose text
    takes more than one line."""
    signed_in(chrome, base, width)
    found = {}
    for path in paths:
        chrome.get(base + path)
        assert chrome.find_elements(By.CSS_SELECTOR, cells), path
        wrapped = chrome.execute_script(
            f"""
            const wrapped = td => {{ {ON_MORE_THAN_ONE_LINE} }};
            return [...document.querySelectorAll(arguments[0])]
              .filter(td => td.textContent.trim().length <= arguments[1])
              .filter(wrapped)
              .map(td => td.textContent.trim());
            """,
            cells,
            most,
        )
        if wrapped:
            found[path] = wrapped
    return found


@pytest.mark.parametrize("width", [400, 1280])
async def test_a_short_site_or_email_stays_whole(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """A table scrolls in its own box in a narrow window, yet its sites and emails were broken
    anywhere to squeeze it in: "acme" read "ac" over "me", "globex" took three lines. In a
    wide one too, beside a long column: the dead letters' site read "acm" over "e" at 1280
    px, next to a Talkable refusal's reason. (A value of 20 characters or fewer.)"""
    paths = ["/", "/requests", "/person?site=acme&email=ada@example.com", "/deadletters"]
    broken = await measured(
        tmp_path,
        lambda base: cells_on_more_than_one_line(
            browser, base, width, paths, "table.grid td.value", 20
        ),
    )
    assert broken == {}


@pytest.mark.parametrize("width", [400, 1280])
async def test_a_number_stays_on_one_line(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """A timeline's times since arrival read "+24" over "ms" and "+1.8" over "min" at 1280 px,
    squeezed by a Talkable refusal's long error beside them."""
    paths = ["/", "/requests", "/request?id=park-1"]
    wrapped = await measured(
        tmp_path,
        lambda base: cells_on_more_than_one_line(
            browser, base, width, paths, "table.grid td.num", 10_000
        ),
    )
    assert wrapped == {}


def broken_lines(allowed: str) -> str:
    """A script returning the text of each element ``arguments[0]`` (a CSS selector) selects
    that a line break cuts where ``allowed`` is false (a JavaScript expression of ``last`` and
    ``next``, the characters either side of the break; ``word`` matches a letter or a digit),
    with "|" at each of its breaks."""
    script = """
    const word = /[\\p{L}\\p{N}]/u, broken = [];
    for (const element of document.querySelectorAll(arguments[0])) {
      const walk = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
      let text = '', bad = false, top = null, last = '';
      for (let node = walk.nextNode(); node; node = walk.nextNode()) {
        for (let i = 0; i < node.length; i++) {
          const range = document.createRange();
          range.setStart(node, i);
          range.setEnd(node, i + 1);
          const at = Math.round(range.getClientRects()[0].top);
          const next = node.data[i];
          if (top !== null && at !== top) {
            text += '|';
            bad = bad || !(ALLOWED);
          }
          top = at;
          last = next;
          text += last;
        }
      }
      if (bad) broken.push(text);
    }
    return broken;
"""
    return script.replace("ALLOWED", allowed)


# each request id a line break cuts elsewhere than after a "~" or before a "/", "|" there
BROKEN_ID = broken_lines("last === '~' || next === '/'")


@pytest.mark.parametrize("width", [400, 1280])
async def test_a_listed_request_id_breaks_only_after_its_tilde_or_before_its_slash(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """A request id broke at its hyphens to fit the table's narrow first column: a re-sent
    request's "pub-3~pub-3/d2" read "pub-" over "3~pub-" over "3/d2", at 1280 px as at 400 px.
    It breaks after its "~" or before its "/" only, and at 400 px, where the table scrolls in
    its own box, not at all. (Listed ids are cut to 18 characters and an ellipsis; the
    screenshots go to the test's folder.)"""
    paths = ["/requests", "/person?site=acme&email=ada@example.com", "/deadletters"]

    def ids_broken(base: str) -> dict[str, list[str]]:
        signed_in(browser, base, width)
        found = {}
        for path in paths:
            browser.get(base + path)
            assert browser.find_elements(By.CSS_SELECTOR, "table.grid a.rid"), path
            browser.save_screenshot(str(tmp_path / f"ids-{width}-{path[1:].split('?')[0]}.png"))
            broken = browser.execute_script(BROKEN_ID, "table.grid a.rid")
            if broken:
                found[path] = broken
        if width < 900:  # the table scrolls in its own box: an id is one line
            found |= {
                f"{path} (more than one line)": ids
                for path, ids in cells_on_more_than_one_line(
                    browser, base, width, paths, "table.grid a.rid", 19
                ).items()
            }
        return found

    broken = await measured(tmp_path, ids_broken)
    assert broken == {}


def tall_rows(chrome: webdriver.Chrome, base: str, width: int) -> dict[str, list[int]]:
    """Each page's table rows taller than half the window (800 px): text squeezed into a
    column a few letters wide."""
    signed_in(chrome, base, width)
    found = {}
    for path in ["/request?id=park-1", "/deadletters"]:
        chrome.get(base + path)
        assert chrome.find_elements(By.CSS_SELECTOR, "table.grid tbody tr"), path
        tall = chrome.execute_script(
            """
            return [...document.querySelectorAll('table.grid tbody tr')]
              .map(tr => Math.round(tr.getBoundingClientRect().height))
              .filter(h => h > 400);
            """
        )
        if tall:
            found[path] = tall
    return found


async def test_a_long_reason_or_error_is_read_in_a_few_lines_in_a_narrow_window(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
):
    """In a narrow window a table scrolls in its own box, yet a dead letter's reason and a
    timeline's cause and error were squeezed to a few letters a line, into that box's width:
    a Talkable refusal's row was over 1000 px tall, mostly blank, at 375 px."""
    assert await measured(tmp_path, lambda base: tall_rows(browser, base, 375)) == {}


def said_on_each(
    chrome: webdriver.Chrome, base: str, width: int, paths: list[str], script: str
) -> dict[str, list[str]]:
    """What ``script`` (a list of what it finds wrong) says of each page of ``paths``, signed
    in ``width`` pixels wide; the pages it finds nothing wrong with left out."""
    signed_in(chrome, base, width)
    found = {}
    for path in paths:
        chrome.get(base + path)
        assert chrome.find_elements(By.TAG_NAME, "main"), path
        found[path] = chrome.execute_script(script)
        if not found[path]:
            del found[path]
    return found


def unreadable(chrome: webdriver.Chrome, base: str, width: int) -> dict[str, list[str]]:
    """What a page shows too small to read or cut short: the overview chart's axis labels
    drawn under 11 px tall (or on one another), a text field's placeholder wider than the
    field, and a filter's text field with none (what it takes, or "any", unsaid)."""
    return said_on_each(
        chrome,
        base,
        width,
        ["/", "/?window=24h", "/requests", "/deadletters"],
        """
            const said = [];
            const labels = [...document.querySelectorAll('.chart text')]
              .map(e => [e.textContent, e.getBoundingClientRect()])
              .filter(([, box]) => box.width > 0);
            for (const [label, box] of labels) {
              if (box.height < 11) said.push(`${label}: ${box.height.toFixed(1)} px tall`);
            }
            const times = labels.filter(([label]) => label.includes(':'));
            times.slice(1).forEach(([label, box], i) => {
              if (box.left < times[i][1].right) said.push(`${label} on ${times[i][0]}`);
            });
            for (const input of document.querySelectorAll('form input[type=text]')) {
              if (!input.offsetWidth || input.placeholder) continue;
              said.push(`${input.name}: no placeholder`);
            }
            const ruler = document.createElement('canvas').getContext('2d');
            for (const input of document.querySelectorAll('input[placeholder]')) {
              if (!input.offsetWidth) continue;
              const style = getComputedStyle(input);
              ruler.font = style.font;
              const room = input.clientWidth - parseFloat(style.paddingLeft)
                - parseFloat(style.paddingRight);
              const needs = ruler.measureText(input.placeholder).width;
              if (needs > room) said.push(`${input.name}: ${needs.toFixed(0)} px in ${room} px`);
            }
            return said;
        """,
    )


@pytest.mark.parametrize("width", [375, 1280])
async def test_the_charts_labels_and_the_fields_placeholders_are_read_whole(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """At 375 px (a phone) the overview chart's axis labels were 4 px tall (drawn in an SVG
    shrunk to the window), and the search form's "2026-01-01T10:00 or 24h" and "ISO-8601
    (UTC), epoch, 30m" were cut short, as they were, and the dead letters' reason, at 1280;
    the dead letters' site, until and request fields said nothing of what they take."""
    assert await measured(tmp_path, lambda base: unreadable(browser, base, width)) == {}


def uneven_cards(chrome: webdriver.Chrome, base: str, width: int) -> dict[str, list[str]]:
    """The overview's cards not of one width, of those alone on their rows or of those
    sharing one: the "ended" card, its "requests in the last 24h" the longest text, was
    wider than the cards under it."""
    return said_on_each(
        chrome,
        base,
        width,
        ["/", "/?window=24h"],
        """
            const said = [];
            const cards = [...document.querySelectorAll('.cards .card')]
              .map(e => [e.querySelector('.label').textContent, e.getBoundingClientRect()]);
            const rows = {};
            for (const [label, box] of cards) (rows[Math.round(box.top)] ??= []).push([label, box]);
            const widths = Object.values(rows).filter(row => row.length == 1)
              .map(([[label, box]]) => [label, Math.round(box.width)]);
            if (new Set(widths.map(([, w]) => w)).size > 1) {
              said.push('cards alone on their rows: ' + widths.map(([l, w]) => `${l} ${w} px`)
                .join(', '));
            }
            for (const row of Object.values(rows).filter(row => row.length > 1)) {
              const ws = row.map(([, box]) => Math.round(box.width));
              if (Math.max(...ws) - Math.min(...ws) > 1) {
                said.push('cards of a row: ' + row.map(([l, b]) => `${l} ${Math.round(b.width)} px`)
                  .join(', '));
              }
            }
            return said;
        """,
    )


@pytest.mark.parametrize("width", [375, 1280])
async def test_the_overviews_cards_are_of_one_width(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """At 375 px the overview's "ended" card was wider than the three under it (each card as
    wide as its text)."""
    assert await measured(tmp_path, lambda base: uneven_cards(browser, base, width)) == {}


def heading_rows(chrome: webdriver.Chrome, base: str, width: int) -> tuple[list[int], list[str]]:
    """The overview's sites table: its heading rows shown with no heading in the table's box
    (each by its index), and how its last three columns are named, "Talkable" included when
    a heading over them or their own says it."""
    signed_in(chrome, base, width)
    chrome.get(base + "/")
    found: tuple[list[int], list[str]] = chrome.execute_script(
        """
        const table = document.getElementById('sites'), box = table.getBoundingClientRect();
        const rows = [...table.tHead.rows];
        const seen = cell => {
          const r = cell.getBoundingClientRect();
          return cell.textContent.trim() && r.right > box.left && r.left < box.right;
        };
        const empty = rows.filter(row => row.getBoundingClientRect().height > 0)
          .filter(row => ![...row.cells].some(seen)).map(row => row.rowIndex);
        const over = rows.find(row => row.classList.contains('group'));
        const grouped = over.getBoundingClientRect().height > 0 ? 'Talkable ' : '';
        const named = [...rows.at(-1).cells].slice(-3).map(cell => {
          const before = getComputedStyle(cell, '::before').content;
          const own = before.startsWith('"') ? before.slice(1, -1) : '';
          return grouped + own + cell.textContent.trim();
        });
        return [empty, named];
        """
    )
    return found


@pytest.mark.parametrize("width", [390, 1280])
async def test_the_overviews_sites_headings_leave_no_empty_band(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """At 390 px the sites table scrolls in its own box, and the heading "Talkable" over its
    last three columns was past its edge: its row was an empty band above the column names.
    Those columns say it themselves there; in a wide window the heading is over them."""
    empty, named = await measured(tmp_path, lambda base: heading_rows(browser, base, width))
    assert empty == []
    assert named == ["Talkable 429s", "Talkable queue", "Talkable circuit"]


def reasons_squeezed(
    chrome: webdriver.Chrome,
    base: str,
    width: int,
    path: str = "/deadletters",
    cells: str = "td.reason",
    shortest: int = 100,
    fewest: int = 25,
) -> list[str]:
    """The page's reasons (``cells``) of ``shortest`` characters or more that read fewer than
    ``fewest`` characters a line (their text's length over the lines it takes), each with
    how many it reads; by default the dead letters' long reasons."""
    signed_in(chrome, base, width)
    chrome.get(base + path)
    assert chrome.find_elements(By.CSS_SELECTOR, cells)
    found: list[str] = chrome.execute_script(
        """
        const lines = td => {
          const range = document.createRange();
          range.selectNodeContents(td);
          return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
        };
        return [...document.querySelectorAll(arguments[0])]
          .map(td => [td.textContent.trim(), lines(td)])
          .filter(([text, n]) => text.length >= arguments[1] && text.length / n < arguments[2])
          .map(([text, n]) => `${text.slice(0, 30)}…: ${(text.length / n).toFixed(0)} a line`);
        """,
        cells,
        shortest,
        fewest,
    )
    return found


async def test_a_dead_letters_reason_is_not_squeezed_by_a_long_site(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
):
    """At 1280 px, a letter of a site whose name is one long word (a tenant's slug of its
    brands and regions) left the reasons beside it a column of one or two words a line: a
    Talkable refusal took 14 lines, the page was 7,000 px tall for 16 letters."""
    people = ((LONG_SITE, LONG_EMAIL),)
    letter = replace(LETTERS[0], request_id="person-000", letter_offset=1)
    squeezed = await measured(
        tmp_path,
        lambda base: reasons_squeezed(browser, base, 1280),
        people=people,
        letters=(letter,),
    )
    assert squeezed == []


async def test_a_listed_requests_reason_is_read_in_a_line_or_two_in_a_narrow_window(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
):
    """At 375 px a limited request's reason in a search, "usage window full: 2 of 2 used",
    was a word a line (a column 69 px wide, each row five lines tall) in the table's own
    scrolling box."""
    squeezed = await measured(
        tmp_path,
        lambda base: reasons_squeezed(
            browser, base, 375, "/requests?state=limited", "td.why", 20, 15
        ),
    )
    assert squeezed == []


# emails as campaigns send them: each part (between "@", "." and "+") fits the column
EMAILS = (
    "p.gibbons+referrals@initech.com",
    "maria.fernandez.gonzalez@marketing.globex-corp.co.uk",
    "jonathan.livingston-seagull@example-company.com",
)
# each cell whose text a line break cuts mid-word (between two letters or digits), "|" at
# each of its breaks
BROKEN_MID_WORD = broken_lines("!(word.test(last) && word.test(next))")


def emails_broken_mid_word(
    chrome: webdriver.Chrome, base: str, width: int, shots: Path
) -> dict[str, list[str]]:
    signed_in(chrome, base, width)
    found = {}
    for path in ["/requests", "/person?site=initech&email=p.gibbons%2Breferrals@initech.com"]:
        chrome.get(base + path)
        assert chrome.find_elements(By.CSS_SELECTOR, "#results tbody td"), path
        chrome.save_screenshot(str(shots / f"{width}-{path.strip('/').split('?')[0]}.png"))
        # the person column of the requests listed
        broken = chrome.execute_script(BROKEN_MID_WORD, "#results tbody td:nth-child(3)")
        if broken:
            found[path] = broken
    return found


@pytest.mark.parametrize("width", [400, 1280])
async def test_a_listed_email_breaks_before_its_at_or_a_dot_not_mid_word(
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
    width: int,
):
    """At 1280 px the requests table broke emails anywhere to fit its person column:
    "p.gibbons+referrals@inite" over "ch.com", "averyverylonglocalpar" over "twithoutdots". It
    breaks before the "@", a "." or a "+" (the screenshots go to the test's folder)."""
    people = tuple(
        (site, email) for site, email in zip(("initech", "globex", "acme"), EMAILS, strict=True)
    )
    broken = await measured(
        tmp_path,
        lambda base: emails_broken_mid_word(browser, base, width, tmp_path),
        people=people,
    )
    assert broken == {}

"""The operator console in a real browser, against the real pipeline on the real broker.

Debian's Chromium, driven headless by selenium through chromedriver (``scripts/chromium.sh``
installs both when missing, and the test FAILS, never skips, when it cannot), walks what an
operator does: Talkable refuses a site's key, so a request ends ``publish_failed``; the
operator finds it (search), reads its timeline, opens the dead letters, previews the redrive,
has the key fixed, redrives from the page, and watches the request reach ``published``. The
request carries a ``<script>`` tag in its message and in its email's local part: every page
shows it as text, and no script runs. No page ever holds a sealed token or a plaintext key.

Screenshots of each view go to the test's folder, and to ``TALKSTREAM_SCREENSHOTS_DIR`` when
set (``docs/``: the pictures of docs/console.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.integration.conftest import System
from tests.support import free_port, seed_params, usage, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-console-token-0001"
SCRIPT = "<script>alert(1)</script>"
EMAIL = f"{SCRIPT}@example.com"
OLD_KEY, CURRENT_KEY = "talkable-old-key-0001", "talkable-current-key-0001"
OPENAI_KEY = "sk-test-openai-browser-0001"
WIDTH, HEIGHT = 1360, 900


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """The browser and its driver (installed by scripts/chromium.sh if missing)."""
    done = subprocess.run(
        [ROOT / "scripts" / "chromium.sh"], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        pytest.fail(f"Chromium could not be installed (scripts/chromium.sh):\n{done.stderr}")
    browser, driver = done.stdout.strip().splitlines()[-2:]
    return browser, driver


@pytest.fixture
def browser(chromium: tuple[str, str], tmp_path: Path) -> Iterator[webdriver.Chrome]:
    binary, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


class Pages:
    """The pages visited, kept for the secrets check, and their screenshots."""

    def __init__(self, chrome: webdriver.Chrome, base: str, folder: Path) -> None:
        self.chrome, self.base, self.folder = chrome, base, folder
        self.sources: dict[str, str] = {}
        self.extra = os.environ.get("TALKSTREAM_SCREENSHOTS_DIR")

    def open(self, path: str) -> None:
        self.chrome.get(self.base + path)

    def seen(self, name: str) -> None:
        """Keep the page's source (and its content frame's) and a screenshot of it."""
        chrome = self.chrome
        self.sources[name] = chrome.page_source
        frames = chrome.find_elements(By.TAG_NAME, "iframe")
        if frames:
            chrome.switch_to.frame(frames[0])
            self.sources[name + "/frame"] = chrome.page_source
            chrome.switch_to.default_content()
        assert_no_script_ran(chrome)
        # the whole page in the picture: the window as tall as the document
        height = chrome.execute_script("return document.documentElement.scrollHeight")
        chrome.set_window_size(WIDTH, max(HEIGHT, min(int(height) + 140, 4000)))
        for folder in filter(None, [self.folder, self.extra]):
            Path(folder).mkdir(parents=True, exist_ok=True)
            assert chrome.save_screenshot(str(Path(folder) / f"console-{name}.png"))
        chrome.set_window_size(WIDTH, HEIGHT)


def element(chrome: webdriver.Chrome, by: str, value: str, timeout: float = 30) -> WebElement:
    """The element once the page that has it has loaded (a click navigates asynchronously)."""
    found: WebElement = WebDriverWait(chrome, timeout).until(
        expected_conditions.presence_of_element_located((by, value))
    )
    return found


def follow(chrome: webdriver.Chrome, link_or_button: WebElement) -> None:
    """Click, and wait until the browser has left the page (then the next page's elements are
    looked for, never the old page's)."""
    old = chrome.find_element(By.TAG_NAME, "html")
    link_or_button.click()

    def left(_: object) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale, or chromedriver's "node ... not in the document"
            return True
        return False

    WebDriverWait(chrome, 30).until(left)


def assert_no_script_ran(chrome: webdriver.Chrome) -> None:
    try:
        alert = chrome.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    raise AssertionError(f"a script ran on the page: alert({text!r})")


def start_console(system: System) -> str:
    port = free_port()
    env = {
        **system.env,
        "TALKSTREAM_CONSOLE_TOKEN": TOKEN,
        "TALKSTREAM_CONSOLE_PORT": str(port),
        "TALKSTREAM_CONSOLE_WORKER_URLS": system.executors_url(),  # where calls are counted
    }
    system.spawn("console", "console", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: system._up(f"{base}/login"), 30, what="the console")
    return base


def test_an_operator_finds_a_refused_request_and_redrives_it_from_the_page(
    make_system, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    system = make_system()
    system.talkable("POST", "/_control", {"api_keys": {"test-site": CURRENT_KEY}})
    now = int(time.time())
    ids = []
    for i in range(3):
        status, answer = system.post(
            seed_params(f"reader{i}@example.com", talkable_key=CURRENT_KEY, openai_key=OPENAI_KEY)
        )
        assert status == 202, answer
        ids.append(answer["request_id"])
    # Talkable rendered current_time 44 s before the webhook arrived; the site's key is an old one
    body = seed_params(
        EMAIL,
        content=f"A verse for {SCRIPT} please",
        usage_limit=usage(3, now=now - 44),
        talkable_key=OLD_KEY,
        openai_key=OPENAI_KEY,
    )
    body["openai"]["messages"][0]["name"] = "Ada_Lovelace"  # OpenAI's name of the participant
    status, answer = system.post(body)
    assert status == 202, answer
    refused = answer["request_id"]
    rows = system.wait_terminal([*ids, refused])
    assert rows[refused].state == "publish_failed"
    base = start_console(system)
    pages = Pages(browser, base, tmp_path / "screenshots")

    # log in
    pages.open("/deadletters")
    assert "/login" in browser.current_url
    element(browser, By.ID, "token").send_keys(TOKEN)
    follow(browser, element(browser, By.ID, "login"))
    assert browser.current_url == f"{base}/deadletters"  # back where the operator was going

    # the overview: the site, its failure, and the chart
    pages.open("/")
    element(browser, By.ID, "sites")
    # the site's row, with its Talkable target's circuit read from the worker's /metrics, and
    # why its request failed (its error's class: Talkable refused the site's key)
    [row] = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr")
        if tr.text.startswith("test-site")
    ]
    assert row[-1] == "closed", row
    assert (row[5], row[6]) == ("1", "Unauthorized 1"), row
    assert browser.find_elements(By.CSS_SELECTOR, "#chart rect")
    # the site's OpenAI key, by its fingerprint only, a row per model it was called with
    [key_row] = element(browser, By.ID, "openai").text.splitlines()[1:]
    assert re.match(r"[0-9a-f]{16} gpt-3\.5-turbo \d+ \d+", key_row), key_row
    pages.seen("overview")

    # search: the site's failed requests
    pages.open("/requests")
    element(browser, By.ID, "f-site").send_keys("Test-Site")  # as typed: the site in any case
    Select(element(browser, By.ID, "f-state")).select_by_value("failed")
    follow(browser, element(browser, By.ID, "f-go"))
    results = element(browser, By.ID, "results")
    assert EMAIL in results.text  # the script tag is text in the table
    pages.seen("search")
    follow(browser, results.find_element(By.CSS_SELECTOR, "a.rid"))

    # the timeline: both clocks, the refusal, the content as text
    assert element(browser, By.ID, "request-id").text == refused
    assert element(browser, By.ID, "state").text == "publish_failed"
    assert "401" in element(browser, By.ID, "reason").text
    offset = element(browser, By.ID, "event-time").text
    assert "from arrival" in offset  # judged at an event time 44 s before it arrived
    browser.switch_to.frame(element(browser, By.ID, "content"))
    assert SCRIPT in element(browser, By.ID, "message-1").text
    assert element(browser, By.ID, "message-1-name").text == "Ada_Lovelace"
    assert element(browser, By.ID, "token-cap").text == "token cap 150"
    assert SCRIPT in element(browser, By.ID, "generated").text
    assert element(browser, By.ID, "event-number").text == (f"generate_text_complete-{refused}")
    # the calls of its publication, read from its result on the log (Talkable refused the key:
    # no retry within the attempt)
    assert element(browser, By.ID, "talkable-calls").text == "attempt 1: 1 call"
    assert browser.execute_script("return document.scripts.length") == 0
    browser.switch_to.default_content()
    assert browser.execute_script("return document.scripts.length") == 0
    pages.seen("timeline")

    # the person
    follow(browser, element(browser, By.ID, "person-link"))
    assert "1 of 3" in element(browser, By.ID, "window").text
    pages.seen("person")

    # the dead letter, its preview (a dry run: nothing sent yet)
    follow(browser, element(browser, By.LINK_TEXT, "Dead letters"))
    letters = element(browser, By.ID, "letters")
    assert "parked: can be redriven" in letters.text
    # narrowed to the letters of the publisher's topic, chosen by its short name
    Select(element(browser, By.NAME, "topic")).select_by_visible_text("completions")
    follow(browser, element(browser, By.CSS_SELECTOR, "#letter-filters button"))
    assert "topic=completions" in browser.current_url
    letters = element(browser, By.ID, "letters")
    assert "parked: can be redriven" in letters.text
    pages.seen("deadletters")
    row = next(
        tr for tr in letters.find_elements(By.CSS_SELECTOR, "tbody tr") if refused[:18] in tr.text
    )
    follow(browser, row.find_element(By.CSS_SELECTOR, "button.redrive-one"))
    assert element(browser, By.ID, "would-count").text == "1"
    pages.seen("redrive-preview")
    assert system.projection.request(refused).state == "publish_failed"

    # the site's key is fixed at Talkable; the operator confirms
    system.talkable("POST", "/_control", {"api_keys": {"test-site": OLD_KEY}})
    follow(browser, element(browser, By.ID, "confirm"))
    assert element(browser, By.ID, "redriven-count").text == "1"
    pages.seen("redriven")
    follow(browser, element(browser, By.CSS_SELECTOR, "#redriven a.rid"))

    def published() -> bool:
        browser.refresh()
        return element(browser, By.ID, "state").text == "published"

    element(browser, By.ID, "timeline")

    wait_until(published, 60, 0.5, what="the redriven request published, on its timeline")
    timeline = element(browser, By.ID, "timeline").text
    assert "redriven by an operator" in timeline
    browser.switch_to.frame(element(browser, By.ID, "content"))
    assert element(browser, By.ID, "talkable-calls").text == "attempt 2: 1 call"  # the redrive's
    browser.switch_to.default_content()
    pages.seen("timeline-published")
    [event] = [e for e in system.talkable("GET", "/_events") if e["email"] == EMAIL]
    assert event["event_number"] == f"generate_text_complete-{refused}"

    # no page held a key, sealed or plain
    everything = "\n".join(pages.sources.values())
    for secret in ("gAAAAA", OLD_KEY, CURRENT_KEY, OPENAI_KEY):
        assert secret not in everything, secret
    assert len(pages.sources) >= 8

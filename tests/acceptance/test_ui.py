"""The web page at /ui, in a real headless browser (Debian's chromium, driven through
its chromedriver by selenium), on the Procfile's processes with API keys: it asks for a
key, lists executions with filters, follows an execution's timeline live from its
stream, and its buttons terminate and reset. A screenshot of the execution's page is
kept in test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.acceptance.conftest import REPO, Stack, execution_id, own_stack, wait_for_end

pytestmark = pytest.mark.timeout(180)

KEY = "ui-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with own_stack(tmp_path_factory.mktemp("ui"), {"CHAINLINE_API_KEYS": KEY}, AUTH) as stack:
        yield stack


@pytest.fixture
def api(keyed: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.base_url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def browser(chromium: WebDriver, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """The browser; should the test fail, what it showed is kept in test-artifacts/."""
    failed_before = request.session.testsfailed
    yield chromium
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        name = request.node.name
        chromium.save_screenshot(str(ARTIFACTS / f"{name}.failed.png"))
        (ARTIFACTS / f"{name}.failed.html").write_text(chromium.page_source)


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(browser: WebDriver, keyed: Stack, path: str = "/ui", key: str = KEY) -> None:
    browser.delete_all_cookies()
    browser.get(keyed.base_url + path)
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "api_key")))
    browser.find_element(By.ID, "api_key").send_keys(key)
    browser.find_element(By.ID, "sign-in").click()


def wait(browser: WebDriver, seconds: float = 20) -> WebDriverWait[WebDriver]:
    return WebDriverWait(browser, seconds, poll_frequency=0.1)


# The page redraws as its execution's events arrive, so what the test reads is read in
# one script, never from an element found earlier (which a redraw may have replaced).
def text_of(browser: WebDriver, element_id: str) -> str:
    text = browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : ''",
        element_id,
    )
    return str(text)


def status_shown(browser: WebDriver) -> str:
    status = browser.execute_script(
        "const e = document.querySelector('#execution h1 .status');"
        " return e ? e.dataset.status : ''"
    )
    return str(status)


def count(browser: WebDriver, selector: str) -> int:
    script = "return document.querySelectorAll(arguments[0]).length"
    return int(browser.execute_script(script, selector))


def click(browser: WebDriver, element_id: str) -> None:
    """Click the element once it is there and enabled (a redraw may replace it between
    finding and clicking: then it is found again)."""

    def clicked(b: WebDriver) -> bool:
        try:
            button = b.find_element(By.ID, element_id)
            if not button.is_enabled():
                return False
            button.click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    wait(browser).until(clicked)


def start(api: httpx.Client, workflow: str, input_value: Any) -> str:
    new_id = execution_id()
    reply = api.post(
        f"/v1/workflows/{workflow}/execute", json={"execution_id": new_id, "input": input_value}
    )
    assert reply.status_code == 200, reply.text
    return new_id


def test_the_page_and_the_metrics_ask_for_a_key(keyed: Stack, api: httpx.Client) -> None:
    with httpx.Client(base_url=keyed.base_url, timeout=30) as anonymous:
        page = anonymous.get("/ui/executions/abc?x=1")
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login?next=%2Fui%2Fexecutions%2Fabc%3Fx%3D1"
        assert anonymous.get("/ui/static/ui.js").status_code == 303
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/ui/login").status_code == 200

        refused = anonymous.post("/ui/login", data={"api_key": "wrong", "next": "/ui"})
        assert refused.status_code == 303 and "failed=true" in refused.headers["location"]
        assert "chainline_session" not in refused.cookies

        # A session from the login form: an HttpOnly, SameSite=Strict cookie, not the key.
        signed_in = anonymous.post("/ui/login", data={"api_key": KEY, "next": "//elsewhere"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/ui"  # only a page of the UI, never away
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
        session = {"chainline_session": signed_in.cookies["chainline_session"]}
    assert api.get("/metrics").status_code == 200

    with httpx.Client(base_url=keyed.base_url, timeout=30, cookies=session) as browser_like:
        assert browser_like.get("/ui").status_code == 200
        assert browser_like.get("/v1/workflows/runs").status_code == 200
        # A change made with the cookie alone (what another site's form could send) is
        # refused; with the page's header it goes through.
        target = start(api, "sequential-sum", [1])
        wait_for_end(api, target)
        reset = {"event_id": 2, "reason": "test"}
        path = f"/v1/workflows/executions/{target}/reset"
        assert browser_like.post(path, json=reset).status_code == 401
        assert api.get(f"/v1/workflows/executions/{target}").json()["status"] == "COMPLETED"
        accepted = browser_like.post(path, json=reset, headers={"X-Chainline-UI": "1"})
        assert accepted.status_code == 204, accepted.text
        # Signing out needs no header: it only clears the cookie.
        signed_out = browser_like.post("/ui/logout")
        assert signed_out.status_code == 303 and "Max-Age=0" in signed_out.headers["set-cookie"]

    # Other sites' cookies on the same host, however odd, do not hide the session.
    odd = f'pref={{"a": 1}}; foo@x=1; chainline_session={session["chainline_session"]}'
    with httpx.Client(base_url=keyed.base_url, timeout=30) as with_others:
        assert with_others.get("/v1/workflows/runs", headers={"cookie": odd}).status_code == 200


def test_an_execution_s_timeline_follows_it_live_and_a_screenshot_is_kept(
    keyed: Stack, api: httpx.Client, browser: WebDriver, tmp_path: Path
) -> None:
    saga = start(api, "approval-saga", {"folder": str(tmp_path), "item": "book"})
    sign_in(browser, keyed, f"/ui/executions/{saga}")

    # The page shows the execution waiting for its decision, following the stream.
    wait(browser).until(lambda b: "ACTIVITY_TASK_COMPLETED" in text_of(b, "timeline"))
    wait(browser).until(lambda b: text_of(b, "live").lower() == "live")
    assert status_shown(browser) == "RUNNING"
    assert '"item": "book"' in text_of(browser, "input")
    assert "reserve" in text_of(browser, "activities")
    events_before = count(browser, "#timeline li")

    # A signal sent elsewhere: the page changes without being reloaded.
    marker = browser.execute_script("window.notReloaded = true; return window.notReloaded")
    assert marker is True
    reply = api.post(
        f"/v1/workflows/executions/{saga}/signals",
        json={"name": "decide", "input": {"decision": "approve"}},
    )
    assert reply.status_code in (200, 202, 204), reply.text
    wait(browser).until(lambda b: status_shown(b) == "COMPLETED")
    assert browser.execute_script("return window.notReloaded") is True
    timeline = text_of(browser, "timeline")
    assert "WORKFLOW_EXECUTION_SIGNALED" in timeline and "signal decide" in timeline
    assert "WORKFLOW_EXECUTION_COMPLETED" in timeline
    assert count(browser, "#timeline li") > events_before
    assert '"outcome": "approved"' in text_of(browser, "result")
    wait(browser).until(lambda b: text_of(b, "live").lower() == "closed")
    wait(browser).until(lambda b: count(b, "#runs tbody tr") == 1)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "ui-execution.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1100, int(height) + 140))  # the whole page
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_the_list_filters_and_the_buttons_terminate_and_reset(
    keyed: Stack, api: httpx.Client, browser: WebDriver, tmp_path: Path
) -> None:
    held = start(api, "held", {"folder": str(tmp_path)})
    done = start(api, "sequential-sum", [2, 3])
    wait_for_end(api, done)
    sign_in(browser, keyed)

    # Filtered by status, then by workflow: the list holds what matches alone.
    wait(browser).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#executions tbody tr"))
    Select(browser.find_element(By.NAME, "status")).select_by_value("RUNNING")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait(browser).until(lambda b: "status=RUNNING" in b.current_url)
    wait(browser).until(lambda b: _listed(b) and all(s == "RUNNING" for s in _statuses(b)))
    assert held in _listed(browser) and done not in _listed(browser)
    browser.get(keyed.base_url + "/ui?workflow=sequential-sum")
    wait(browser).until(lambda b: done in _listed(b))
    assert held not in _listed(browser)

    # Terminate from the held execution's page.
    browser.find_element(By.CSS_SELECTOR, f'tr[data-execution-id="{done}"] a').click()
    wait(browser).until(lambda b: b.find_elements(By.ID, "reset"))
    browser.get(keyed.base_url + f"/ui/executions/{held}")
    wait(browser).until(lambda b: status_shown(b) == "RUNNING")
    click(browser, "terminate")
    wait(browser).until(lambda b: status_shown(b) == "TERMINATED")
    assert api.get(f"/v1/workflows/executions/{held}").json()["status"] == "TERMINATED"
    wait(browser).until(
        lambda b: b.execute_script("return document.getElementById('cancel').disabled")
    )

    # Reset the completed one to its first workflow task: a second run, which completes.
    browser.get(keyed.base_url + f"/ui/executions/{done}")
    wait(browser).until(lambda b: status_shown(b) == "COMPLETED")
    # The closed execution's page no longer redraws: its controls stay put.
    Select(browser.find_element(By.ID, "reset-point")).select_by_index(0)
    browser.find_element(By.ID, "reason").send_keys("from the page")
    click(browser, "reset")
    wait(browser).until(lambda b: count(b, "#runs tbody tr") == 2)
    reset_run = wait_for_end(api, done)
    assert reset_run["status"] == "COMPLETED" and reset_run["result"] == {"total": 5}
    # The page follows the new run's stream to its end.
    wait(browser).until(
        lambda b: reset_run["run_id"] in text_of(b, "execution") and status_shown(b) == "COMPLETED"
    )
    assert "WORKFLOW_EXECUTION_RESET" in text_of(browser, "timeline")


def _listed(browser: WebDriver) -> list[str]:
    return _read_all(browser, "#executions tbody tr[data-execution-id]", "executionId")


def _statuses(browser: WebDriver) -> list[str]:
    return _read_all(browser, "#executions tbody .status", "status")


def _read_all(browser: WebDriver, selector: str, field: str) -> list[str]:
    found = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset[arguments[1]])",
        selector,
        field,
    )
    return [str(value) for value in found]

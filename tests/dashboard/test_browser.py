"""The dashboard in a real headless Chromium: the page loads, a call made here shows up in
its counts, a task that fails is listed as a dead letter with its error, and its replay
button sends it back to the node, where it then succeeds.  Also the screenshot in docs/.

Across processes: the hub, the nodes and the client are here, the dashboard is a process
of its own on zmq://, the browser another.  Every wait is a selenium WebDriverWait on a
condition (the timeouts are hang guards, not speed requirements).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from vertebra.workflow import WorkflowError, step

WAIT = 30.0
FLOW = step("shop.pack") | step("shop.label") | step("mailer.notify")


def text_at(css: str) -> Callable[[Any], str | None]:
    """A condition: the text of the element at ``css``, when there is one."""
    def read(driver: Any) -> str | None:
        try:
            return str(driver.find_element(By.CSS_SELECTOR, css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return None
    return read


def text_is(css: str, want: str) -> Callable[[Any], bool]:
    """A condition: the element at ``css`` shows exactly ``want``."""
    return lambda d: text_at(css)(d) == want


def states(driver: Any) -> list[str]:
    """The states of the workflow runs the page lists."""
    return [str(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#workflows .state")]


def test_the_page_shows_calls_and_replays_a_dead_letter(network, dashboard, browser):
    wait = WebDriverWait(browser, WAIT, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(dashboard.url)
    wait.until(ec.title_is("vertebra dashboard"))
    wait.until(text_is("#status", "live"))
    wait.until(text_is('article[data-key="shop"] .name', "shop"))
    calls = 'tr[data-key="shop.price"] td.calls'
    wait.until(text_is(calls, "0"))

    price = network.client.proxy("shop").price
    assert [price("abc") for _ in range(3)] == [300, 300, 300]
    wait.until(text_is(calls, "3"))

    sent = network.client.proxy("shop").ship.cast("parcel-7")
    row = f'#dead-letters tr[data-key="{sent}"]'
    wait.until(text_is(f"{row} .target", "shop.ship"))
    assert text_at(f"{row} .error")(browser) == "PermissionError: the depot is closed"
    assert text_at(f"{row} .args")(browser) == '"parcel-7"'
    assert text_at(f"{row} .attempts")(browser) == "1"
    assert text_at("#n-dead")(browser) == "1"
    assert network.shop.shipped == []

    network.shop.depot_open = True
    browser.find_element(By.CSS_SELECTOR, f"{row} button.replay").click()
    wait.until(lambda d: network.shop.shipped == ["parcel-7"])         # delivered, and it succeeded
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, row)))
    wait.until(text_is("#toast", "replayed 1 dead letter of shop"))
    wait.until(text_is("#n-dead", "0"))
    assert network.client.dead_letters("shop") == []


@pytest.fixture
def traffic(network) -> Iterator[None]:
    """Calls and tasks in the background, so that the rates are not zero."""
    stop = threading.Event()

    def run() -> None:
        price, send = network.client.proxy("shop").price, network.client.proxy("mailer").send
        while not stop.is_set():
            price("sku-1")
            send.cast("ada@example.org", "your order")
            stop.wait(0.003)              # pacing: about a few hundred calls a second

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=20)


def test_screenshot_with_every_panel_filled(network, traffic, dashboard, browser, tmp_path: Path):
    client = network.client
    for parcel in ("parcel-41", "parcel-42"):
        client.proxy("shop").ship.cast(parcel)
    assert FLOW.run(client, "1001", mode="choreographed", timeout=WAIT) == "mailed label:box-1001"
    with pytest.raises(WorkflowError):
        FLOW.run(client, "13", mode="choreographed", timeout=WAIT)
    with ThreadPoolExecutor(1) as pool:
        slow: Future[Any] = pool.submit(FLOW.run, client, "slow", mode="choreographed", timeout=WAIT)
        wait = WebDriverWait(browser, WAIT, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(dashboard.url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")) == 2)
        wait.until(lambda d: sorted(states(d)) == ["failed", "finished", "running"])
        wait.until(lambda d: (text_at('tr[data-key="shop.price"] td.rate')(d) or "0.0") != "0.0")
        wait.until(lambda d: (text_at('tr[data-key="mailer.send"] td.rate')(d) or "0.0") != "0.0")
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        network.shop.gate.set()
        assert slow.result(WAIT) == "mailed label:box-slow"
        wait.until(lambda d: "running" not in states(d))
    target = os.environ.get("VERTEBRA_DASHBOARD_SCREENSHOT")     # e.g. docs/img/dashboard.png
    if target:
        shutil.copyfile(shot, target)

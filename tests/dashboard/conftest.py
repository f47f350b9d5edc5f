"""Fixtures of the dashboard tests: an embedded zmq hub with the nodes and a client in this
process, the dashboard in a process of its own (``python -m vertebra.dashboard``), and a
real headless Chromium driven by selenium with the system's chromedriver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vertebra

from .nodes import Mailer, Shop

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage", "--window-size=1360,1030")


def _find(names: tuple[str, ...]) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"none of {', '.join(names)} is installed: the dashboard is tested in a real "
                "Chromium (apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A headless Chromium (a fresh profile) under the system chromedriver; never downloads."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")          # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = _find(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_find(("chromedriver",))))
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Network:
    """The hub, the served nodes and a client bus."""

    url: str
    shop: Shop
    mailer: Mailer
    client: vertebra.Bus


@pytest.fixture
def network() -> Iterator[Network]:
    shop, mailer = Shop(), Mailer()
    with vertebra.Hub("tcp://127.0.0.1:0") as hub:
        server = vertebra.connect(hub.url)
        client = vertebra.connect(hub.url, timeout=20)
        try:
            server.serve(shop, mailer)
            yield Network(hub.url, shop, mailer, client)
        finally:
            shop.gate.set()
            client.close()
            server.close()


@dataclass
class Dashboard:
    """A running ``python -m vertebra.dashboard`` and the address of its page."""

    url: str
    process: subprocess.Popen[str]


@pytest.fixture
def dashboard(network: Network) -> Iterator[Dashboard]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vertebra.dashboard", network.url, "--port", "0",
                             "--interval", "0.25"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""     # printed once the bus is connected
        if "http://" not in line:
            proc.kill()
            pytest.fail(f"the dashboard did not start: {line!r} {proc.communicate(timeout=10)[1]}")
        yield Dashboard(line.split()[3], proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert proc.returncode in (0, -15), proc.stderr.read() if proc.stderr else ""

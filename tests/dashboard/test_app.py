"""The web app over HTTP, without a browser: the page and its files, the state as JSON and
as server-sent events, the replay and what it refuses; and the command that fails to start.

The app is served by uvicorn in a thread of this process, on memory:// with the node."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

import vertebra
from vertebra.dashboard import create_app
from vertebra.dashboard.server import allowed_hosts_for, bind, http_url

from .nodes import Shop


@dataclass
class Served:
    base: str
    shop: Shop
    client: vertebra.Bus


@pytest.fixture
def served() -> Iterator[Served]:
    url = f"memory://app-{uuid.uuid4().hex[:10]}"
    shop = Shop()
    node = vertebra.connect(url)
    node.serve(shop)
    client = vertebra.connect(url, timeout=20)
    ready = threading.Event()
    sock = bind("127.0.0.1", 0)
    app = create_app(url, interval=0.1, on_ready=ready.set)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the dashboard app did not start"
        yield Served(http_url(sock), shop, client)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        client.close()
        node.close()
    assert not thread.is_alive()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _state_until(base: str, cond, what: str, timeout: float = 20.0) -> dict:
    """Read /api/state until ``cond(state)``; the timeout is a hang guard."""
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(_get(base + "api/state")[2])
        if cond(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}; last state {state}")
        time.sleep(0.02)


def test_the_page_and_its_files_are_served(served):
    status, kind, page = _get(served.base)
    assert status == 200 and kind.startswith("text/html") and "static/dashboard.js" in page
    assert _get(served.base + "static/dashboard.js")[:2] == (200, "text/javascript; charset=utf-8")
    assert _get(served.base + "static/dashboard.css")[0] == 200
    assert _get(served.base + "static/../app.py")[0] == 404


def test_the_events_stream_sends_states(served):
    with urllib.request.urlopen(served.base + "events", timeout=20) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        versions = []
        while len(versions) < 2:
            line = r.readline().decode()
            if line.startswith("data: "):
                state = json.loads(line[6:])
                versions.append(state["version"])
                assert [s["name"] for s in state["services"]] == ["shop"]
        assert versions[1] > versions[0]


def test_replay_over_http_and_what_it_refuses(served):
    sent = served.client.proxy("shop").ship.cast("parcel-9")
    _state_until(served.base, lambda s: [d["id"] for d in s["dead_letters"]] == [sent], "the dead letter")
    url = served.base + "api/replay"
    body = json.dumps({"service": "shop", "ids": [sent]}).encode()
    assert _post(url, body, {"Content-Type": "text/plain"})[0] == 415          # a plain form: no
    assert _post(url, body, {"Content-Type": "application/json",
                             "Origin": "http://evil.example"})[0] == 403
    assert _post(url, b"{", {"Content-Type": "application/json"})[0] == 400
    assert _post(url, json.dumps({"service": "shop", "ids": "all"}).encode(),
                 {"Content-Type": "application/json"})[0] == 400
    assert _get(served.base, {"Host": "rebound.example:80"})[0] == 400         # DNS rebinding: no
    assert served.client.dead_letters("shop")[0].id == sent                    # nothing replayed yet
    served.shop.depot_open = True
    origin = served.base.rstrip("/")
    assert _post(url, body, {"Content-Type": "application/json", "Origin": origin}) == (200, {"replayed": 1})
    _state_until(served.base, lambda s: s["dead_letters"] == [], "the dead letter gone")
    assert served.shop.shipped == ["parcel-9"]


def test_allowed_hosts_follow_the_bound_address():
    assert "localhost" in allowed_hosts_for("127.0.0.1") and "*" not in allowed_hosts_for("127.0.0.1")
    assert allowed_hosts_for("0.0.0.0") == ["*"]
    assert "10.1.2.3" in allowed_hosts_for("10.1.2.3")


def test_the_command_fails_clearly_when_the_bus_cannot_open():
    out = subprocess.run([sys.executable, "-m", "vertebra.dashboard", "nosuchscheme://x", "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "unknown transport scheme 'nosuchscheme'" in out.stderr and "Traceback" not in out.stderr

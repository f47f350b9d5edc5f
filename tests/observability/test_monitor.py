"""vertebra monitor and vertebra nodes, run as a user would: the monitor in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

import vertebra
from vertebra import Node, rpc, task

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Inventory(Node):
    """Stock levels."""

    name = "inventory"

    @rpc
    def level(self, sku: str) -> int:
        return len(sku)

    @task
    def restock(self, sku: str) -> None:
        pass


@pytest.fixture
def busy_service():
    hub = vertebra.Hub("tcp://127.0.0.1:0").start()
    node = vertebra.connect(hub.url)
    node.serve(Inventory())
    client = vertebra.connect(hub.url)
    for _ in range(7):
        client.proxy("inventory").level("abc")
    yield hub.url, client
    client.close()
    node.close()
    hub.stop()


def test_nodes_prints_the_table_and_json(busy_service):
    url, _ = busy_service
    out = subprocess.run([sys.executable, "-m", "vertebra", "nodes", url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:4] == ["service", "replicas", "method", "kind"]
    level = next(r.split() for r in rows if " level " in r)
    assert level[:5] == ["inventory", "1", "level", "rpc", "7"]
    out = subprocess.run([sys.executable, "-m", "vertebra", "nodes", url, "--json"], capture_output=True,
                         text=True, timeout=60)
    data = {row["method"]: row for row in json.loads(out.stdout)}
    assert data["level"]["calls"] == 7 and data["restock"]["kind"] == "task"


def test_monitor_refreshes_in_place_in_a_terminal(busy_service):
    url, client = busy_service
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vertebra", "monitor", url, "--interval", "0.3",
                             "--count", "12"], stdin=follower, stdout=follower, stderr=follower,
                            env={**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"})
    os.close(follower)
    screen = b""
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            client.proxy("inventory").level("more")   # traffic while it watches
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    screen += os.read(leader, 65536)
                except OSError:
                    break
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(leader)
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert "vertebra monitor" in text
    assert "inventory" in text and "level" in text and "restock" in text
    assert text.count("vertebra monitor") >= 2          # it refreshed
    assert b"\x1b[" in screen                           # in place: cursor movement, not scrolling
    counts = [int(m) for m in re.findall(r"level\s+│?\s*rpc\s+│?\s*(\d+)", text)]
    assert counts and max(counts) > 7                   # the live figures moved

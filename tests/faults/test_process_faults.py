"""Process faults, for real: SIGKILL a worker mid-task, SIGKILL a sender with a spool.

Counted: every item must arrive (lost = 0); duplicates are allowed only where the
transport is at-least-once (the items in flight on a killed worker)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vertebra

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.faults.procs", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def expect_line(proc: subprocess.Popen[str], word: str) -> str:
    line = proc.stdout.readline()
    assert line.startswith(word), f"expected {word!r}, got {line!r} (exit {proc.poll()})"
    return line


def items(*files: Path) -> collections.Counter[int]:
    c: collections.Counter[int] = collections.Counter()
    for f in files:
        if f.exists():
            c.update(int(x) for x in f.read_text().split())
    return c


def wait_for(cond, timeout: float, what: str, progress=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what} {progress()}"
        time.sleep(0.05)


def require_processes(url_for) -> None:
    bus = vertebra.connect(url_for("client"))
    try:
        if not bus.core.transport.capabilities.multi_process:
            pytest.skip("capability multi_process=False: buses cannot meet across processes")
    finally:
        bus.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_worker_killed_mid_task_loses_nothing(url_for, tmp_path):
    require_processes(url_for)
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    a = spawn("worker", url_for("faulty"), str(a_out), "0.05")
    b = spawn("worker", url_for("faulty"), str(b_out), "0.05")
    try:
        expect_line(a, "ready")
        expect_line(b, "ready")
        # The sender stays up, as a real one does: on a transport without a broker
        # (xmpp://) it is the sender that hands a dead worker's tasks to another.
        with vertebra.connect(url_for("client")) as bus:
            for i in range(200):
                bus.proxy("faulty").work.cast(i)
            bus.flush(30)
            wait_for(lambda: sum(items(a_out).values()) >= 10, 60, "worker a to get going")
            a.send_signal(signal.SIGKILL)            # mid-task: it holds unacked work
            a.wait(10)
            wait_for(lambda: set(items(a_out, b_out)) >= set(range(200)), 120, "all 200 items")
        seen = items(a_out, b_out)
        lost = set(range(200)) - set(seen)
        duplicates = sum(n - 1 for n in seen.values())
        print(f"killed worker a after {sum(items(a_out).values())} items; lost={len(lost)} "
              f"duplicates={duplicates}")
        assert not lost
        assert duplicates <= 4 * 2               # at most what a held unacked (prefetch 4, twice over)
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sender_killed_with_a_spool_loses_nothing(url_for, tmp_path):
    require_processes(url_for)
    n = 10_000
    spool, out = tmp_path / "spool.db", tmp_path / "out"
    sender = spawn("sender", url_for("client"), str(spool), str(n))
    try:
        expect_line(sender, "accepted")          # every cast accepted (spooled) ...
        sender.send_signal(signal.SIGKILL)       # ... and the process dies at once
        sender.wait(10)
    finally:
        sender.kill()
    again = spawn("flush", url_for("client"), str(spool))   # restarted: it restores the spool
    restored = int(expect_line(again, "restored").split()[1])
    worker = spawn("worker", url_for("faulty"), str(out))   # and then the receiver comes up
    try:
        expect_line(worker, "ready")
        wait_for(lambda: set(items(out)) >= set(range(n)), 180, f"all {n} items",
                 lambda: f"(got {len(set(items(out)))}; sender exit {again.poll()})")
        assert again.wait(180) == 0                          # the sender flushed and left
        seen = items(out)
        print(f"restored {restored} from the spool; received {len(seen)} distinct, "
              f"{sum(seen.values()) - len(seen)} duplicates, lost {n - len(set(seen) & set(range(n)))}")
        assert set(seen) == set(range(n))
    finally:
        for p in (worker, again):
            p.kill()
            p.wait(10)

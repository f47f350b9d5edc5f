"""Helpers of the fault suite: run a program of the suite as a real process, wait for a
condition with a deadline, and count what arrived against what was sent."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import vertebra

ROOT = Path(__file__).resolve().parents[2]


def spawn(module: str, *args: str, stderr: Any = None, stdin: Any = None,
          new_session: bool = False) -> subprocess.Popen[str]:
    """``python -m tests.faults.MODULE ARGS...`` from the repository root, stdout piped.

    ``new_session`` puts it in a process group of its own, so that :func:`kill_group`
    also ends the processes it forked."""
    return subprocess.Popen([sys.executable, "-m", f"tests.faults.{module}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=stderr, stdin=stdin, text=True,
                            start_new_session=new_session,
                            env=_env())


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc`` and, if it leads a process group (``new_session``), its children."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, 9)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
    proc.wait(10)


def expect_line(proc: subprocess.Popen[str], word: str) -> str:
    """The next line ``proc`` prints; fail unless it starts with ``word``."""
    line = proc.stdout.readline()
    assert line.startswith(word), f"expected {word!r}, got {line!r} (exit {proc.poll()})"
    return line


def items(*files: Path) -> collections.Counter[int]:
    """How many times each integer item was written to ``files`` (one per line)."""
    c: collections.Counter[int] = collections.Counter()
    for f in files:
        if f.exists():
            c.update(int(x) for x in f.read_text().split())
    return c


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             progress: Callable[[], str] = lambda: "") -> None:
    """Poll ``cond`` until it holds; fail after ``timeout`` seconds (a bound so that a
    loss fails the test instead of hanging it, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what} {progress()}"
        time.sleep(0.05)


def settle(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` passes; whether it held (the caller
    then counts and asserts, so that a failure shows the numbers)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def require_processes(url_for: Callable[[str], str]) -> None:
    """Skip unless buses of this transport reach each other across processes."""
    bus = vertebra.connect(url_for("client"))
    try:
        if not bus.core.transport.capabilities.multi_process:
            pytest.skip("capability multi_process=False: buses cannot meet across processes")
    finally:
        bus.close()


def tally(test: str, scheme: str, expected: Iterable[Any], seen: collections.Counter[Any], *,
          sent: int, accepted: int, dropped: int = 0, extra: str = "") -> set[Any]:
    """Print one line of counts for the closing note (``pytest -s`` shows it); return
    the expected items that never arrived."""
    want = set(expected)
    lost = want - set(seen)
    delivered = len(want & set(seen))
    duplicates = sum(n - 1 for n in seen.values())
    print(f"\nCOUNTS {test}[{scheme}]: sent={sent} accepted={accepted} delivered={delivered} "
          f"duplicates={duplicates} dropped(counted)={dropped} lost={len(lost)}"
          + (f" {extra}" if extra else ""))
    return lost

"""Helpers for tests/examples/test_frameworks.py: the framework examples run as the servers
they are (uvicorn, Django's manage.py, gunicorn) in subprocesses, their output read as it comes."""

from __future__ import annotations

import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx

from .conftest import EXAMPLES

FRAMEWORKS = EXAMPLES / "frameworks"
T = TypeVar("T")


def example(name: str) -> ModuleType:
    """Import ``examples/frameworks/NAME.py`` into the test process (to serve its nodes here)."""
    if str(FRAMEWORKS) not in sys.path:
        sys.path.insert(0, str(FRAMEWORKS))
    return importlib.import_module(name)


def wait_http(client: httpx.Client, path: str, server: Server, timeout: float = 30.0) -> httpx.Response:
    """The first response to ``GET path`` once ``server`` accepts connections."""
    def probe() -> list[httpx.Response]:
        assert server.running(), f"{' '.join(server.cmd)} exited {server.proc.poll()}:\n{server.log}"
        try:
            return [client.get(path)]
        except httpx.TransportError:        # not listening yet
            return []
    return wait_until(f"{path} to answer", probe, timeout, poll=0.05)[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str | Callable[[], str], probe: Callable[[], T], timeout: float = 20.0,
               poll: float = 0.02) -> T:
    """Poll ``probe`` until it returns something true; fail after ``timeout`` seconds,
    saying ``what`` was awaited (a callable: asked then, to show the state at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {said} (last: {value!r})")
        time.sleep(poll)


class Server:
    """A program started in a session of its own; stdout and stderr read into :attr:`log`.

    :meth:`terminate` is the graceful stop (SIGTERM to the program, as a process manager
    sends it); :meth:`kill` (use it in a ``finally``) SIGKILLs the whole process group, so
    that no worker outlives the test.
    """

    def __init__(self, *cmd: str, url: str | None, cwd: Path = FRAMEWORKS, **env: str) -> None:
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        environ.pop("VERTEBRA_URL", None)
        if url is not None:                 # $VERTEBRA_URL: where the program's bus goes
            environ["VERTEBRA_URL"] = url
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=environ, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._lines.append("")          # a wake-up: the output is closed
            self._cond.notify_all()

    @property
    def log(self) -> str:
        """Everything the program printed so far."""
        with self._cond:
            return "\n".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` on one output line (from line ``after``); fail if
        none comes within ``timeout`` or the program exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[after:]:
                    if m := regex.search(line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.5))
        raise AssertionError(f"{pattern!r} not printed by {' '.join(self.cmd)} "
                             f"(exit {self.proc.poll()}):\n{self.log}")

    def matches(self, pattern: str) -> list[re.Match[str]]:
        """Every match of ``pattern`` on one output line, so far."""
        regex = re.compile(pattern)
        with self._cond:
            return [m for line in self._lines if (m := regex.search(line))]

    def line_of(self, pattern: str) -> int:
        """The index of the first output line matching ``pattern`` (fail if none)."""
        regex = re.compile(pattern)
        with self._cond:
            for i, line in enumerate(self._lines):
                if regex.search(line):
                    return i
        raise AssertionError(f"{pattern!r} not in the output:\n{self.log}")

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the program (not to its children)."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the program to exit and its output to end; its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(self.cmd)} did not exit within {timeout:g}s:\n"
                                 f"{self.log}") from None
        self._reader.join(10)
        return code

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the program (as a process manager stops it) and wait; its exit code."""
        self.send(signal.SIGTERM)
        return self.wait(timeout)

    def running(self) -> bool:
        """Whether the program has not exited yet."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the program and every process of its session (idempotent)."""
        if self.proc.poll() is None:        # not reaped: the group id is still ours
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()


"""Fixtures for the example tests: run an example as a subprocess, bounded in time, and a
private AMQP namespace (``?prefix=vt-...``) per test on the test RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VERTEBRA_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Runs a script as ``python SCRIPT ARGS`` would, with some modules made unimportable (as
# where they are not installed): ``python -c WITHOUT "mod1,mod2" SCRIPT ARGS...``.
WITHOUT = """
import os, runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None        # `import name` now raises ImportError
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_example(name: str, *args: str, timeout: float = 40.0, without: tuple[str, ...] = ()) -> str:
    """Run ``examples/NAME`` with ``args``; fail unless it exits 0 within ``timeout``;
    return its stdout.  ``without``: modules that must fail to import in it, as in a
    virtualenv where they are not installed."""
    script = [str(EXAMPLES / name), *args]
    cmd = [sys.executable, "-c", WITHOUT, ",".join(without), *script] if without else \
        [sys.executable, *script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def start_example(name: str, *args: str) -> subprocess.Popen[str]:
    """Start ``examples/NAME`` in the background (the caller stops it)."""
    return subprocess.Popen([sys.executable, str(EXAMPLES / name), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=EXAMPLES.parent)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it does not exit."""
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="session")
def amqp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.servers import amqp

    with amqp.running(tmp_path_factory.mktemp("amqp-server")) as server:
        yield server


@pytest.fixture
def amqp_url(amqp_server: Any) -> Iterator[Callable[..., str]]:
    """``amqp_url(*services)`` -> a URL with a prefix of this test's own; the queues of
    ``services`` and the prefix's exchanges are deleted after the test."""
    with amqp_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        def factory(*services: str) -> str:
            for service in services:
                url_for(service)
            return str(url_for("client"))
        yield factory


@pytest.fixture(scope="session")
def xmpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.servers import xmpp

    with xmpp.running(tmp_path_factory.mktemp("xmpp-server")) as server:
        yield server


@pytest.fixture
def xmpp_url(xmpp_server: Any) -> Iterator[Callable[[str], str]]:
    """``xmpp_url(account)`` -> a URL for that account in a directory room of this test's own."""
    with xmpp_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for

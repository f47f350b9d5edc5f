"""The vertebra command, run as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest


def run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VERTEBRA_URL": ""}
    return subprocess.run([sys.executable, "-m", "vertebra", *args], capture_output=True, text=True,
                          timeout=60, env=env, **kw)


def test_demo_runs_calls_tasks_and_events():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "calc.add(2, 3)          -> 5" in text
    assert "RemoteError ZeroDivisionError" in text
    assert "done per replica" in text and "replica-1" in text and "replica-2" in text
    assert "orders.created" in text and "orders.eu.shipped" in text
    assert "thumbs  (2 replicas" in text


def test_call_reports_remote_errors_as_a_failure():
    out = run("call", "memory://", "nobody.ping", "1", '{"a": 2}', "--timeout", "2")
    assert out.returncode == 1
    assert "Unreachable" in out.stderr


def test_nodes_on_an_empty_bus():
    out = run("nodes", "memory://")
    assert out.returncode == 0
    assert out.stdout.strip() == "no services"
    out = run("nodes", "memory://", "--json")
    assert out.stdout.strip() == "[]"


def test_serve_drains_and_exits_cleanly_on_sigterm(tmp_path):
    (tmp_path / "mynode.py").write_text(textwrap.dedent("""
        from vertebra import Node, rpc
        class Echo(Node):
            @rpc
            def echo(self, x):
                return x
    """))
    proc = subprocess.Popen([sys.executable, "-m", "vertebra", "serve", "mynode:Echo", "--url", "memory://"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving mynode:Echo on memory://" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()


@pytest.mark.parametrize("bad", ["nocolon", "missing_module_xyz:Thing"])
def test_serve_rejects_bad_specs(bad):
    out = run("serve", bad)
    assert out.returncode != 0

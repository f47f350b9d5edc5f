"""Flush on exit: casts accepted before SIGTERM or a normal exit reach the transport within linger."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import asyncio, sys, time, vertebra

    out = open(sys.argv[1], "a", buffering=1)
    bus = vertebra.connect("memory://", linger=30, send_window=1)
    real_send = bus.core.outbox._send

    async def slow_network(env):       # a slow link: the outbox builds a backlog
        await asyncio.sleep(0.002)
        await real_send(env)
        out.write(f"{env.args[0]}\\n")   # what the transport took

    bus.core.outbox._send = slow_network
    for i in range(300):
        bus.proxy("sink").put.cast(i)
    print("accepted", len(bus.core.outbox), flush=True)
    if sys.argv[2] == "sigterm":
        time.sleep(60)                 # SIGTERM arrives while the backlog drains
""")


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_outbox_is_flushed_on_exit(tmp_path, how):
    out = tmp_path / "received"
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, str(out), how], stdout=subprocess.PIPE, text=True)
    accepted, backlog = proc.stdout.readline().split()
    assert accepted == "accepted" and int(backlog) > 100   # most were still queued
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) in (0, 128 + signal.SIGTERM)
    received = out.read_text().split()
    assert sorted(map(int, received)) == list(range(300))

"""Process faults, for real: SIGKILL a worker mid-task, SIGKILL a sender with a spool.

Counted: every item must arrive (lost = 0); duplicates are allowed only where the
transport is at-least-once (the items in flight on a killed worker)."""

from __future__ import annotations

import signal

import pytest

import vertebra

from .util import expect_line, items, require_processes, spawn, tally, wait_for


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_worker_killed_mid_task_loses_nothing(url_for, scheme, tmp_path):
    require_processes(url_for)
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    a = spawn("procs", "worker", url_for("faulty"), str(a_out), "0.05")
    b = spawn("procs", "worker", url_for("faulty"), str(b_out), "0.05")
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
        lost = tally("worker-killed-mid-task", scheme, range(200), seen, sent=200, accepted=200,
                     extra=f"(worker a killed after {sum(items(a_out).values())} items)")
        duplicates = sum(n - 1 for n in seen.values())
        assert not lost
        assert duplicates <= 4 * 2               # at most what a held unacked (prefetch 4, twice over)
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sender_killed_with_a_spool_loses_nothing(url_for, scheme, tmp_path):
    require_processes(url_for)
    n = 10_000
    spool, out = tmp_path / "spool.db", tmp_path / "out"
    sender = spawn("procs", "sender", url_for("client"), str(spool), str(n))
    try:
        expect_line(sender, "accepted")          # every cast accepted (spooled) ...
        sender.send_signal(signal.SIGKILL)       # ... and the process dies at once
        sender.wait(10)
    finally:
        sender.kill()
    again = spawn("procs", "flush", url_for("client"), str(spool))   # restarted: it restores the spool
    restored = int(expect_line(again, "restored").split()[1])
    worker = spawn("procs", "worker", url_for("faulty"), str(out))   # and then the receiver comes up
    try:
        expect_line(worker, "ready")
        wait_for(lambda: set(items(out)) >= set(range(n)), 180, f"all {n} items",
                 lambda: f"(got {len(set(items(out)))}; sender exit {again.poll()})")
        assert again.wait(180) == 0                          # the sender flushed and left
        seen = items(out)
        lost = tally("sender-killed-with-spool", scheme, range(n), seen, sent=n, accepted=n,
                     extra=f"restored={restored}")
        assert not lost
        assert set(seen) == set(range(n))
    finally:
        for p in (worker, again):
            p.kill()
            p.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sender_killed_while_sending_with_a_spool_loses_nothing(url_for, scheme, tmp_path):
    """The receiver is up and the sender is sending when it is killed -9: the restarted
    sender sends what its spool still held.  Duplicates are counted, and each must be a
    message the spool gave back (sent before the kill, not yet struck off the spool)."""
    require_processes(url_for)
    n = 10_000
    spool, out = tmp_path / "spool.db", tmp_path / "out"
    worker = spawn("procs", "worker", url_for("faulty"), str(out))
    procs = [worker]
    try:
        expect_line(worker, "ready")
        sender = spawn("procs", "sender", url_for("client"), str(spool), str(n))
        procs.append(sender)
        expect_line(sender, "accepted")          # all n spooled, sending under way ...
        sender.send_signal(signal.SIGKILL)       # ... and the process dies at once
        sender.wait(10)
        before = sum(items(out).values())
        again = spawn("procs", "flush", url_for("client"), str(spool))   # restarted
        procs.append(again)
        restored = int(expect_line(again, "restored").split()[1])
        wait_for(lambda: set(items(out)) >= set(range(n)), 180, f"all {n} items",
                 lambda: f"(got {len(set(items(out)))}; restored {restored}; sender exit {again.poll()})")
        assert again.wait(180) == 0                          # the sender flushed and left
        seen = items(out)
        duplicates = sum(seen.values()) - len(seen)
        lost = tally("sender-killed-while-sending", scheme, range(n), seen, sent=n, accepted=n,
                     extra=f"restored={restored} arrived-before-restart={before}")
        assert not lost
        assert duplicates <= restored, f"{duplicates} duplicates, but the spool gave back only {restored}"
    finally:
        for p in procs:
            p.kill()
            p.wait(10)

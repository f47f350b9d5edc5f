"""Delivery in the shapes real programs take (issue 14), on every transport that spans
processes: pre-fork workers after ``import vertebra``; a bus opened before a fork; a bus
local to ``main()`` that returns, gets SIGTERM or raises; a bus never closed in a module
global; a bus made in a thread that ended; a ``with`` block; a downed service beside live
ones.  Each sender is a real process (tests/faults/shapes.py, public API only); the
collector is served here and counts what arrives.

Pass = nothing lost that the outbox's policy does not count.  Each test prints one
``COUNTS`` line (``pytest -s`` shows them) with sent / accepted / delivered / duplicates /
counted drops.  Waits are polls with a deadline (a bound, not a speed requirement)."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
from typing import Any

import pytest

from .collector import Collector, DedupCollector
from .util import kill_group, require_processes, settle, spawn, tally

N = 300                 # casts per sender shape
ARRIVAL_BOUND = 30.0    # seconds the collector may take to see what the sender handed over
EXIT_BOUND = 60.0       # seconds a sender may take to flush (linger 30 s) and exit


def finish(proc: subprocess.Popen[str], timeout: float = EXIT_BOUND) -> str:
    """The rest of ``proc``'s stdout once it has exited (killed, group and all, if it
    does not exit within ``timeout``: the test then fails on the counts)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        out += f"\n(did not exit within {timeout:g}s: killed)"
    return out


def exit_stats(out: str) -> dict[str, Any] | None:
    """The outbox counters the sender printed as it left (None: the bus object was gone)."""
    m = re.search(r"^exit-stats (.*)$", out, re.M)
    if not m or not m.group(1).startswith("{"):
        return None
    return dict(json.loads(m.group(1)))


def said_at_exit(out: str) -> str:
    """The sender's exit-stats line, for the counts line ("never printed": it did not get
    as far as its last exit hook)."""
    m = re.search(r"^exit-stats (.*)$", out, re.M)
    return f"outbox-at-exit={m.group(1) if m else 'never printed'}"


def counted_drops(stats: dict[str, Any] | None) -> int:
    """What the outbox counted as given up: dropped by the overflow policy, expired, failed."""
    if not stats:
        return 0
    return int(stats.get("dropped", 0) + stats.get("expired", 0) + stats.get("failed", 0))


def serve(sync_bus: Any, node: Collector) -> Collector:
    sync_bus("collector").serve(node)
    return node


# -- 1. pre-fork workers -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_prefork_workers_after_import_deliver_every_report(url_for, sync_bus, scheme, tmp_path):
    """import vertebra in a master, fork 4 workers, 50 distinct reports each, to a
    collector with dedup_window = 60: ids must not repeat across the workers."""
    require_processes(url_for)
    collector = serve(sync_bus, DedupCollector())
    workers, n = 4, 50
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = spawn("shapes", "prefork", url_for("client"), str(workers), str(n),
                     stderr=stderr, new_session=True)
        out = finish(proc)
    expected = {f"w{k}-{i}" for k in range(workers) for i in range(n)}
    settle(lambda: expected <= set(collector.snapshot()[0]), ARRIVAL_BOUND)
    reports, _ = collector.snapshot()
    accepted = sum(int(a) for a in re.findall(r"^worker \d+ cast \d+ accepted (\d+)$", out, re.M))
    lost = tally("prefork", scheme, expected, reports, sent=workers * n, accepted=accepted)
    assert re.findall(r"^worker \d+ (exit \d+|killed .*)$", out, re.M) == ["exit 0"] * workers, \
        f"{out}\n{err.read_text()}"
    assert not lost, f"{len(lost)} of {len(expected)} reports never arrived (ids repeat after fork?)"


@pytest.mark.timeout(300)
def test_bus_opened_before_fork_raises_in_the_child(url_for, sync_bus, scheme, tmp_path):
    """The child must get a RuntimeError that says "fork" for every use of the inherited
    bus: no hang (the child's own watchdog ends it after 30 s), no silent reuse; the
    parent's bus goes on working."""
    require_processes(url_for)
    collector = serve(sync_bus, Collector())
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = spawn("shapes", "fork-inherited", url_for("client"), stderr=stderr, new_session=True)
        out = finish(proc)
    settle(lambda: {"parent-before", "parent-after"} <= set(collector.snapshot()[0]), ARRIVAL_BOUND)
    reports, events = collector.snapshot()
    print(f"\nCOUNTS fork-inherited[{scheme}]: child said "
          f"{re.findall(r'^child .*$', out, re.M)}; collector got {dict(reports)} {dict(events)}")
    for op in ("cast", "call", "publish"):
        line = re.search(rf"^child {op}: (.*)$", out, re.M)
        assert line, f"the child never got past its {op} (hung?):\n{out}\n{err.read_text()}"
        assert re.match(r"RuntimeError: .*\bfork", line.group(1), re.I), \
            f"child {op}: {line.group(1)} (want a RuntimeError that mentions fork)"
    assert re.search(r"^child exit 0$", out, re.M), \
        f"the child did not exit cleanly:\n{out}\n{err.read_text()}"
    assert "child" not in reports and "child-event" not in events, "the child reused the parent's bus"
    assert {"parent-before", "parent-after"} <= set(reports), f"the parent's bus broke:\n{out}"
    assert re.search(r"^parent call: \d+$", out, re.M), out


# -- 2. however the program holds its bus, it is flushed at exit ---------------------------

SHAPES = [
    "local-return",      # def main(): bus = vertebra.connect(url); casts; return
    "local-sigterm",     # ... SIGTERM while main() still holds it
    "return-sigterm",    # ... main() returned, the program idles, SIGTERM
    "local-exception",   # ... an exception escapes main()
    "module-global",     # a module global, never closed
    "thread",            # made in a thread that ended
    "with-block",        # with vertebra.connect(url) as bus
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("shape", SHAPES)
def test_bus_held_as_programs_hold_it_is_flushed_at_exit(shape, url_for, sync_bus, scheme, tmp_path):
    """300 casts, then the sender's bus is left however the shape leaves it: all 300 arrive."""
    require_processes(url_for)
    collector = serve(sync_bus, Collector())
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = spawn("shapes", shape, url_for("client"), str(N), stderr=stderr, new_session=True)
        line = proc.stdout.readline()
        m = re.match(r"cast (\d+) accepted (\d+)$", line)
        if not m:
            kill_group(proc)
        assert m, f"the sender did not get to cast: {line!r}\n{err.read_text()}"
        if shape.endswith("sigterm"):
            proc.send_signal(signal.SIGTERM)      # right after the casts
        out = finish(proc)
    expected = {str(i) for i in range(N)}
    settle(lambda: expected <= set(collector.snapshot()[0]), ARRIVAL_BOUND)
    reports, _ = collector.snapshot()
    stats = exit_stats(out)
    drops = counted_drops(stats)
    lost = tally(shape, scheme, expected, reports, sent=N, accepted=int(m.group(2)), dropped=drops,
                 extra=f"exit={proc.returncode} {said_at_exit(out)}")
    stderr_text = err.read_text()
    if shape == "local-exception":
        assert "an exception escapes main()" in stderr_text, "the program's own exception was hidden"
    assert not lost, (f"{len(lost)} of {N} casts never arrived (the outbox counted {drops} as dropped, "
                      f"expired or failed, where nothing should be); sender stderr:\n{stderr_text[-3000:]}")


# -- 3. a downed service beside live ones ------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_downed_service_does_not_hold_up_live_ones(url_for, sync_bus, scheme, tmp_path):
    """100 casts to a service nobody serves, then 20 casts and 20 events to a live node:
    the 40 arrive while the 100 wait."""
    require_processes(url_for)
    url_for("nobody")        # the dead service's name is this test's (cleaned up after it)
    collector = serve(sync_bus, Collector())
    dead, live = 100, 20
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = spawn("shapes", "downed", url_for("client"), str(dead), str(live),
                     stdin=subprocess.PIPE, stderr=stderr, new_session=True)
        try:
            line = proc.stdout.readline()
            m = re.match(r"cast (\d+) accepted (\d+)$", line)
            assert m, f"the sender did not get to cast: {line!r}\n{err.read_text()}"
            want_reports = {f"live-{i}" for i in range(live)}
            want_events = {f"event-{i}" for i in range(live)}

            def arrived() -> bool:
                reports, events = collector.snapshot()
                return want_reports <= set(reports) and want_events <= set(events)

            settle(arrived, ARRIVAL_BOUND)
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            stats_line = proc.stdout.readline()
            out = finish(proc)              # closes stdin: the sender closes its bus (linger 2 s)
        finally:
            if proc.poll() is None:
                kill_group(proc)
    reports, events = collector.snapshot()
    seen = collections.Counter({f"r:{k}": v for k, v in reports.items()})
    seen.update({f"e:{k}": v for k, v in events.items()})
    expected = {f"r:{x}" for x in want_reports} | {f"e:{x}" for x in want_events}
    outbox = stats_line.removeprefix("stats ").strip()
    lost = tally("downed-service", scheme, expected, seen, sent=2 * live, accepted=int(m.group(2)) - dead,
                 extra=f"(+{dead} casts to a service nobody serves) outbox while waiting: {outbox}")
    assert not lost, (f"{len(lost)} of {2 * live} live casts/events held up behind {dead} casts to a "
                      f"downed service: got {len(set(reports) & want_reports)} casts, "
                      f"{len(set(events) & want_events)} events; outbox {outbox}")
    assert proc.returncode == 0, f"the sender did not close and exit cleanly:\n{out}\n{err.read_text()}"

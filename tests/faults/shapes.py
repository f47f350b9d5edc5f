"""Senders shaped the way real programs hold a bus, run as real processes by
tests/faults/test_program_shapes.py (public API only).  Each prints one line
``cast N accepted M`` when its casts are made, and the last thing it prints is
``exit-stats JSON`` (the bus's outbox counters as the interpreter leaves, or
``exit-stats collected`` if the bus object is gone by then: closed and let go, or
dropped unclosed; whether it was flushed shows in what the collector got).

    python -m tests.faults.shapes prefork URL WORKERS N   import vertebra, open no bus,
                                      fork WORKERS workers; each opens its own bus and
                                      casts N distinct reports
    python -m tests.faults.shapes fork-inherited URL      a bus opened before fork, used
                                      in the child (must raise RuntimeError there)
    python -m tests.faults.shapes local-return URL N      bus local to main(), return
    python -m tests.faults.shapes local-sigterm URL N     ... then wait inside main() for
                                      the SIGTERM the test sends
    python -m tests.faults.shapes return-sigterm URL N    ... main() returned; the program
                                      idles until the SIGTERM the test sends
    python -m tests.faults.shapes local-exception URL N   ... an exception escapes main()
    python -m tests.faults.shapes module-global URL N     a module global, never closed
    python -m tests.faults.shapes thread URL N            made in a thread that ended
    python -m tests.faults.shapes with-block URL N        ``with vertebra.connect(...)``
    python -m tests.faults.shapes downed URL DEAD LIVE    DEAD casts to a service nobody
                                      serves, then LIVE casts and LIVE events to the
                                      collector; then ``stats`` on stdin prints the outbox
                                      counters, end of stdin closes the bus
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import traceback
import weakref
from typing import Any

_watched: list[weakref.ref[Any]] = []


def _exit_stats() -> None:
    """Registered before vertebra is imported, so it runs after vertebra's own exit hooks
    (atexit runs the last registered first): it sees what they left.  It keeps only a weak
    reference, so it cannot keep a bus alive that the program let go of."""
    for ref in _watched:
        bus = ref()
        try:
            said = "collected" if bus is None else json.dumps(bus.stats()["outbox"])
        except Exception as exc:     # say so, rather than print nothing
            said = f"unreadable ({type(exc).__name__}: {exc})"
        print("exit-stats", said, flush=True)


atexit.register(_exit_stats)

import vertebra  # noqa: E402  (after the hook above, on purpose)

LINGER = 30.0   # a bound on the flush, so that a slow transport is not what the test measures
BUS: vertebra.Bus | None = None


def watch(bus: vertebra.Bus) -> None:
    """Report this bus's counters at exit, without holding it."""
    _watched.append(weakref.ref(bus))


def cast_reports(bus: vertebra.Bus, n: int, prefix: str = "") -> int:
    """Cast ``n`` distinct reports to the collector; how many the outbox accepted."""
    collector = bus.proxy("collector")
    return sum(collector.report.cast(f"{prefix}{i}") is not None for i in range(n))


def say(line: str) -> None:
    """Print one line in one write, so that lines of forked processes do not interleave."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def say_cast(n: int, accepted: int) -> None:
    say(f"cast {n} accepted {accepted}")


# -- a bus local to main(), ending in different ways -----------------------------------

def local_return(url: str, n: int) -> None:
    bus = vertebra.connect(url, linger=LINGER)
    watch(bus)
    say_cast(n, cast_reports(bus, n))


def local_sigterm(url: str, n: int) -> None:
    bus = vertebra.connect(url, linger=LINGER)
    watch(bus)
    say_cast(n, cast_reports(bus, n))
    time.sleep(600)            # the test sends SIGTERM now


def return_sigterm(url: str, n: int) -> None:
    local_return(url, n)       # main() is done with its bus ...
    time.sleep(600)            # ... and the program idles: the test sends SIGTERM now


def local_exception(url: str, n: int) -> None:
    bus = vertebra.connect(url, linger=LINGER)
    watch(bus)
    say_cast(n, cast_reports(bus, n))
    raise RuntimeError("an exception escapes main()")


def module_global(url: str, n: int) -> None:
    global BUS
    BUS = vertebra.connect(url, linger=LINGER)
    watch(BUS)
    say_cast(n, cast_reports(BUS, n))


def in_thread(url: str, n: int) -> None:
    def work() -> None:
        bus = vertebra.connect(url, linger=LINGER)
        watch(bus)
        say_cast(n, cast_reports(bus, n))

    t = threading.Thread(target=work, name="made-the-bus")
    t.start()
    t.join()


def with_block(url: str, n: int) -> None:
    with vertebra.connect(url, linger=LINGER) as bus:
        watch(bus)
        say_cast(n, cast_reports(bus, n))


# -- fork ------------------------------------------------------------------------------

def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def prefork(url: str, workers: int, n: int) -> None:
    """A pre-fork server: the master imported vertebra and opened no bus."""
    pids = []
    for k in range(workers):
        pid = os.fork()
        if pid == 0:                             # a worker
            code = 1
            try:
                with vertebra.connect(url, linger=LINGER) as bus:
                    accepted = cast_reports(bus, n, prefix=f"w{k}-")
                    say(f"worker {k} cast {n} accepted {accepted}")
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)                   # as pre-fork servers end a worker
        pids.append(pid)
    for k, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        print(f"worker {k} {_status(status)}", flush=True)


def fork_inherited(url: str) -> None:
    """A bus opened before the fork: the parent keeps using it, the child must be told."""
    bus = vertebra.connect(url, linger=LINGER)
    collector = bus.proxy("collector", timeout=10)
    collector.report.cast("parent-before")
    bus.flush(LINGER)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:                                 # the child
        import signal
        signal.alarm(30)                         # a hang ends the child, not the test
        ops = [("cast", lambda: collector.report.cast("child")),
               ("call", lambda: collector.count()),
               ("publish", lambda: bus.publish("shapes.child", "child-event"))]
        for what, op in ops:
            try:
                op()
                outcome = "no error"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            print(f"child {what}: {outcome}", flush=True)
        sys.exit(0)                              # the normal way out: exit hooks run
    _, status = os.waitpid(pid, 0)
    print(f"child {_status(status)}", flush=True)
    collector.report.cast("parent-after")
    print(f"parent call: {collector.count()}", flush=True)
    bus.close()


# -- a downed service beside live ones -------------------------------------------------

def downed(url: str, dead: int, live: int) -> None:
    with vertebra.connect(url, linger=2.0) as bus:
        nobody = bus.proxy("nobody")
        accepted = sum(nobody.report.cast(f"dead-{i}") is not None for i in range(dead))
        accepted += cast_reports(bus, live, prefix="live-")
        accepted += sum(bus.publish("shapes.live", f"event-{i}") is not None for i in range(live))
        say_cast(dead + 2 * live, accepted)
        for line in sys.stdin:
            if line.strip() == "stats":
                print("stats", json.dumps(bus.stats()["outbox"]), flush=True)
        watch(bus)


SHAPES = {
    "local-return": local_return, "local-sigterm": local_sigterm,
    "return-sigterm": return_sigterm, "local-exception": local_exception,
    "module-global": module_global, "thread": in_thread, "with-block": with_block,
}


def main(argv: list[str]) -> None:
    cmd, url, *rest = argv
    if cmd in SHAPES:
        SHAPES[cmd](url, int(rest[0]))
    elif cmd == "prefork":
        prefork(url, int(rest[0]), int(rest[1]))
    elif cmd == "fork-inherited":
        fork_inherited(url)
    elif cmd == "downed":
        downed(url, int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"unknown shape {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])

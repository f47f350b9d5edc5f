"""vertebra over zmq:// against raw pyzmq, zerorpc, Pyro5 and RPyC, side by side in one run.

    python bench/zmq.py [--seconds 2] [--tasks 20000] [--peers /tmp/peerbench/bin/python]
                        [--no-peers]

Every server runs in its own process (the hub too); the client runs here.  All calls echo
a 100-byte string.  Rows:

  raw REQ/REP             one request in flight, round trips/s, p50/p99
  raw DEALER/ROUTER       100 requests in flight
  raw PUSH/PULL           one-way messages/s
  vertebra sync call      vertebra.connect(...).proxy("echo").echo(x), p50/p99   (vs REQ/REP)
  vertebra async call     await bus.proxy("echo").echo(x)                        (vs REQ/REP)
  vertebra pipelined      100 calls in flight on one async bus                   (vs DEALER/ROUTER)
  vertebra tasks          casts of a @task, counted by the node                  (vs PUSH/PULL)
  zerorpc / Pyro5 / RPyC  their sync client on the same echo, one in flight     (vs REQ/REP)

The ratio column is each row's rate over its raw pyzmq counterpart (raw rows: 1.00); the
vertebra sync row also gives its rate over Pyro5's and RPyC's.  zerorpc (gevent), Pyro5
and RPyC run from ``--peers``, a Python with them installed, both for their server (its
own process) and for their client (a second process).  When the default
/tmp/peerbench/bin/python is missing (or lacks one of them) the script makes that venv
with ``python -m venv`` and ``pip install zerorpc Pyro5 rpyc``, so gevent stays out of
this venv; ``--no-peers`` skips those rows.  The RPyC client binds ``conn.root.echo``
once, so each call is one round trip (as a Pyro5 proxy's is).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    from bench import peers  # python -m bench.zmq
except ImportError:
    import peers  # type: ignore[no-redef]  # python bench/zmq.py

# this file is called zmq.py: keep its directory off the path so ``import zmq`` is pyzmq
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import zmq  # noqa: E402

PAYLOAD = "x" * 100
BPAYLOAD = PAYLOAD.encode()
HERE = Path(__file__).resolve()
PEER_ROWS = {"zerorpc": "zerorpc sync call", "pyro": "Pyro5 sync call", "rpyc": "RPyC sync call"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str, python: str = sys.executable, argv: list[str] | None = None) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv or [python, str(HERE), *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return p


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class Row:
    """One line of the table; ``base`` names the raw row it is divided by, ``also`` others."""

    def __init__(self, name: str, rate: float, lat: list[float] | None = None, base: str = "",
                 note: str = "", also: tuple[str, ...] = ()) -> None:
        self.name, self.rate, self.base, self.note, self.also = name, rate, base, note, also
        self.p50 = pct(lat, 0.5) * 1e6 if lat else None
        self.p99 = pct(lat, 0.99) * 1e6 if lat else None


def timed_loop(step: Callable[[], object], seconds: float) -> tuple[float, list[float]]:
    lat: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        t0 = time.perf_counter()
        step()
        now = time.perf_counter()
        lat.append(now - t0)
    return len(lat) / (now - start), lat


# ------------------------------------------------------------------ servers (subprocesses)

def srv_rep(port: str) -> None:
    s = zmq.Context().socket(zmq.REP)
    s.bind(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    while True:
        s.send(s.recv())


def srv_router(port: str) -> None:
    s = zmq.Context().socket(zmq.ROUTER)
    s.bind(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    while True:
        s.send_multipart(s.recv_multipart())


def srv_pull(port: str, n: str) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    done = ctx.socket(zmq.PUSH)
    done.bind(f"tcp://127.0.0.1:{int(port) + 1}")
    print("ready", flush=True)
    while True:
        for _ in range(int(n)):
            pull.recv()
        done.send(b"done")


def srv_hub(port: str) -> None:
    from vertebra.transports.zmq import Hub
    with Hub(f"tcp://127.0.0.1:{port}"):
        print("ready", flush=True)
        time.sleep(1e9)


def srv_node(url: str) -> None:
    import vertebra
    from vertebra import Node, rpc, task

    class Echo(Node):
        """The echo service."""

        name = "echo"
        concurrency = 256
        prefetch = 256
        seen = 0

        @rpc
        async def echo(self, value: str) -> str:
            """Echo."""
            return value

        @rpc
        async def count(self) -> int:
            """Tasks seen so far."""
            return Echo.seen

        @task
        async def sink(self, value: str) -> None:
            """Count a task."""
            Echo.seen += 1

    async def main() -> None:
        async with vertebra.connect_async(url, codec="msgpack") as bus:
            await bus.serve(Echo())
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


def cli_peer(kind: str, port: str, seconds: str) -> None:
    """Runs under --peers: measure a peer framework's sync calls, print rate p50 p99."""
    step = peers.echo_client(kind, port)
    step()
    rate, lat = timed_loop(step, float(seconds))
    print(rate, pct(lat, 0.5), pct(lat, 0.99), flush=True)


# ------------------------------------------------------------------ clients (this process)

def raw_reqrep(seconds: float) -> Row:
    port = free_port()
    p = spawn("srv_rep", str(port))
    try:
        s = zmq.Context.instance().socket(zmq.REQ)
        s.connect(f"tcp://127.0.0.1:{port}")

        def step() -> None:
            s.send(BPAYLOAD)
            s.recv()

        step()
        rate, lat = timed_loop(step, seconds)
        s.close(0)
        return Row("raw REQ/REP", rate, lat)
    finally:
        p.kill()


def raw_dealer(seconds: float, window: int = 100) -> Row:
    port = free_port()
    p = spawn("srv_router", str(port))
    try:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.connect(f"tcp://127.0.0.1:{port}")
        for _ in range(window):
            s.send(BPAYLOAD)
        n, start = 0, time.perf_counter()
        end = start + seconds
        while True:
            s.recv()
            s.send(BPAYLOAD)
            n += 1
            if n % 1000 == 0 and time.perf_counter() > end:
                break
        rate = n / (time.perf_counter() - start)
        for _ in range(window):
            s.recv()
        s.close(0)
        return Row(f"raw DEALER/ROUTER ({window} in flight)", rate)
    finally:
        p.kill()


def raw_pushpull(n: int) -> Row:
    port = free_port()
    while True:
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    p = spawn("srv_pull", str(port), str(n))
    try:
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        done = ctx.socket(zmq.PULL)
        done.connect(f"tcp://127.0.0.1:{port + 1}")
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(n):
                push.send(BPAYLOAD)
            done.recv()
            rates.append(n / (time.perf_counter() - start))
        push.close(0)
        done.close(0)
        return Row("raw PUSH/PULL", statistics.median(rates))
    finally:
        p.kill()


def vertebra_sync(url: str, seconds: float) -> Row:
    import vertebra
    with vertebra.connect(url, codec="msgpack") as bus:
        echo = bus.proxy("echo", timeout=10)
        echo.echo(PAYLOAD)
        rate, lat = timed_loop(lambda: echo.echo(PAYLOAD), seconds)
    return Row("vertebra sync call", rate, lat, base="raw REQ/REP",
               also=(PEER_ROWS["pyro"], PEER_ROWS["rpyc"]))


async def vertebra_async(url: str, seconds: float, tasks: int) -> list[Row]:
    import vertebra
    rows = []
    async with vertebra.connect_async(url, codec="msgpack", outbox_size=tasks + 1000) as bus:
        echo = bus.proxy("echo", timeout=30)
        await echo.echo(PAYLOAD)
        lat: list[float] = []
        start = time.perf_counter()
        end = start + seconds
        now = start
        while now < end:
            t0 = time.perf_counter()
            await echo.echo(PAYLOAD)
            now = time.perf_counter()
            lat.append(now - t0)
        rows.append(Row("vertebra async call", len(lat) / (now - start), lat, base="raw REQ/REP"))

        count = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await echo.echo(PAYLOAD)
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(100)))
        rows.append(Row("vertebra pipelined (100 in flight)", count / (time.perf_counter() - start),
                        base="raw DEALER/ROUTER (100 in flight)"))

        base = await echo.count()
        start = time.perf_counter()
        for _ in range(tasks):
            echo.sink.cast(PAYLOAD)
        while await echo.count() < base + tasks:
            await asyncio.sleep(0.005)
        rows.append(Row("vertebra tasks", tasks / (time.perf_counter() - start), base="raw PUSH/PULL"))
    return rows


def peer(kind: str, python: str, seconds: float) -> Row:
    name = PEER_ROWS[kind]
    port = free_port()
    try:
        p = spawn(kind, argv=peers.server_argv(python, kind, port))
    except (RuntimeError, OSError) as exc:
        return Row(name, float("nan"), note=f"could not start: {exc}"[:60])
    try:
        out = subprocess.run([python, str(HERE), "cli_peer", kind, str(port), str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 60)
        rate, p50, p99 = (float(x) for x in out.stdout.split())
        row = Row(name, rate, base="raw REQ/REP")
        row.p50, row.p99 = p50 * 1e6, p99 * 1e6
        return row
    except (ValueError, subprocess.TimeoutExpired) as exc:
        return Row(name, float("nan"), note=f"failed: {exc}"[:60])
    finally:
        p.kill()


def table(rows: list[Row]) -> str:
    """The rows as printed: rate, p50/p99, ratio to the raw counterpart (and to ``also``)."""
    by = {r.name: r.rate for r in rows}
    out = [f"{'':38} {'ops/s':>10} {'p50 µs':>8} {'p99 µs':>8} {'ratio':>7}  vs"]
    for r in rows:
        if r.name.startswith("raw "):
            ratio, vs = "1.00", "(raw baseline)"
        else:
            ok = math.isfinite(by.get(r.base, math.nan)) and by[r.base] > 0
            x = r.rate / by[r.base] if ok and math.isfinite(r.rate) else math.nan
            ratio = "" if math.isnan(x) else f"{x:.2f}" if x >= 0.01 else f"{x:.4f}"
            vs = r.base if r.base else ""
            more = [f"{r.rate / by[o]:.2f}× {o.split()[0]}" for o in r.also
                    if math.isfinite(by.get(o, math.nan)) and by[o] > 0]
            if more:
                vs += "; " + ", ".join(more)
            if r.note:
                vs = f"{vs} {r.note}".strip()
        p50 = f"{r.p50:.0f}" if r.p50 is not None else ""
        p99 = f"{r.p99:.0f}" if r.p99 is not None else ""
        out.append(f"{r.name:38} {r.rate:>10.0f} {p50:>8} {p99:>8} {ratio:>7}  {vs}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--peers", default=os.environ.get("VERTEBRA_BENCH_PEERS", peers.PEERS_DEFAULT),
                    help="a Python with zerorpc, Pyro5 and rpyc (a <venv>/bin/python is made "
                         "when missing)")
    ap.add_argument("--no-peers", action="store_true", help="skip the zerorpc/Pyro5/RPyC rows")
    a = ap.parse_args()
    rows = [raw_reqrep(a.seconds), raw_dealer(a.seconds), raw_pushpull(100_000)]
    port = free_port()
    hub = spawn("srv_hub", str(port))
    url = f"zmq://127.0.0.1:{port}"
    node = spawn("srv_node", url)
    try:
        rows.append(vertebra_sync(url, a.seconds))
        rows += asyncio.run(vertebra_async(url, a.seconds, a.tasks))
    finally:
        node.kill()
        hub.kill()
    why = "skipped (--no-peers)" if a.no_peers else peers.ensure_peers(a.peers)
    for kind in PEER_ROWS:
        if why:
            rows.append(Row(PEER_ROWS[kind], float("nan"), note=why))
        else:
            rows.append(peer(kind, a.peers, a.seconds))
    print(table(rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and (sys.argv[1].startswith("srv_") or sys.argv[1] == "cli_peer"):
        globals()[sys.argv[1]](*sys.argv[2:])
    else:
        main()

"""Peak RSS of a process serving one echo method, vertebra against its peers, in one run.

    python bench/rss.py [--n 2000] [--runs 3] [--peers /tmp/peerbench/bin/python]
                        [--url amqp://guest:guest@127.0.0.1:5672/%2F] [--no-peers] [--no-amqp]

Each server runs in its own process and serves one method, ``echo`` of a 100-char string.
It is read twice from /proc/PID/status: VmHWM (peak resident set) once it says it is
ready, and VmHWM again after ``--n`` sync calls, one in flight, from a client in another
process.  Each figure is the median of ``--runs`` fresh starts.  Measured:

* vertebra node on zmq:// (the node process; its hub, in its own process, measured too)
* vertebra node on amqp:// (the node process; the broker is the system RabbitMQ, not counted)
* Pyro5 daemon, RPyC ThreadedServer, zerorpc server (run under ``--peers``, the venv that
  bench/zmq.py makes: /tmp/peerbench with zerorpc Pyro5 rpyc, created here when missing)
* floors: ``python -c pass`` and ``python -c "import zmq"`` kept alive, nothing served

memory:// is left out: its node lives in the caller's process, so there is no server
process of its own to measure.  All Pythons are the same interpreter version (the peer
venv is made from this one).
"""

from __future__ import annotations

# The servers are this script re-invoked: it imports only os, sys and time at the top so
# that a server process holds what its framework needs and little else; the rest is
# imported where used.
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

try:
    from bench import peers  # python -m bench.rss
except ImportError:
    import peers  # type: ignore[no-redef]  # python bench/rss.py

HERE = os.path.realpath(__file__)
# bench/ holds zmq.py and amqp.py: keep it off the path so ``import zmq`` is pyzmq
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(HERE)]

PAYLOAD = peers.PAYLOAD


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    """A ``Vm*`` field of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start(argv: list[str]) -> subprocess.Popen[str]:
    """Start a server and wait for its "ready" line."""
    import subprocess
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        p.wait()
        raise RuntimeError(f"{argv[2:3] or argv} did not start: {line!r}")
    return p


def stop(p: subprocess.Popen[str]) -> None:
    """Kill a server started here and reap it."""
    p.kill()
    p.wait()


# ------------------------------------------------------------------ servers (subprocesses)

def srv_hub(port: str) -> None:
    """A vertebra zmq hub on 127.0.0.1:port."""
    from vertebra.transports.zmq import Hub
    with Hub(f"tcp://127.0.0.1:{port}"):
        print("ready", flush=True)
        time.sleep(1e9)


def srv_node(url: str) -> None:
    """A vertebra node serving ``echo.echo`` on url."""
    import asyncio

    import vertebra
    from vertebra import Node, rpc

    class Echo(Node):
        """The echo service."""

        name = "echo"

        @rpc
        async def echo(self, value: str) -> str:
            """Echo."""
            return value

    async def main() -> None:
        async with vertebra.connect_async(url) as bus:
            await bus.serve(Echo())
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


def cli_peer(kind: str, port: str, n: str) -> None:
    """Runs under --peers: make n sync echo calls to a peer server."""
    step = peers.echo_client(kind, port)
    for _ in range(int(n)):
        assert step() == PAYLOAD


# ------------------------------------------------------------------ clients (this process)

def vertebra_calls(url: str, n: int) -> None:
    """n sync echo calls through vertebra from this process."""
    import vertebra
    with vertebra.connect(url) as bus:
        echo = bus.proxy("echo", timeout=10)
        deadline = time.monotonic() + 20
        while True:            # the first call may race the node's registration
            try:
                echo.echo(PAYLOAD)
                break
            except vertebra.VertebraError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for _ in range(n - 1):
            assert echo.echo(PAYLOAD) == PAYLOAD


def amqp_cleanup(url: str, prefix: str) -> None:
    """Delete what a vertebra node with ``prefix`` left on the broker (best effort)."""
    from urllib.parse import urlsplit

    import amqp
    u = urlsplit(url)
    c = amqp.Connection(f"{u.hostname or '127.0.0.1'}:{u.port or 5672}", u.username or "guest",
                        u.password or "guest")
    c.connect()
    try:
        for q in ("call.echo", "task.echo", "dead.echo"):
            try:
                c.channel().queue_delete(f"{prefix}vertebra.{q}")
            except Exception:
                pass
        for e in ("events", "discovery", "dlx", "delay"):
            try:
                c.channel().exchange_delete(f"{prefix}vertebra.{e}")
            except Exception:
                pass
    finally:
        c.close()


# ------------------------------------------------------------------ one measurement

Measured = dict[str, tuple[int, int]]    # process label -> (VmHWM at ready, VmHWM after calls)


def run_vertebra_zmq(n: int) -> Measured:
    """Hub and node on zmq://, n calls from here."""
    port = free_port()
    hub = start([sys.executable, HERE, "srv_hub", str(port)])
    try:
        url = f"zmq://127.0.0.1:{port}"
        node = start([sys.executable, HERE, "srv_node", url])
        try:
            ready = {"node": status_kib(node.pid, "VmHWM"), "hub": status_kib(hub.pid, "VmHWM")}
            vertebra_calls(url, n)
            return {"vertebra node, zmq://": (ready["node"], status_kib(node.pid, "VmHWM")),
                    "vertebra zmq hub": (ready["hub"], status_kib(hub.pid, "VmHWM"))}
        finally:
            stop(node)
    finally:
        stop(hub)


def run_vertebra_amqp(n: int, broker: str) -> Measured:
    """A node on amqp:// (own prefix), n calls from here."""
    import uuid
    prefix = f"rss-{uuid.uuid4().hex[:6]}."
    url = f"{broker}{'&' if '?' in broker else '?'}prefix={prefix}"
    node = start([sys.executable, HERE, "srv_node", url])
    try:
        ready = status_kib(node.pid, "VmHWM")
        vertebra_calls(url, n)
        return {"vertebra node, amqp://": (ready, status_kib(node.pid, "VmHWM"))}
    finally:
        stop(node)
        amqp_cleanup(broker, prefix)


def run_peer(kind: str, label: str, python: str, n: int) -> Measured:
    """A peer framework's server under ``python``, n calls from its own client there."""
    import subprocess
    port = free_port()
    srv = start(peers.server_argv(python, kind, port))
    try:
        ready = status_kib(srv.pid, "VmHWM")
        subprocess.run([python, HERE, "cli_peer", kind, str(port), str(n)], check=True,
                       timeout=300)
        return {label: (ready, status_kib(srv.pid, "VmHWM"))}
    finally:
        stop(srv)


def run_floor(label: str, code: str) -> Measured:
    """A bare interpreter kept alive after ``code``."""
    p = start([sys.executable, "-c", f"{code}; import time; print('ready', flush=True); "
                                      "time.sleep(1e9)"])
    try:
        kib = status_kib(p.pid, "VmHWM")
        return {label: (kib, kib)}
    finally:
        stop(p)


def mib(kib: float) -> str:
    """KiB as MiB with one decimal."""
    return f"{kib / 1024:.1f}"


def main() -> None:
    """Run every server --runs times and print the medians."""
    import argparse
    import functools
    import statistics
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="echo calls before the second reading")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--peers", default=os.environ.get("VERTEBRA_BENCH_PEERS", peers.PEERS_DEFAULT))
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-amqp", action="store_true")
    a = ap.parse_args()

    why_peers = "skipped (--no-peers)" if a.no_peers else peers.ensure_peers(a.peers)
    jobs: list[tuple[str, Callable[[], Measured]]] = [
        ("python -c pass", lambda: run_floor("python -c pass (floor)", "pass")),
        ("python -c 'import zmq'", lambda: run_floor("python -c 'import zmq' (floor)", "import zmq")),
        ("vertebra zmq://", lambda: run_vertebra_zmq(a.n)),
    ]
    if not a.no_amqp:
        jobs.append(("vertebra amqp://", lambda: run_vertebra_amqp(a.n, a.url)))
    servers = (("pyro", "Pyro5 daemon"), ("rpyc", "RPyC ThreadedServer"), ("zerorpc", "zerorpc server"))
    if not why_peers:
        for kind, label in servers:
            jobs.append((label, functools.partial(run_peer, kind, label, a.peers, a.n)))

    got: dict[str, list[tuple[int, int]]] = {}
    failed: dict[str, str] = {}
    for _ in range(a.runs):
        for name, job in jobs:
            if name in failed:
                continue
            try:
                for label, pair in job().items():
                    got.setdefault(label, []).append(pair)
            except Exception as exc:   # report, don't abort the whole bench
                failed[name] = f"{type(exc).__name__}: {exc}"[:100]

    floor = statistics.median(h for h, _ in got.get("python -c 'import zmq' (floor)", [(0, 0)]))
    print(f"\nPeak RSS (VmHWM), {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, {a.n} sync echo calls of a 100-char string, "
          f"median of {a.runs} runs, MiB\n")
    print(f"{'process':36} {'ready':>7} {f'after {a.n}':>11} {'growth':>7} {'over zmq floor':>15}")
    for label, pairs in got.items():
        ready = statistics.median(r for r, _ in pairs)
        after = statistics.median(h for _, h in pairs)
        over = f"{(after - floor) / 1024:+.1f}" if floor and "floor" not in label else ""
        print(f"{label:36} {mib(ready):>7} {mib(after):>11} {(after - ready) / 1024:>+7.1f} "
              f"{over:>15}   (n={len(pairs)})")
    if why_peers:
        for _, label in servers:
            print(f"{label:36} {'':>7} {'':>11} {'':>7} {'':>15}   {why_peers}")
    for name, why in failed.items():
        print(f"{name:36} failed: {why}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and (sys.argv[1].startswith("srv_") or sys.argv[1] == "cli_peer"):
        globals()[sys.argv[1]](*sys.argv[2:])
    else:
        main()

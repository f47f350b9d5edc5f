"""The peer RPC frameworks the benches compare against: their servers, their clients, and
the venv they run from (gevent, which zerorpc needs, stays out of vertebra's).

    python bench/peers.py srv_pyro|srv_rpyc|srv_zerorpc PORT     a server; prints "ready"

Used by bench/zmq.py (call rates) and bench/rss.py (peak memory).  A server process
imports only os, sys and time before its framework, so that what it holds is the
framework's own (bench/rss.py measures it); everything else is imported where used.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

PAYLOAD = "x" * 100
PEERS_DEFAULT = "/tmp/peerbench/bin/python"
PEER_PACKAGES = ("Pyro5", "rpyc", "zerorpc")
HERE = os.path.realpath(__file__)
if __name__ == "__main__":   # bench/ holds zmq.py and amqp.py: keep it off the path (pyzmq, py-amqp)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(HERE)]


def ensure_peers(python: str) -> str:
    """Make ``python`` able to import zerorpc, Pyro5 and RPyC; return "" or why it cannot.

    Only a venv path (``<dir>/bin/python``) is created or completed; any other Python is
    used as it is.
    """
    import subprocess
    from pathlib import Path
    check = ("import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None "
             f"for m in {list(PEER_PACKAGES)!r}))")
    if Path(python).exists() and subprocess.run([python, "-c", check]).returncode == 0:
        return ""
    if Path(python).parent.name != "bin":
        return f"{python} lacks {', '.join(PEER_PACKAGES)}"
    venv = Path(python).parent.parent
    print(f"(making peer venv {venv}: pip install {' '.join(PEER_PACKAGES)})", file=sys.stderr,
          flush=True)
    if not Path(python).exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode:
            return f"venv failed: {r.stderr.strip()[-80:]}"
    r = subprocess.run([python, "-m", "pip", "install", "-q", *PEER_PACKAGES],
                       capture_output=True, text=True)
    if r.returncode:
        return f"pip failed: {r.stderr.strip().splitlines()[-1][-80:] if r.stderr else r.returncode}"
    return ""


def server_argv(python: str, kind: str, port: int) -> list[str]:
    """The command that starts the ``kind`` server ("pyro", "rpyc", "zerorpc") on ``port``."""
    return [python, HERE, f"srv_{kind}", str(port)]


def echo_client(kind: str, port: str) -> Callable[[], object]:
    """One sync echo call of PAYLOAD to the ``kind`` server on ``port``, as a callable."""
    if kind == "zerorpc":
        import zerorpc
        c = zerorpc.Client()
        c.connect(f"tcp://127.0.0.1:{port}")
        return lambda: c.echo(PAYLOAD)
    if kind == "rpyc":
        import rpyc
        echo = rpyc.connect("127.0.0.1", int(port)).root.echo   # bound once: one round trip a call
        return lambda: echo(PAYLOAD)
    import Pyro5.api
    p = Pyro5.api.Proxy(f"PYRO:echo@127.0.0.1:{port}")
    return lambda: p.echo(PAYLOAD)


# ------------------------------------------------------------------ servers (subprocesses)

def srv_zerorpc(port: str) -> None:
    """A zerorpc server serving ``echo``."""
    import zerorpc

    class Echo:
        def echo(self, value: str) -> str:
            return value

    s = zerorpc.Server(Echo())
    s.bind(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    s.run()


def srv_pyro(port: str) -> None:
    """A Pyro5 daemon serving ``echo``."""
    import Pyro5.api

    @Pyro5.api.expose
    class Echo:
        def echo(self, value: str) -> str:
            return value

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=int(port))
    daemon.register(Echo(), "echo")
    print("ready", flush=True)
    daemon.requestLoop()


def srv_rpyc(port: str) -> None:
    """An RPyC ThreadedServer serving ``exposed_echo``."""
    import logging
    import threading

    import rpyc
    from rpyc.utils.server import ThreadedServer

    class EchoService(rpyc.Service):  # type: ignore[misc]
        def exposed_echo(self, value: str) -> str:
            return value

    quiet = logging.getLogger("rpyc-bench")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    server = ThreadedServer(EchoService, hostname="127.0.0.1", port=int(port), logger=quiet)

    def announce() -> None:   # the listener listens only once start() runs
        while not server.active:
            time.sleep(0.01)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.start()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("srv_pyro", "srv_rpyc", "srv_zerorpc"):
        globals()[sys.argv[1]](sys.argv[2])
    else:
        sys.exit(__doc__)

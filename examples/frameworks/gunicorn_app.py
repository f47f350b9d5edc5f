"""gunicorn --preload with several workers: vertebra imported in the master, one bus per worker.

    python examples/frameworks/gunicorn_app.py [--requests 90]   # all of it on an embedded hub
    python examples/frameworks/gunicorn_app.py collector --url URL    # the collector alone
    cd examples/frameworks && VERTEBRA_URL=URL gunicorn -c gunicorn_conf.py gunicorn_app:app
    curl 'http://127.0.0.1:8000/report?n=1'

``--preload`` imports this module once, in the master, and forks the workers from it.  At
the fork each worker draws its own message-id prefix, so no two workers mint the same id
and the collector's duplicate suppression (``dedup_window = 60``) drops none of their
reports.  The bus is opened in the worker, after the fork: by gunicorn_conf.py's
``post_worker_init`` hook, else lazily at the first request.  gunicorn_wrong.py opens it
in the master instead, and every request there fails loudly.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import vertebra
from vertebra import Node, task

HERE = os.path.dirname(os.path.abspath(__file__))


class Collector(Node):
    """Where the workers' reports go; a message id seen in the last minute is a duplicate."""

    name = "collector"
    dedup_window = 60

    def __init__(self) -> None:
        self.reports: dict[int, int] = {}                      # n -> pid of the worker
        self.lock = threading.Lock()

    @task
    def report(self, n: int, pid: int) -> None:
        with self.lock:
            self.reports[n] = pid


_bus: vertebra.Bus | None = None
_lock = threading.Lock()


def worker_bus() -> vertebra.Bus:
    """This worker's bus, opened on first use (post_worker_init, or the first request)."""
    global _bus
    with _lock:
        if _bus is None:
            _bus = vertebra.connect(linger=5.0)                # $VERTEBRA_URL
        return _bus


def close_bus() -> None:
    """Flush and close this worker's bus (gunicorn_conf.py's worker_exit; exit does it too)."""
    global _bus
    with _lock:
        if _bus is not None:
            _bus.close()
            _bus = None


def make_app(bus: Callable[[], vertebra.Bus]) -> Callable[..., Iterable[bytes]]:
    """GET /report?n=N casts collector.report(N, pid); answers the pid and the message id."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        n = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["0"])[0])
        body: dict[str, Any] = {"pid": os.getpid()}
        try:
            body["id"] = bus().proxy("collector").report.cast(n, os.getpid())
            status = "200 OK"
        except Exception as exc:                               # into gunicorn's error log
            environ["wsgi.errors"].write(traceback.format_exc())
            body["error"], status = f"{type(exc).__name__}: {exc}", "500 Internal Server Error"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
    return app


app = make_app(worker_bus)


def demo(url: str, requests: int, port: int) -> None:
    """Serve the collector here, run gunicorn (3 workers, --preload), send ``requests``."""
    collector = Collector()
    with vertebra.connect(url) as bus:
        bus.serve(collector)
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn_conf.py",
                                   "-b", f"127.0.0.1:{port}", "gunicorn_app:app"],
                                  cwd=HERE, env={**os.environ, "VERTEBRA_URL": url})
        try:
            def get(n: int) -> dict[str, Any]:
                for _ in range(100):                           # until gunicorn listens
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report?n={n}") as r:
                            return json.load(r)  # type: ignore[no-any-return]
                    except OSError:
                        time.sleep(0.1)
                raise RuntimeError("gunicorn does not answer")
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                pids = collections.Counter(r["pid"] for r in pool.map(get, range(requests)))
        finally:
            server.terminate()
            server.wait()
        deadline = time.monotonic() + 10
        while len(collector.reports) < requests and time.monotonic() < deadline:
            time.sleep(0.05)
    print(f"{requests} requests answered by {len(pids)} workers: {dict(pids)}")
    print(f"collector received {len(collector.reports)} of {requests} reports")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["demo", "collector"], default="demo")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--requests", type=int, default=90)
    parser.add_argument("--port", type=int, default=8000, help="the demo's gunicorn listens here")
    args = parser.parse_args()
    if args.mode == "collector":
        vertebra.serve(Collector(), url=args.url)
    elif args.url:
        demo(args.url, args.requests, args.port)
    else:
        with vertebra.Hub("tcp://127.0.0.1:0") as hub:
            demo(hub.url, args.requests, args.port)


if __name__ == "__main__":
    main()

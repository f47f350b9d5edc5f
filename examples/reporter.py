"""A web app that reports exceptions and business metrics without ever blocking a request.

    python examples/reporter.py                    # load test on an embedded ZeroMQ hub
    python examples/reporter.py --url URL          # the same on a hub or RabbitMQ you run
    python examples/reporter.py collector --url URL    # run the collector node alone
    python examples/reporter.py web --url URL          # serve the app on 127.0.0.1:8000

Request handlers hand reports to the "collector" service with `cast`: the call goes into
the bus's bounded outbox and returns at once, whether the collector is up, slow or down.
The outbox's overflow policy (here `drop_oldest`, 500 slots) decides what happens when
it is full, and counts every drop; closing the bus flushes it (`linger`, also at exit).
The load test sends requests with the collector up, then down, prints p50/p99 request
latency for both, restarts the collector while the app runs and shows it got every
report that was not counted as dropped.  Uses Flask when installed, else a plain WSGI app.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server
from wsgiref.util import setup_testing_defaults

import vertebra
from vertebra import Node, task


class Collector(Node):
    """The outside service: counts metrics and exceptions."""

    name = "collector"

    def __init__(self) -> None:
        self.metrics: Counter[str] = Counter()
        self.exceptions: Counter[str] = Counter()
        self.lock = threading.Lock()

    @task
    def metric(self, name: str, value: float) -> None:
        with self.lock:
            self.metrics[name] += 1

    @task
    def exception(self, path: str, kind: str, message: str, tb: str) -> None:
        with self.lock:
            self.exceptions[kind] += 1

    def received(self) -> int:
        with self.lock:
            return sum(self.metrics.values()) + sum(self.exceptions.values())


def make_app(bus: vertebra.Bus) -> Callable[..., Iterable[bytes]]:
    """The web app: /order records a sale, /boom fails; both report through ``bus``."""
    collector = bus.proxy("collector")

    def order(amount: float) -> str:
        collector.metric.cast("orders.amount", amount)       # never blocks the request
        return "ok"

    def boom() -> str:
        raise RuntimeError("the database is on fire")

    def report(path: str, exc: Exception) -> None:
        collector.exception.cast(path, type(exc).__name__, str(exc), traceback.format_exc())

    try:
        from flask import Flask, request
        from werkzeug.exceptions import HTTPException
    except ImportError:                                       # plain WSGI
        return wsgi_app(order, boom, report)

    flask_app = Flask(__name__)
    flask_app.add_url_rule("/order", view_func=lambda: order(float(request.args.get("amount", 0))))
    flask_app.add_url_rule("/boom", view_func=boom)

    @flask_app.errorhandler(Exception)
    def on_error(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):                    # a 404 is no exception to report
            return exc
        report(request.path, exc)
        return "error reported", 500

    return flask_app


def wsgi_app(order: Callable[[float], str], boom: Callable[[], str],
             report: Callable[[str, Exception], None]) -> Callable[..., Iterable[bytes]]:
    """The same app without Flask: the standard library's WSGI, by hand."""
    routes: dict[str, Callable[[dict[str, list[str]]], str]] = {
        "/order": lambda query: order(float(query.get("amount", ["0"])[0])),
        "/boom": lambda query: boom(),
    }

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        route = routes.get(path)
        if route is None:
            start_response("404 NOT FOUND", [("Content-Type", "text/plain")])
            return [b"not found"]
        try:
            body = route(parse_qs(environ.get("QUERY_STRING", "")))
            status = "200 OK"
        except Exception as exc:
            report(path, exc)
            body, status = "error reported", "500 INTERNAL SERVER ERROR"
        start_response(status, [("Content-Type", "text/plain")])
        return [body.encode()]

    return app


def hit(app: Callable[..., Iterable[bytes]], path: str, query: str) -> str:
    """One request, straight into the WSGI app; returns the status line."""
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    status: list[str] = []
    b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0]


def load(app: Callable[..., Iterable[bytes]], requests: int) -> tuple[list[float], Counter[str]]:
    latencies, statuses = [], Counter[str]()
    for i in range(requests):
        path = "/boom" if i % 10 == 9 else "/order"
        start = time.perf_counter()
        statuses[hit(app, path, f"amount={i}")] += 1
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies, statuses


def loadtest(url: str, requests: int) -> None:
    collector = Collector()
    with vertebra.connect(url, outbox_size=500, overflow="drop_oldest", linger=5.0) as bus:
        app = make_app(bus)
        print("web app:", "Flask" if type(app).__name__ == "Flask" else "plain WSGI (no Flask installed)")
        collector_bus = vertebra.connect(url)
        collector_bus.serve(collector)
        for phase in ("up", "down"):
            if phase == "down":
                collector_bus.close()                       # the collector goes away
            latencies, statuses = load(app, requests)
            q = statistics.quantiles(latencies, n=100)
            print(f"collector {phase:<4}: {requests} requests {dict(statuses)} "
                  f"p50 {q[49]:.3f} ms  p99 {q[98]:.3f} ms")
        with vertebra.connect(url) as collector_bus:         # the collector comes back
            collector_bus.serve(collector)                   # while the app still runs
            left = bus.flush(20.0)                           # what close() does on exit
            outbox = bus.stats()["outbox"]
            print(f"outbox: dropped {outbox.get('dropped', 0)} (drop_oldest), unsent after flush {left}")
            sent = 2 * requests
            expected = sent - outbox.get("dropped", 0)
            deadline = time.monotonic() + 20
            while collector.received() < expected and time.monotonic() < deadline:
                time.sleep(0.05)
    print(f"collector received {collector.received()} of {sent} reports sent "
          f"({expected} not dropped): metrics {dict(collector.metrics)}, "
          f"exceptions {dict(collector.exceptions)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["loadtest", "collector", "web"], default="loadtest")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase")
    args = parser.parse_args()
    if args.mode == "collector":
        vertebra.serve(Collector(), url=args.url)
    elif args.mode == "web":
        with vertebra.connect(args.url, overflow="drop_oldest", linger=5.0) as bus:
            print("serving on http://127.0.0.1:8000/order?amount=5 and /boom")
            make_server("127.0.0.1", 8000, make_app(bus)).serve_forever()
    elif args.url:
        loadtest(args.url, args.requests)
    else:
        with vertebra.Hub("tcp://127.0.0.1:0") as hub:
            loadtest(hub.url, args.requests)


if __name__ == "__main__":
    main()

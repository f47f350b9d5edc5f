"""``vertebra demo``: several nodes and a client in one process, over one transport."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .dispatch.sync import Bus
from .nodes import Node, event, rpc, task
from .wire.errors import CallTimeout, RemoteError, Unreachable

__all__ = ["run_demo"]


class Calc(Node):
    """Arithmetic over the bus."""

    name = "calc"

    @rpc
    def add(self, a: float, b: float) -> float:
        """Return a + b."""
        return a + b

    @rpc
    def divide(self, a: float, b: float) -> float:
        """Return a / b (try b = 0)."""
        return a / b


class Thumbnailer(Node):
    """A work queue: each job goes to one replica, acked when done."""

    name = "thumbs"
    done: ClassVar[list[tuple[str, str]]] = []
    lock = threading.Lock()

    def __init__(self, replica: str) -> None:
        self.replica = replica

    @task
    def resize(self, image: str) -> None:
        """Pretend to resize an image."""
        time.sleep(0.01)
        with self.lock:
            self.done.append((self.replica, image))


class Audit(Node):
    """Listens to every order event."""

    name = "audit"
    seen: ClassVar[list[str]] = []

    @event("orders.#")
    def on_order(self, topic: str, payload: Any) -> None:
        """Record an order event."""
        self.seen.append(f"{topic} {payload}")


def run_demo(url: str, echo: Callable[[str], None]) -> None:
    """Serve three services (one with two replicas) and exercise them from a client."""
    echo(f"vertebra demo on {url}")
    with Bus(url) as nodes_bus, Bus(url) as replica_bus, Bus(url, timeout=5.0) as client:
        nodes_bus.serve(Calc(), Thumbnailer("replica-1"), Audit())
        replica_bus.serve(Thumbnailer("replica-2"))
        calc = client.proxy("calc")
        echo(f"call   calc.add(2, 3)          -> {calc.add(2, 3)}")
        futures = [calc.add.future(i, i) for i in range(5)]
        echo(f"future calc.add(i, i) x5      -> {[f.result() for f in futures]}")
        try:
            calc.divide(1, 0)
        except RemoteError as exc:
            echo(f"error  calc.divide(1, 0)       -> RemoteError {exc.type}: {exc.message}")
        try:
            client.proxy("nobody").ping()
        except (Unreachable, CallTimeout) as exc:
            echo(f"error  nobody.ping()           -> {type(exc).__name__}: {exc}")
        for i in range(10):
            client.proxy("thumbs").resize.cast(f"img-{i}.png")
        for topic in ("orders.created", "orders.eu.shipped"):
            client.publish(topic, {"order": 42})
        client.flush()
        deadline = time.monotonic() + 10
        while (len(Thumbnailer.done) < 10 or len(Audit.seen) < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        by_replica: dict[str, int] = {}
        for replica, _ in Thumbnailer.done:
            by_replica[replica] = by_replica.get(replica, 0) + 1
        echo(f"tasks  thumbs.resize x10       -> done per replica {dict(sorted(by_replica.items()))}")
        for line in Audit.seen:
            echo(f"event  audit saw               -> {line}")
        from .cli import format_services
        echo("nodes:")
        echo(format_services(client.nodes()))

"""vertebra: one API for RPC, tasks, events and workflows over ZeroMQ, AMQP, XMPP or in-process.

::

    from vertebra import Node, rpc
    class Calc(Node):
        @rpc
        def add(self, a: int, b: int) -> int:
            return a + b

    vertebra.serve(Calc(), url="zmq://127.0.0.1:7000")        # a node
    with vertebra.connect("zmq://127.0.0.1:7000") as bus:     # a client
        bus.proxy("calc").add(2, 3)

The public API is exactly the names in ``__all__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dispatch.bus import AsyncBus
from .dispatch.sync import Bus
from .nodes import Node, event, rpc, serve, task
from .nodes.context import CallContext, current
from .wire.errors import CallTimeout, ProtocolError, RemoteError, Unreachable, VertebraError

if TYPE_CHECKING:
    from .transports.zmq import Hub

__all__ = [
    "AsyncBus",
    "Bus",
    "CallContext",
    "CallTimeout",
    "Hub",
    "Node",
    "ProtocolError",
    "RemoteError",
    "Unreachable",
    "VertebraError",
    "__version__",
    "connect",
    "connect_async",
    "current",
    "event",
    "rpc",
    "serve",
    "task",
]

__version__ = "0.1.0"


def connect(url: str | None = None, *more_urls: str, **options: Any) -> Bus:
    """A sync bus (use it as a context manager); ``url`` defaults to ``$VERTEBRA_URL`` or
    the embedded default; several URLs give one bus over several transports.
    Options: codec, timeout, outbox_size, overflow, linger, spool, ..."""
    return Bus(url, *more_urls, **options)


def connect_async(url: str | None = None, *more_urls: str, **options: Any) -> AsyncBus:
    """An async bus: ``async with vertebra.connect_async(url) as bus: ...``."""
    return AsyncBus(url, *more_urls, **options)


def __getattr__(name: str) -> Any:
    if name == "Hub":  # imported lazily: only users of zmq:// need pyzmq
        from .transports.zmq import Hub
        return Hub
    raise AttributeError(f"module 'vertebra' has no attribute {name!r}")

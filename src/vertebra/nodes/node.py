"""The Node base class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus
    from .runtime import NodeRuntime

__all__ = ["Node"]


class Node:
    """Base class of a service: subclass it and decorate methods with @rpc, @task, @event.

    Class attributes:

    ``name``
        The service name (default: the class name, lower-cased).
    ``concurrency``
        How many handlers of one replica may run at once (default 16).  It is also the
        transport's prefetch: no replica holds more unacked work than this.
    ``max_workers``
        Threads for sync handlers (default: ``concurrency``); async handlers run on the loop.
    ``allow_tracebacks``
        Whether error replies carry the handler's traceback (default True).
    """

    name: ClassVar[str] = ""
    concurrency: ClassVar[int] = 16
    max_workers: ClassVar[int] = 0
    allow_tracebacks: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()

    def __vertebra_runtime__(self, bus: AsyncBus) -> NodeRuntime:
        """The runtime that serves this node on ``bus`` (used by ``Bus.serve``)."""
        from .runtime import NodeRuntime
        return NodeRuntime(self, bus)

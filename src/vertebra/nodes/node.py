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
    ``min_workers``, ``max_workers``, ``idle_timeout``
        The elastic thread pool for sync handlers: it grows with the backlog up to
        ``max_workers`` (default: ``concurrency``) and shrinks back to ``min_workers``
        (default 1) after ``idle_timeout`` seconds idle (default 30).  Async handlers run
        on the event loop.
    ``dedup_window``
        Seconds during which a message seen before (same ``idempotency-key`` header, else
        same message id) is dropped instead of run again: at-least-once delivery becomes
        effectively-once handling.  A duplicate call gets the first call's answer when it
        is known.  0 (the default) turns it off.
    ``allow_tracebacks``
        Whether error replies carry the handler's traceback (default True).
    ``max_attempts``, ``retry_delay``
        How often a ``@task`` that raises runs in all (default 3; ``@task(max_attempts=n)``
        sets it per method) and the base of the exponential backoff between attempts, in
        seconds (default 0.1, doubling, capped at 5 s, full jitter).  Past the last
        attempt the task is buried as a dead letter with its error
        (``bus.dead_letters(service)``, ``bus.replay(service)``); see
        :mod:`vertebra.nodes.retry`.
    ``revoke_window``
        Seconds a replica remembers a cancelled message id (``bus.cancel``, a cancelled
        call or stream), so that a message cancelled before it arrives is never started
        (default 3600; at most 100 000 ids, the oldest forgotten first).  0 remembers none:
        a cancel then only stops a run in progress.
    """

    name: ClassVar[str] = ""
    concurrency: ClassVar[int] = 16
    min_workers: ClassVar[int] = 1
    max_workers: ClassVar[int] = 0
    idle_timeout: ClassVar[float] = 30.0
    dedup_window: ClassVar[float] = 0.0
    allow_tracebacks: ClassVar[bool] = True
    max_attempts: ClassVar[int] = 3
    retry_delay: ClassVar[float] = 0.1
    revoke_window: ClassVar[float] = 3600.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()

    def __vertebra_runtime__(self, bus: AsyncBus) -> NodeRuntime:
        """The runtime that serves this node on ``bus`` (used by ``Bus.serve``)."""
        from .runtime import NodeRuntime
        return NodeRuntime(self, bus)

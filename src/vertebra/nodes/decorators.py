"""``@rpc``, ``@task`` and ``@event(pattern)``: they only register.

The decorated function is returned unchanged apart from one attribute, so a handler stays
a plain method you can call directly in a unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ..wire.topics import validate_pattern

__all__ = ["ENTRYPOINT_ATTR", "Entrypoint", "cron", "event", "every", "rpc", "task"]

F = TypeVar("F", bound=Callable[..., Any])
ENTRYPOINT_ATTR = "__vertebra_entrypoint__"


@dataclass(frozen=True, slots=True)
class Entrypoint:
    """How a method is exposed: ``kind`` is "rpc", "task" or "event"."""

    kind: str
    pattern: str = ""
    max_attempts: int | None = None
    every: float = 0.0
    cron: str = ""


def _mark(func: F, ep: Entrypoint) -> F:
    if getattr(func, ENTRYPOINT_ATTR, None) is not None:
        raise TypeError(f"{func.__qualname__} is already a vertebra entry point")
    setattr(func, ENTRYPOINT_ATTR, ep)
    return func


def rpc(func: F) -> F:
    """Expose a method for request/reply calls (and casts)."""
    return _mark(func, Entrypoint("rpc"))


@overload
def task(func: F, /) -> F: ...
@overload
def task(*, max_attempts: int | None = None) -> Callable[[F], F]: ...


def task(func: F | None = None, /, *, max_attempts: int | None = None) -> F | Callable[[F], F]:
    """Expose a method as a work-queue task: one replica runs each item, acked when done.

    A task that raises is tried again, with backoff, until it has run ``max_attempts``
    times (the Node's ``max_attempts`` when None, default 3); then it is buried as a dead
    letter that keeps the error (see :mod:`vertebra.nodes.retry`).
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if func is not None:
        return _mark(func, Entrypoint("task"))

    def deco(f: F) -> F:
        return _mark(f, Entrypoint("task", max_attempts=max_attempts))
    return deco


def event(pattern: str) -> Callable[[F], F]:
    """Subscribe a method ``handler(self, topic, payload)`` to events matching ``pattern``.

    Topics are dot-separated words; ``*`` matches exactly one word, ``#`` zero or more.
    Every replica of the service receives each matching event.
    """
    validate_pattern(pattern)

    def deco(f: F) -> F:
        return _mark(f, Entrypoint("event", pattern))
    return deco


def every(seconds: float) -> Callable[[F], F]:
    """Run a method once every ``seconds`` across all replicas of the service.

    The method takes no argument, or one: the period's start (epoch seconds).

    Periods start at multiples of ``seconds`` since the Unix epoch; see
    :mod:`vertebra.nodes.schedule` for how the replicas agree on who fires.
    """
    if not seconds > 0:
        raise ValueError("every() needs a positive number of seconds")

    def deco(f: F) -> F:
        return _mark(f, Entrypoint("schedule", every=float(seconds)))
    return deco


def cron(expression: str) -> Callable[[F], F]:
    """Run a method at the times of a 5-field cron expression, in UTC, once across all
    replicas (``pip install 'vertebra[cron]'`` for the croniter it uses). The method takes
    no argument, or one: the period's start (epoch seconds)."""
    from croniter import croniter

    if not croniter.is_valid(expression) or len(expression.split()) != 5:
        raise ValueError(f"not a 5-field cron expression: {expression!r}")

    def deco(f: F) -> F:
        return _mark(f, Entrypoint("schedule", cron=expression))
    return deco

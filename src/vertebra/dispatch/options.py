"""Per-call options: ``proxy.method.options(timeout=..., idempotency_key=..., headers=...,
delay=..., at=..., priority=...)``.

The options are checked once, when they are bound, and travel with the bound method; the
verbs (``()``, ``.cast``, ``.future``, ``.stream``) are the same as the plain method's.
``delay`` counts from each send, ``at`` is an absolute time; either sets the message's
``not_before`` (docs/PROTOCOL.md §2): it is never run earlier.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..wire.envelope import MAX_PRIORITY

__all__ = ["IDEMPOTENCY_HEADER", "CallOptions"]

IDEMPOTENCY_HEADER = "idempotency-key"
"""The header a node's duplicate suppression keys on (docs/PROTOCOL.md §2)."""

_KNOWN = "timeout, idempotency_key, headers, delay, at, priority"


@dataclass(frozen=True, slots=True)
class CallOptions:
    """What a bound method adds to each message it sends."""

    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float | None = None
    """Seconds after each send before the message may run."""
    at: float | None = None
    """Epoch seconds before which the message may not run."""
    priority: int | None = None
    """0-9, higher first, where the transport orders by priority."""

    def not_before(self) -> float | None:
        """The ``not_before`` of a message sent now, or None when not delayed."""
        if self.at is not None:
            return self.at
        if self.delay:
            return time.time() + self.delay
        return None

    def bind(self, *, timeout: float | None = None, idempotency_key: str | None = None,
             headers: Mapping[str, str] | None = None, delay: float | None = None,
             at: datetime.datetime | float | None = None, priority: int | None = None,
             **unknown: Any) -> CallOptions:
        """These options with the given ones laid over them (checked here, not at send)."""
        if unknown:
            raise TypeError(f"unknown call option(s): {', '.join(sorted(unknown))} (known: {_KNOWN})")
        if timeout is not None and not (_is_number(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        merged = dict(self.headers)
        if headers is not None:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
                raise TypeError("headers must map strings to strings")
            merged.update(headers)
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise TypeError("idempotency_key must be a non-empty string")
            merged[IDEMPOTENCY_HEADER] = idempotency_key
        if delay is not None and at is not None:
            raise TypeError("give delay= or at=, not both")
        new_delay, new_at = self.delay, self.at
        if delay is not None:
            if not (_is_number(delay) and delay >= 0):
                raise ValueError("delay must be a number of seconds >= 0")
            new_delay, new_at = float(delay), None
        if at is not None:
            new_delay, new_at = None, _epoch(at)
        if priority is not None and not _is_priority(priority):
            raise ValueError(f"priority must be an integer from 0 to {MAX_PRIORITY}")
        return CallOptions(self.timeout if timeout is None else float(timeout), merged,
                           new_delay, new_at, self.priority if priority is None else priority)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_priority(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_PRIORITY


def _epoch(at: datetime.datetime | float) -> float:
    """``at`` as epoch seconds: a datetime (naive means local time) or a number."""
    if isinstance(at, datetime.datetime):
        return at.timestamp()
    if _is_number(at):
        return float(at)
    raise TypeError("at must be a datetime (or epoch seconds)")

"""Per-call options: ``proxy.method.options(timeout=..., idempotency_key=..., headers=...)``.

The options are checked once, when they are bound, and travel with the bound method; the
verbs (``()``, ``.cast``, ``.future``) are the same as the plain method's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IDEMPOTENCY_HEADER", "CallOptions"]

IDEMPOTENCY_HEADER = "idempotency-key"
"""The header a node's duplicate suppression keys on (docs/PROTOCOL.md §2)."""


@dataclass(frozen=True, slots=True)
class CallOptions:
    """What a bound method adds to each message it sends."""

    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict)

    def bind(self, *, timeout: float | None = None, idempotency_key: str | None = None,
             headers: Mapping[str, str] | None = None, **unknown: Any) -> CallOptions:
        """These options with the given ones laid over them (checked here, not at send)."""
        if unknown:
            raise TypeError(f"unknown call option(s): {', '.join(sorted(unknown))} "
                            "(known: timeout, idempotency_key, headers)")
        if timeout is not None and not timeout > 0:
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
        return CallOptions(self.timeout if timeout is None else float(timeout), merged)

"""Exponential backoff with full jitter: the one schedule every retry in vertebra uses
(the outbox's sends, calls while the transport is down, task attempts, reconnects).

It sits beneath both the dispatch core and the transports, and imports nothing of
vertebra.  ``jitter`` is injectable, so retry schedules are tested without sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt n (0-based) waits uniform(0, min(cap, base·2ⁿ)) seconds."""

    base: float = 0.05
    cap: float = 5.0
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        return float(self.jitter() * min(self.cap, self.base * (2 ** min(attempt, 30))))

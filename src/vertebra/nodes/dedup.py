"""Duplicate suppression within a time window: effectively-once handling on top of
at-least-once delivery."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from ..wire.envelope import Envelope

__all__ = ["Dedup"]


class Dedup:
    """Remembers message keys for ``window`` seconds (at most ``max_entries`` of them).

    The key is the ``idempotency-key`` header when the sender set one, else the message
    id (which stays the same across redeliveries and outbox retries).
    """

    def __init__(self, window: float, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._seen: collections.OrderedDict[str, tuple[float, Envelope | None]] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether duplicates are dropped at all."""
        return self.window > 0

    @staticmethod
    def key(env: Envelope) -> str:
        """The key duplicates share."""
        return env.headers.get("idempotency-key") or env.id

    def check(self, env: Envelope) -> tuple[bool, Envelope | None]:
        """(seen before, the answer then given if any); records the message if new."""
        now = self.clock()
        while self._seen:
            oldest_key, (at, _) = next(iter(self._seen.items()))
            if now - at <= self.window and len(self._seen) <= self.max_entries:
                break
            del self._seen[oldest_key]
        key = self.key(env)
        hit = self._seen.get(key)
        if hit is not None:
            return True, hit[1]
        self._seen[key] = (now, None)
        return False, None

    def remember(self, env: Envelope, answer: Envelope) -> None:
        """Keep the answer of a call, to give to its duplicates."""
        if self.enabled:
            key = self.key(env)
            if key in self._seen:
                self._seen[key] = (self._seen[key][0], answer)

    def forget(self, env: Envelope) -> None:
        """Let a message run again (its handler failed and it goes back for a retry)."""
        self._seen.pop(self.key(env), None)

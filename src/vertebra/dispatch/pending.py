"""The pending-call table: call id -> the future its answer resolves."""

from __future__ import annotations

import asyncio
from typing import Any

from ..wire.envelope import Envelope
from ..wire.errors import error_from_wire

__all__ = ["PendingCalls"]


class PendingCalls:
    """Futures of calls waiting for their answer, keyed by call id; loop-thread only."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self.late = 0  # answers that arrived after their caller gave up

    def add(self, call_id: str) -> asyncio.Future[Any]:
        """Register a call; the returned future gets its result or exception."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[call_id] = fut
        return fut

    def discard(self, call_id: str) -> None:
        """Forget a call (it timed out or was cancelled)."""
        self._futures.pop(call_id, None)

    def resolve(self, answer: Envelope) -> None:
        """Settle the call that ``answer`` (a reply or error envelope) answers."""
        fut = self._futures.pop(answer.re, None)
        if fut is None or fut.done():
            self.late += 1
            return
        if answer.kind == "reply":
            fut.set_result(answer.result)
        else:
            fut.set_exception(error_from_wire(answer.error))

    def __len__(self) -> int:
        return len(self._futures)

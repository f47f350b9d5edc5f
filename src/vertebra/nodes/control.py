"""The node's side of control messages (:mod:`vertebra.wire.control`): reading them, and
remembering cancelled ids so that a message cancelled before it arrives never starts."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Cancel", "Credit", "Revoked", "parse_control"]


@dataclass(frozen=True, slots=True)
class Cancel:
    """``{"op": "cancel", "id": ...}``: stop the call, cast or task with this id."""

    id: str


@dataclass(frozen=True, slots=True)
class Credit:
    """``{"op": "credit", "id": ..., "upto": n}``: the stream may send items with seq < n."""

    id: str
    upto: int


def parse_control(payload: Any) -> Cancel | Credit | None:
    """The control message ``payload`` holds, or None when it is not a well-formed one."""
    if not isinstance(payload, dict):
        return None
    op, mid = payload.get("op"), payload.get("id")
    if not isinstance(mid, str) or not mid:
        return None
    if op == "cancel":
        return Cancel(mid)
    upto = payload.get("upto")
    if op == "credit" and type(upto) is int and upto >= 0:
        return Credit(mid, upto)
    return None


class Revoked:
    """Cancelled message ids, each remembered for ``window`` seconds; at most
    ``max_entries`` of them (the oldest are forgotten first)."""

    def __init__(self, window: float, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self.ids: collections.OrderedDict[str, float] = collections.OrderedDict()
        """id -> when it was cancelled (clock time), oldest first (empty: nothing to look up)."""

    def add(self, message_id: str) -> None:
        """Remember that ``message_id`` was cancelled (from now)."""
        if self.window <= 0:
            return
        now = self.clock()
        ids = self.ids
        ids[message_id] = now
        ids.move_to_end(message_id)
        while ids:
            oldest, at = next(iter(ids.items()))
            if now - at <= self.window and len(ids) <= self.max_entries:
                break
            del ids[oldest]

    def __contains__(self, message_id: object) -> bool:
        at = self.ids.get(message_id) if isinstance(message_id, str) else None
        return at is not None and self.clock() - at <= self.window

    def __len__(self) -> int:
        return len(self.ids)

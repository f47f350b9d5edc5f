"""What the hub remembers besides its queues: buried tasks, and the sends it has taken.

* :class:`Graveyard` keeps the dead letters of each service, oldest first, up to
  ``limit`` per service; past it the oldest is dropped and counted (``dropped``).  A dead
  letter is what the node buried (BURY, NACK 0 of a task) or what the hub buried itself
  (a task whose worker died holding it too often: error type ``WorkerLost``).
* :class:`RecentSends` makes CAST and TASK idempotent within one hub's life: a sender
  that did not hear QUEUED (a lost confirmation, a bounded wait that ran out, a connection
  that dropped) sends the same message again; the hub recognises it by (service, message
  id, the envelope's bytes) among the last ``limit`` sends and confirms it again without
  queueing a second copy.  The same id with other bytes (a task's next attempt: another
  ``attempt`` header) is a new message.

Both run on the hub's thread only; neither decodes an envelope.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeadLetterEntry", "Graveyard", "RecentSends"]

log = logging.getLogger("vertebra.transports.zmq.hub")

_PAGE_ITEMS = 256


@dataclass(slots=True)
class DeadLetterEntry:
    """One buried message: its place in the order, message id, envelope and error (JSON)."""

    seq: int
    msgid: bytes
    body: bytes
    error: bytes


@dataclass(slots=True)
class _Grave:
    letters: deque[DeadLetterEntry] = field(default_factory=deque)
    dropped: int = 0


class Graveyard:
    """The dead letters of every service, ``limit`` kept per service."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = max(1, limit)
        self.buried = 0
        """Dead letters taken in, in all."""
        self.dropped = 0
        """Dead letters dropped because their service already kept ``limit``."""
        self._graves: dict[bytes, _Grave] = {}
        self._seq = 0

    def bury(self, service: bytes, msgid: bytes, body: bytes, error: dict[str, Any]) -> None:
        """Keep ``body`` (the envelope as delivered) as a dead letter of ``service``."""
        grave = self._graves.setdefault(service, _Grave())
        self._seq += 1
        self.buried += 1
        grave.letters.append(DeadLetterEntry(self._seq, msgid, body,
                                             json.dumps(error, default=str).encode()))
        if len(grave.letters) > self.limit:
            grave.letters.popleft()
            grave.dropped += 1
            self.dropped += 1
            if grave.dropped == 1 or grave.dropped % 100 == 0:
                log.warning("hub: %s keeps %d dead letters; dropped the oldest (%d dropped)",
                            service.decode(errors="replace"), self.limit, grave.dropped)

    def page(self, service: bytes, after: int, budget: int) -> tuple[dict[str, Any], list[DeadLetterEntry]]:
        """The dead letters of ``service`` after cursor ``after``, oldest first, at most
        about ``budget`` bytes (at least one); and the page header: ``next`` (the cursor to
        ask with next, None at the end), ``total`` and ``dropped``."""
        grave = self._graves.get(service)
        if grave is None:
            return {"next": None, "total": 0, "dropped": 0}, []
        out: list[DeadLetterEntry] = []
        size = 0
        more = False
        for entry in grave.letters:
            if entry.seq <= after:
                continue
            if out and (len(out) >= _PAGE_ITEMS or size + len(entry.body) > budget):
                more = True
                break
            out.append(entry)
            size += len(entry.body) + len(entry.error)
        nxt = out[-1].seq if more and out else None
        return {"next": nxt, "total": len(grave.letters), "dropped": grave.dropped}, out

    def take(self, service: bytes, msgid: bytes) -> DeadLetterEntry | None:
        """Remove and return the oldest dead letter of ``service`` with ``msgid``."""
        grave = self._graves.get(service)
        if grave is None:
            return None
        for entry in grave.letters:
            if entry.msgid == msgid:
                grave.letters.remove(entry)
                if not grave.letters and not grave.dropped:
                    del self._graves[service]
                return entry
        return None

    def count(self, service: bytes) -> int:
        """How many dead letters ``service`` has now."""
        grave = self._graves.get(service)
        return len(grave.letters) if grave is not None else 0


class RecentSends:
    """The last ``limit`` CAST/TASK sends the hub took: (service, message id) -> the hash
    of each envelope taken under it (0 turns it off).  About 150 bytes a send."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._seen: dict[bytes, int | tuple[int, ...]] = {}

    @staticmethod
    def _key(service: bytes, msgid: bytes) -> bytes:
        return service + b"\x00" + msgid

    def seen(self, service: bytes, msgid: bytes, body: bytes) -> bool:
        """True if exactly this message was taken before (within the window)."""
        hashes = self._seen.get(self._key(service, msgid))
        if hashes is None:
            return False
        return hash(body) == hashes if isinstance(hashes, int) else hash(body) in hashes

    def add(self, service: bytes, msgid: bytes, body: bytes) -> None:
        """Remember a send that the hub took."""
        if self.limit <= 0:
            return
        key = self._key(service, msgid)
        hashes = self._seen.get(key)
        if hashes is None:
            self._seen[key] = hash(body)
            if len(self._seen) > self.limit:
                del self._seen[next(iter(self._seen))]
        else:
            self._seen[key] = (*((hashes,) if isinstance(hashes, int) else hashes), hash(body))

    def forget(self, service: bytes, msgid: bytes) -> None:
        """Forget every send of ``msgid`` (it was buried or replayed: what comes next under
        that id, a replayed task's next attempts, is new)."""
        self._seen.pop(self._key(service, msgid), None)

    def __len__(self) -> int:
        return len(self._seen)

"""A durable spool for the outbox: accepted sends survive ``kill -9``.

Opt-in (``vertebra.connect(url, spool="outbox.db")``).  Every message the outbox accepts
is written to a SQLite database (WAL journal) before ``put`` returns, and deleted once the
transport has taken it (for a broker with confirms: once the broker has it).  A process
that starts with the same spool file sends what an earlier one left behind, oldest first.
A delayed message (``not_before``) is stored the same way, its ``not_before`` with it: it
stays in the spool while the outbox holds it and until the transport has taken it, and
after a restart the outbox holds it again until due (the spool only stores; the holding
is the outbox's).

WAL with ``synchronous=NORMAL`` makes a committed row survive the death of the process
(the operating system keeps the write); it is not fsynced on every commit, so a power
failure may lose the last moments.  ``durability="full"`` fsyncs each commit instead.
"""

from __future__ import annotations

import threading
from typing import Literal

from ..wire.codec import CODECS
from ..wire.envelope import Envelope

__all__ = ["Spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body BLOB NOT NULL
)
"""


class Spool:
    """Durable storage of accepted, unsent envelopes (thread-safe)."""

    def __init__(self, path: str, durability: Literal["normal", "full"] = "normal") -> None:
        self.path = path
        self._lock = threading.Lock()
        import sqlite3  # here, not at the top: a bus without a spool does not carry it
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self._db.execute(_SCHEMA)
        self._codec = CODECS["msgpack"]

    def add(self, env: Envelope) -> int:
        """Store ``env``; returns its sequence number (the key to :meth:`remove`)."""
        body = self._codec.encode(env)
        with self._lock:
            cur = self._db.execute("INSERT INTO outbox (id, body) VALUES (?, ?)", (env.id, body))
            seq = cur.lastrowid
        assert seq is not None
        return seq

    def remove(self, seq: int) -> None:
        """Forget a message that was sent (or given up)."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def pending(self) -> list[tuple[int, Envelope]]:
        """Everything stored and not yet removed, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body FROM outbox ORDER BY seq").fetchall()
        return [(seq, self._codec.decode(body)) for seq, body in rows]

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def close(self) -> None:
        """Close the database (what is stored stays for the next start)."""
        with self._lock:
            self._db.close()

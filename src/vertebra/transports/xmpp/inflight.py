"""What the sending side keeps per message in flight, and the keys it is known by."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...wire.codec import CODECS, Codec
from ...wire.deadletter import attempt_of
from ...wire.envelope import STREAM_HEADER, Envelope

__all__ = ["REPLAY_HEADER", "Out", "Sink", "codec_of", "delivery_key"]

REPLAY_HEADER = "replay"
"""Set (to a random token) on a replayed dead letter, so that duplicate suppression, which
knows messages by id and attempt, tells the replay from the attempt it repeats."""

Sink = Callable[[ET.Element | None, dict[str, Any] | None], None]
"""Where the answer to a forwarded message goes (the gateway, :mod:`.gateway`): the
replica's IQ answer, or — when this transport gives up on it itself (no replica, deadline,
connection lost) — a wire error object."""


def delivery_key(env: Envelope) -> str:
    """What duplicate suppression knows a message by: id, attempt and replay token."""
    return f"{env.id}#{attempt_of(env)}#{env.headers.get(REPLAY_HEADER, '')}"


def codec_of(data: bytes) -> Codec:
    """The codec an encoded envelope was written in (docs/PROTOCOL.md §3: by its first
    byte), so that its answer is written in the same one."""
    first = data.lstrip(b" \t\r\n")[:1]
    return CODECS["json"] if first in (b"", b"{") else CODECS["msgpack"]


@dataclass(slots=True, eq=False)
class Out:
    """A call, cast or task sent and not answered or acknowledged yet."""

    env: Envelope
    data: bytes
    key: str
    owned: bool = False        # no send() behind it: only the transport keeps it
    target: str = ""
    sid: str = ""
    gone: set[str] = field(default_factory=set)
    parked_at: float = 0.0     # monotonic time it began to wait for a replica; 0: it is not
    lost: int = 0              # replicas that vanished holding it
    transmissions: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    sink: Sink | None = None   # forwarded for someone else (the gateway): the answer goes here
    items: int = 0             # a streamed call: items received (from ``target``) so far

    @property
    def streamed(self) -> bool:
        """A call whose result comes as a stream (the ``stream`` header)."""
        return self.env.kind == "call" and STREAM_HEADER in self.env.headers

"""A message handed to a served service, and what the transport keeps per served service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...wire.envelope import Envelope
from ...wire.info import ServiceInfo
from ..base import Handler, Incoming

if TYPE_CHECKING:
    from .transport import AmqpTransport

__all__ = ["AmqpIncoming", "Served"]


@dataclass(eq=False)
class Served:
    """One served service: its consumer channel, consumer tags and in-flight count."""

    info: ServiceInfo
    handler: Handler
    prefetch: int
    channel: Any = None
    tags: list[str] = field(default_factory=list)
    inflight: int = 0
    stopped: bool = False


class AmqpIncoming(Incoming):
    """A call, cast or task delivered from a service's queue."""

    __slots__ = ("_channel_ref", "_done", "_served", "_tag", "_transport", "attempts", "body",
                 "properties", "queue")

    def __init__(self, envelope: Envelope, transport: AmqpTransport, served: Served,
                 channel: Any, tag: int, queue: str, body: bytes, properties: dict[str, Any],
                 attempts: int) -> None:
        super().__init__(envelope)
        self._transport = transport
        self._served = served
        self._channel_ref = channel
        self._tag = tag
        self._done = False
        self.queue = queue
        self.body = body
        self.properties = properties
        self.attempts = attempts

    async def reply(self, answer: Envelope) -> None:
        """Publish the answer to the caller's direct reply-to address."""
        await self._transport._reply(answer)

    def _channel(self) -> Any:
        """The channel to settle on, or None when its connection is gone (redelivered)."""
        ch = self._channel_ref
        if ch is not self._served.channel or not getattr(ch, "is_open", False):
            return None
        return ch

    def _finish(self) -> None:
        self._served.inflight -= 1
        self._transport._maybe_close_served(self._served)

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""
        if self._done:
            return
        self._done = True
        try:
            ch = self._channel()
            if ch is not None:
                self._transport._guard(ch.basic_ack, self._tag)
        finally:
            self._finish()

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """``requeue``: failed, may retry (dead-lettered past max_attempts); else dead now.

        ``error`` (a wire error object), when given, is attached to a dead-lettered task.
        """
        if self._done:
            return
        self._done = True
        try:
            ch = self._channel()
            if not requeue or self.envelope.kind == "call":
                if ch is not None:
                    self._transport._guard(ch.basic_reject, self._tag, requeue)
                return
            if ch is None:
                return   # redelivered anyway: do not publish a copy as well
            await self._transport._retry_or_bury(self, error)   # acks us when confirmed
        finally:
            self._finish()

    def ack_now(self) -> None:
        """Ack at once, from the confirm of this message's re-published copy: the ack is
        on the wire before the copy can be handled, so a crash on the copy cannot leave
        the original to be redelivered as well."""
        ch = self._channel()
        if ch is not None:
            try:
                ch.basic_ack(self._tag)
            except Exception as exc:   # the connection is going: the original comes back
                self._transport._conn.lost(exc)

"""A message handed to a served service, and what the transport keeps per served service."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...wire.codec import codec_of
from ...wire.envelope import Envelope
from ...wire.info import ServiceInfo
from ..base import Handler, Incoming

if TYPE_CHECKING:
    from .serving import Serving

__all__ = ["AmqpIncoming", "Served"]

log = logging.getLogger("vertebra.transports.amqp")


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

    __slots__ = ("_channel_ref", "_done", "_served", "_serving", "_tag", "body", "properties")

    def __init__(self, envelope: Envelope, serving: Serving, served: Served, channel: Any,
                 tag: int, body: bytes, properties: dict[str, Any]) -> None:
        super().__init__(envelope)
        self._serving = serving
        self._served = served
        self._channel_ref = channel
        self._tag = tag
        self._done = False
        self.body = body
        self.properties = properties

    async def reply(self, answer: Envelope) -> None:
        """Publish the answer to the caller's direct reply-to address: any number of
        ``item`` / ``beat`` envelopes of a streamed call, then its final ``reply`` or
        ``error``.  Settling is :meth:`ack`'s (the node acks after the final answer).
        ProtocolError for an answer above ``max_message`` (nothing is sent)."""
        await self._serving.reply(answer, codec_of(self.body))

    def _channel(self) -> Any:
        """The channel to settle on, or None when its connection is gone (redelivered)."""
        ch = self._channel_ref
        if ch is not self._served.channel or not getattr(ch, "is_open", False):
            return None
        return ch

    def _finish(self) -> None:
        self._served.inflight -= 1
        self._serving.maybe_close(self._served)

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""
        if self._done:
            return
        self._done = True
        try:
            ch = self._channel()
            if ch is not None:
                self._serving.link.guard(self._serving.link.ack, ch, self._tag)
        finally:
            self._finish()

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """``requeue``: back to its queue unchanged (``basic.reject``, requeue); else a task
        is buried in the dead queue with ``error``, a cast dropped (logged), a call dropped.

        When the connection is already gone nothing is sent: the broker delivers the
        message again, and its node decides again.
        """
        if self._done:
            return
        self._done = True
        try:
            ch = self._channel()
            kind = self.envelope.kind
            if requeue or kind == "call":
                if ch is not None:
                    self._serving.link.guard(ch.basic_reject, self._tag, requeue)
                return
            if ch is None:
                return
            if kind == "cast":
                env = self.envelope
                log.warning("amqp: dropped cast %s to %s.%s: %s", env.id, env.service, env.method,
                            (error or {}).get("message", "rejected by its node"))
                self._serving.link.stats["dropped"] += 1
                self._serving.link.guard(self._serving.link.ack, ch, self._tag)
                return
            await self._serving.bury(self, error)   # acks us once the dead copy is confirmed
        finally:
            self._finish()

    def requeue_now(self) -> None:
        """Give the delivery back unchanged (a copy of it could not be confirmed)."""
        ch = self._channel()
        if ch is not None:
            try:
                ch.basic_reject(self._tag, True)
            except Exception as exc:   # the connection is going: it comes back anyway
                self._serving.link.conn.lost(exc)

    def ack_now(self) -> None:
        """Ack at once, from the confirm of this message's re-published copy: the ack is
        on the wire before the copy can be handled, so a crash on the copy cannot leave
        the original to be redelivered as well."""
        ch = self._channel()
        if ch is not None:
            try:
                self._serving.link.ack(ch, self._tag)
            except Exception as exc:   # the connection is going: the original comes back
                self._serving.link.conn.lost(exc)

"""What a served service receives: an Incoming answered by IQ result/error (vertebra's own
envelope) or by an XML-RPC methodResponse (Jabber-RPC)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...wire.codec import Codec
from ...wire.envelope import Envelope
from ...wire.info import ServiceInfo
from ..base import Handler, Incoming
from . import jabber_rpc, stanzas

if TYPE_CHECKING:
    from .transport import XmppTransport

__all__ = ["RpcIncoming", "Served", "XmppIncoming"]


@dataclass(slots=True)
class Served:
    """A service this bus serves: its handler, prefetch and what runs or waits."""

    info: ServiceInfo
    handler: Handler
    prefetch: int
    active: bool = True
    running: int = 0
    held: collections.deque[tuple[Envelope, str, str, Codec]] = field(
        default_factory=collections.deque)


class XmppIncoming(Incoming):
    """A call, cast or task received in an IQ set; answered by an IQ result or error,
    in the codec the call came in."""

    __slots__ = ("_codec", "_served", "_settled", "_t")

    def __init__(self, t: XmppTransport, served: Served, env: Envelope, codec: Codec) -> None:
        super().__init__(env)
        self._t, self._served, self._settled, self._codec = t, served, False, codec

    async def reply(self, answer: Envelope) -> None:
        """Answer the call: an ``item`` or ``beat`` in a message to the caller (any number,
        in order; ProtocolError above ``max_size``), then the final reply in the IQ result
        (an error in an IQ error)."""
        self._t.serving.answer(self.envelope, answer, self._codec)

    async def ack(self) -> None:
        """Done: acknowledge a cast/task with an empty IQ result."""
        if not self._settled:
            self._settled = True
            await self._t.serving.settle(self._served, self.envelope, None)

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """Give up: back to the sender to be sent again (``requeue``), or for good: a task
        is buried with ``error`` (PubSub, see .deadletters) before the sender is
        acknowledged, a cast is dropped with a log line."""
        if not self._settled:
            self._settled = True
            await self._t.serving.settle(self._served, self.envelope, requeue, error)


class RpcIncoming(Incoming):
    """A Jabber-RPC call fed through the served handler; answered in XML-RPC."""

    __slots__ = ("_done", "_served", "_sid", "_t", "_to")

    def __init__(self, t: XmppTransport, served: Served, env: Envelope, to: str, sid: str) -> None:
        super().__init__(env)
        self._t, self._served, self._to, self._sid, self._done = t, served, to, sid, False

    async def reply(self, answer: Envelope) -> None:
        """Answer in XML-RPC: a methodResponse or a fault (XML-RPC has no streams: an
        ``item`` or ``beat`` is dropped; a Jabber-RPC call never asks for a stream)."""
        if answer.kind == "item" or answer.kind == "beat":
            return
        if answer.kind == "reply":
            try:
                inner = jabber_rpc.response(answer.result)
            except ValueError as exc:
                inner = jabber_rpc.fault(500, f"result not representable in XML-RPC: {exc}")
        else:
            inner = jabber_rpc.fault_of(answer.error or {})
        self._t.send_xml(stanzas.result_iq(self._to, self._sid, inner))

    async def ack(self) -> None:
        """Free the prefetch slot."""
        if not self._done:
            self._done = True
            self._t.serving.finish(self._served)

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """Free the prefetch slot (an RPC call is never requeued)."""
        await self.ack()

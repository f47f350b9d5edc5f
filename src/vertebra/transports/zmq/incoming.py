"""One delivery from the hub to a served service, and how it is settled.

A streamed call is answered with any number of ITEM frames (``item`` and ``beat``
envelopes) before its REPLY; they settle nothing (the call keeps its credit and its place
in the hub's table of calls in flight, so a replica that dies mid-stream still gets its
caller UNREACHABLE).
Every way of settling gives the hub its credit back: REPLY (calls), ACK, NACK ``1``
(back to the front of the queue unchanged: not an attempt), BURY (a task given up: the
hub keeps it as a dead letter with the error) and NACK ``0`` (a cast given up: dropped).
A settle that cannot reach the hub (the link is down) raises ConnectionError; the hub
that held the delivery gives it to another replica if it outlives us, or took it with it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ...wire.codec import Codec
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, wire_error
from ..base import Incoming
from . import frames as F
from .connection import HubLink

__all__ = ["ZmqIncoming"]

log = logging.getLogger("vertebra.transports.zmq")

_H_REPLY, _H_ACK, _H_NACK, _H_BURY = (F.header(F.REPLY), F.header(F.ACK), F.header(F.NACK),
                                      F.header(F.BURY))
_H_ITEM = F.header(F.ITEM)
PARTIAL = frozenset({"item", "beat"})
"""Answer kinds that settle nothing (a streamed call's items and beats)."""


def answer_body(codec: Codec, call: Envelope, answer: Envelope, limit: int) -> bytes:
    """``answer`` to ``call``, encoded.  An ``item`` or ``beat`` that cannot be encoded or is
    over ``limit`` bytes raises ProtocolError (the node then ends the stream with an error);
    a final ``reply`` or ``error`` that cannot is replaced by an error saying why."""
    if answer.kind in PARTIAL:
        body = codec.encode(answer)
        if len(body) > limit:
            raise ProtocolError(f"{answer.kind} of {len(body)} bytes is over the maximum of "
                                f"{limit} (max_message_size)")
        return body
    try:
        body = codec.encode(answer)
    except ProtocolError as exc:
        body = codec.encode(call.fail(wire_error("protocol", "ProtocolError", str(exc))))
    if len(body) > limit:
        body = codec.encode(call.fail(wire_error(
            "protocol", "ProtocolError", f"reply of {len(body)} bytes is over the maximum of {limit}")))
    return body


class ZmqIncoming(Incoming):
    """A delivery from the hub: ``tag`` is the hub's delivery tag, echoed when settling;
    ``codec`` the codec of the delivered envelope, which its answer uses (PROTOCOL.md §3)."""

    __slots__ = ("_codec", "_done", "_link", "_tag")

    def __init__(self, envelope: Envelope, link: HubLink, codec: Codec, tag: bytes) -> None:
        super().__init__(envelope)
        self._link = link
        self._codec = codec
        self._tag = tag
        self._done = False

    def _settle_wait(self) -> float:
        return self._link.opts.confirm_timeout   # a full connection may take a moment

    async def reply(self, answer: Envelope) -> None:
        """Send the answer.  An ``item`` or ``beat`` (a streamed call) goes as ITEM and
        settles nothing: ProtocolError if it cannot be encoded or is over
        ``max_message_size`` (the node then ends the stream with an error).  The final
        ``reply`` or ``error`` goes as REPLY and settles the delivery (credit comes back)."""
        if self._done:
            return
        body = answer_body(self._codec, self.envelope, answer, self._link.opts.max_message_size)
        if answer.kind in PARTIAL:
            await self._link.send([_H_ITEM, self._tag, body], wait=self._settle_wait())
            return
        self._done = True
        await self._link.send([_H_REPLY, self._tag, body], wait=self._settle_wait())

    async def ack(self) -> None:
        """Settle the delivery (no-op after :meth:`reply`)."""
        if self._done:
            return
        self._done = True
        await self._link.send([_H_ACK, self._tag], wait=self._settle_wait())

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """Give the delivery back (``requeue``), bury it (a task: the hub keeps it with
        ``error`` as a dead letter) or drop it (a cast or call)."""
        if self._done:
            return
        self._done = True
        env = self.envelope
        if requeue:
            frames = [_H_NACK, self._tag, b"1"]
        elif env.kind == "task":
            err = dict(error or wire_error("remote", "Error", "buried by its node"))
            frames = [_H_BURY, self._tag, json.dumps(err, default=str).encode()]
        else:
            if env.kind == "cast":
                log.info("zmq: dropped cast %s to %s.%s (rejected by its node)", env.id,
                         env.service, env.method)
            frames = [_H_NACK, self._tag, b"0"]
        await self._link.send(frames, wait=self._settle_wait())

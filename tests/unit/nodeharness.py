"""Driving a NodeRuntime directly: messages go in as an Incoming that records what the
runtime did with them (answers, ack, reject); control messages go in through
``handle_event``.  The runtime sits on a real memory:// bus (for its retries and events)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import vertebra
from vertebra.nodes.runtime import NodeRuntime
from vertebra.transports.base import Incoming
from vertebra.wire.envelope import STREAM_HEADER, Envelope
from vertebra.wire.errors import ProtocolError


class Recorder(Incoming):
    """An Incoming that records what the runtime does with it.

    ``max_item`` (characters of ``repr``): an ``item`` whose result is longer is refused
    with ProtocolError, as a transport refuses an oversized envelope."""

    def __init__(self, env: Envelope, max_item: int | None = None) -> None:
        super().__init__(env)
        self.answers: list[Envelope] = []
        self.acked = False
        self.rejected: tuple[bool, dict[str, Any] | None] | None = None
        self.max_item = max_item

    async def reply(self, answer: Envelope) -> None:
        if self.max_item is not None and answer.kind == "item" and len(repr(answer.result)) > self.max_item:
            raise ProtocolError(f"item of {len(repr(answer.result))} characters is too large")
        self.answers.append(answer)

    async def ack(self) -> None:
        self.acked = True

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        self.rejected = (requeue, error)

    @property
    def settled(self) -> bool:
        return self.acked or self.rejected is not None

    @property
    def final(self) -> Envelope | None:
        finals = [a for a in self.answers if a.kind in ("reply", "error")]
        assert len(finals) <= 1, finals
        return finals[0] if finals else None

    @property
    def items(self) -> list[Any]:
        got = [a for a in self.answers if a.kind == "item"]
        assert [a.seq for a in got] == list(range(len(got))), [a.seq for a in got]
        return [a.result for a in got]

    @property
    def beats(self) -> list[Envelope]:
        return [a for a in self.answers if a.kind == "beat"]


@contextlib.asynccontextmanager
async def runtime(node: vertebra.Node) -> AsyncIterator[NodeRuntime]:
    """A runtime for ``node`` on a fresh memory:// bus (not served: fed by hand)."""
    async with vertebra.connect_async(f"memory://unit-{uuid.uuid4().hex[:8]}") as bus:
        rt = node.__vertebra_runtime__(bus)
        try:
            yield rt
        finally:
            await rt.drain(10)


def message(service: str, method: str, *args: Any, kind: str = "call", timeout: float | None = 60.0,
            window: int | None = None, **fields: Any) -> Envelope:
    """A call (or cast/task) envelope; ``window`` asks for a stream."""
    env = Envelope(kind, service=service, method=method, args=list(args),
                   reply_to="caller" if kind == "call" else "",
                   deadline=time.time() + timeout if timeout is not None else None, **fields)
    if window is not None:
        env.headers[STREAM_HEADER] = str(window)
    return env


async def deliver(rt: NodeRuntime, env: Envelope, max_item: int | None = None) -> Recorder:
    """Hand ``env`` to the runtime as the transport would."""
    inc = Recorder(env, max_item)
    await rt.handle(inc)
    return inc


async def control(rt: NodeRuntime, payload: Any) -> None:
    """A control message for ``rt``'s service, as the bus delivers it."""
    await rt.handle_event(rt.control_topic, Envelope("event", topic=rt.control_topic, payload=payload))

"""One bus over several transports: ``vertebra.connect(url1, url2, ...)``.

Capability sheet
----------------
* Calls, casts and tasks go to the transport where discovery last saw the service (the
  route table is refreshed on a miss, and at most every ``ROUTE_TTL`` seconds); a call to
  a service no transport has is Unreachable; a cast or task to one is sent on the first
  transport, where it waits for a replica like any task.
* Events are published on every transport; subscriptions are made on every transport.
  Two multi-transport buses on the same pair of transports therefore see each event once
  per shared transport — publish from single-transport buses when that matters.
* Nodes served on the bus are served on every transport.
* Capabilities are the weakest of the members'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import ClassVar

from ..transports.base import AnswerCallback, Capabilities, EventHandler, Handler, Transport
from ..wire.codec import Codec
from ..wire.deadletter import DeadLetter
from ..wire.envelope import Envelope
from ..wire.errors import wire_error
from ..wire.info import ServiceInfo

__all__ = ["ROUTE_TTL", "MultiTransport"]

log = logging.getLogger("vertebra.multi")

ROUTE_TTL = 5.0


class MultiTransport(Transport):
    """Several transports behind one; see the module docstring."""

    scheme: ClassVar[str] = "multi"

    def __init__(self, members: list[Transport], codec: Codec) -> None:
        super().__init__(" + ".join(t.url for t in members), codec)
        if len(members) < 2:
            raise ValueError("a multi-transport bus needs at least two transports")
        self.members = members
        caps = [t.capabilities for t in members]
        self.capabilities = Capabilities(  # type: ignore[misc]  # per instance: it depends on the members
            durable_tasks=all(c.durable_tasks for c in caps),
            task_redelivery=all(c.task_redelivery for c in caps),
            fast_unreachable=all(c.fast_unreachable for c in caps),
            multi_process=any(c.multi_process for c in caps),
            max_message_size=min(c.max_message_size for c in caps),
            holds_delayed=all(c.holds_delayed for c in caps),   # else the outbox holds for all
            priorities=all(c.priorities for c in caps))
        self._routes: dict[str, Transport] = {}
        self._routed_at = 0.0
        self._on_answer: AnswerCallback | None = None

    @property
    def stats(self) -> dict[str, int]:
        """The members' counters, added up."""
        total: dict[str, int] = {}
        for t in self.members:
            for k, v in t.stats.items():
                total[k] = total.get(k, 0) + v
        return total

    @stats.setter
    def stats(self, value: dict[str, int]) -> None:
        pass  # the base class initialises it; ours is derived

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Connect every member; answers from all of them go to ``on_answer``."""
        self._on_answer = on_answer
        for t in self.members:
            await t.connect(on_answer)

    async def close(self) -> None:
        """Close every member."""
        for t in self.members:
            await t.close()

    async def _route(self, service: str) -> Transport | None:
        now = time.monotonic()
        if service not in self._routes or now - self._routed_at > ROUTE_TTL:
            found = await asyncio.gather(*(t.discover() for t in self.members), return_exceptions=True)
            routes: dict[str, Transport] = {}
            for t, services in zip(self.members, found, strict=True):
                if isinstance(services, BaseException):
                    log.warning("discovery on %s failed: %s", t.url, services)
                    continue
                for s in services:
                    routes.setdefault(s.name, t)
            self._routes, self._routed_at = routes, now
        return self._routes.get(service)

    async def send(self, env: Envelope) -> None:
        """Events everywhere; everything else where its service lives."""
        if env.kind == "event":
            sent = 0
            for t in self.members:
                try:
                    await t.send(env)
                    sent += 1
                except (ConnectionError, OSError) as exc:
                    log.warning("event %s not published on %s: %s", env.topic, t.url, exc)
            if not sent:
                raise ConnectionError("no transport took the event")
            return
        target = await self._route(env.service)
        if target is None:
            if env.kind == "call":
                assert self._on_answer is not None
                self._on_answer(env.fail(wire_error(
                    "unreachable", "Unreachable", f"no transport has a replica of {env.service!r}")))
                return
            target = self.members[0]
        await target.send(env)

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Serve on every member."""
        for t in self.members:
            await t.serve(info, handler, prefetch)

    async def unserve(self, service: str) -> None:
        """Stop serving on every member."""
        for t in self.members:
            await t.unserve(service)

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Subscribe on every member."""
        for t in self.members:
            await t.subscribe(pattern, handler)

    async def discover(self) -> list[ServiceInfo]:
        """Every member's services (each says which transport it is on)."""
        out: list[ServiceInfo] = []
        for t in self.members:
            out.extend(await t.discover())
        return out

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The dead letters of ``service`` on every member, member by member."""
        out: list[DeadLetter] = []
        for t in self.members:
            out.extend(await t.dead_letters(service))
        return out

    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Replay on every member (each sends its own dead letters back to its queue)."""
        return sum([await t.replay(service, ids) for t in self.members])

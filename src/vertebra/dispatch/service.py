"""What the Bus needs from something it serves (a Node, through vertebra.nodes).

``dispatch`` never imports ``nodes``: a servable object hands the Bus a
:class:`ServiceRuntime`, and the Bus wires it to the transport.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..transports.base import Incoming
from ..wire.envelope import Envelope
from ..wire.info import ServiceInfo

__all__ = ["Servable", "ServiceRuntime"]


class ServiceRuntime(Protocol):
    """A served service: its description, its subscriptions and its handlers."""

    info: ServiceInfo
    prefetch: int
    patterns: tuple[str, ...]

    async def handle(self, incoming: Incoming) -> None:
        """Take one call, cast or task; return at once (the work runs on its own)."""

    async def handle_event(self, pattern: str, env: Envelope) -> None:
        """Take one event that matched ``pattern``."""

    async def started(self) -> None:
        """Called once the service is listening and announced."""

    async def drain(self, timeout: float) -> int:
        """Take no new work; wait up to ``timeout`` for work in flight; return what is left."""

    def stats(self) -> dict[str, Any]:
        """This replica's statistics (the answer to the built-in stats call)."""


@runtime_checkable
class Servable(Protocol):
    """Anything the Bus can serve: it builds its runtime for one bus."""

    def __vertebra_runtime__(self, bus: Any) -> ServiceRuntime:
        """The runtime that serves this object on ``bus``."""

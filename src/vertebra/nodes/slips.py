"""A node's side of a routing slip (docs/PROTOCOL.md §6a): after a step, hand its result
to the next step or announce the workflow's end; after a failure, retry or report it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..dispatch.logfields import fields
from ..dispatch.slip import SLIP_HEADER, Slip
from ..wire.envelope import Envelope
from ..wire.errors import ProtocolError

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus

__all__ = ["forward_slip", "slip_failed"]

log = logging.getLogger("vertebra.node")


def forward_slip(bus: AsyncBus, env: Envelope, result: Any, service: str) -> None:
    """Hand ``result`` to the slip's next step, or announce the workflow's end."""
    try:
        slip = Slip.decode(env.headers[SLIP_HEADER])
    except ProtocolError as exc:
        log.error("%s: %s", service, exc, extra=fields(env))
        return
    bus.publish(slip.done, {"run": slip.run, "step": f"{env.service}.{env.method}",
                            "index": slip.index})
    if slip.steps:
        nxt = slip.steps[0]
        headers = {k: v for k, v in env.headers.items() if k != SLIP_HEADER}
        headers[SLIP_HEADER] = slip.rest().encode()
        bus.cast(nxt.service, nxt.method, [result, *nxt.args], dict(nxt.kwargs), kind="task",
                 headers=headers)
    else:
        bus.publish(slip.done, {"run": slip.run, "result": result})


def slip_failed(bus: AsyncBus, env: Envelope, error: dict[str, Any], retry: bool = True) -> None:
    """The step failed with ``error``: send it again while the slip has retries (and
    ``retry``), else announce the failure on the slip's topic."""
    try:
        slip = Slip.decode(env.headers[SLIP_HEADER])
    except ProtocolError:
        return
    if retry and slip.retries > 0:
        bus.cast(env.service, env.method, env.args, env.kwargs, kind="task",
                 headers={**env.headers, SLIP_HEADER: slip.retry().encode()})
        return
    bus.publish(slip.done, {"run": slip.run, "error": error, "step": f"{env.service}.{env.method}",
                            "index": slip.index})

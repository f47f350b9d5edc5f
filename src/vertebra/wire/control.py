"""Control messages from callers to the replicas of a service (docs/PROTOCOL.md §6d).

They travel as ordinary events on the topic ``_vertebra.control.<service>``, which every
replica of the service subscribes to, so every transport carries them without a route of
its own to one replica: ``{"op": "cancel", "id": ...}`` cancels a call, cast or task (a
running handler is cancelled; one not started yet never starts) and ``{"op": "credit",
"id": ..., "upto": n}`` lets the node of a streamed call send the items with ``seq < n``.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["CONTROL_PREFIX", "STREAM_BEAT", "STREAM_SILENCE", "cancel_payload",
           "control_topic", "credit_payload"]

CONTROL_PREFIX: Final = "_vertebra.control."

STREAM_BEAT: Final = 1.0
"""Seconds a node with a stream open lets pass without sending anything before a ``beat``."""

STREAM_SILENCE: Final = 5.0
"""Seconds of hearing nothing more of an open stream whose node was heard from (an item or
a beat) after which its consumer gives up (Unreachable): the node died or its route is gone."""


def control_topic(service: str) -> str:
    """The topic the replicas of ``service`` take control messages on."""
    return CONTROL_PREFIX + service


def cancel_payload(message_id: str) -> dict[str, Any]:
    """Cancel the call, cast or task with this id."""
    return {"op": "cancel", "id": message_id}


def credit_payload(call_id: str, upto: int) -> dict[str, Any]:
    """The stream of call ``call_id`` may send items with ``seq < upto``."""
    return {"op": "credit", "id": call_id, "upto": upto}

"""The zmq:// frame layout: building and checking multipart messages (docs/protocol/zmq.md).

Every message on the hub's ROUTER socket starts with a two-byte header frame,
``[VERSION, COMMAND]``; the frames after it depend on the command.  The encoded envelope,
when there is one, is always the *last* frame (of its group, for DEAD_LETTERS), and the
frames before it carry only what the hub needs to route it, so the hub never decodes an
envelope.  CALL, CAST, TASK and REPLAY may carry one more frame just before the envelope:
the envelope's ``priority``, one ASCII digit (:data:`OPTIONAL`, :func:`priority_of`);
without it the priority is 0, as from a sender older than the frame.

:func:`parse` checks a multipart message (without the ROUTER identity frame) and returns
``(command, args)``; anything else raises :class:`FrameError`.  It never raises anything
else, whatever the input (the fuzz test holds it to that).
"""

from __future__ import annotations

from typing import Final

from ...wire.envelope import MAX_PRIORITY

__all__ = [
    "ACK", "ANSWER", "BURY", "BYE", "CALL", "CAST", "CLIENT_COMMANDS", "DEAD", "DEAD_LETTERS",
    "DELIVER_KINDS", "DIRECT_ANSWERS", "DIRECT_CALLS", "DISCOVER", "EVENT_CONTROL", "FrameError",
    "GROUPS", "HEARTBEAT", "HELLO", "HUB_COMMANDS", "ITEM", "KIND_CODES", "NACK", "OPTIONAL",
    "PROTOCOL", "PUBOK", "QUEUED", "REDIRECT", "REPLAY", "REPLAYED", "REPLICAS", "REPLY", "RESET",
    "ROUTES", "SERVE", "SERVICES", "SYNC", "TASK", "UNREACHABLE", "UNSERVE", "VERSION", "WELCOME",
    "header", "parse", "priority_frame", "priority_of",
]

VERSION: Final = 1

# client / node -> hub
HELLO: Final = 0x01
HEARTBEAT: Final = 0x02
CALL: Final = 0x03
CAST: Final = 0x04
TASK: Final = 0x05
REPLY: Final = 0x06
ACK: Final = 0x07
NACK: Final = 0x08
SERVE: Final = 0x09
UNSERVE: Final = 0x0A
DISCOVER: Final = 0x0B
SYNC: Final = 0x0C
BYE: Final = 0x0D
BURY: Final = 0x0E
DEAD: Final = 0x0F
REPLAY: Final = 0x10
ITEM: Final = 0x11
ROUTES: Final = 0x12

# hub -> client / node (HEARTBEAT, CALL, CAST and TASK are reused in this direction)
WELCOME: Final = 0x21
ANSWER: Final = 0x24
UNREACHABLE: Final = 0x25
SERVICES: Final = 0x26
RESET: Final = 0x27
PROTOCOL: Final = 0x28
PUBOK: Final = 0x29
QUEUED: Final = 0x2A
DEAD_LETTERS: Final = 0x2B
REPLAYED: Final = 0x2C
REPLICAS: Final = 0x2D
REDIRECT: Final = 0x2E   # node -> caller, on the direct path only

EVENT_CONTROL: Final = b"\x00"
"""Event topic frames that start with this byte are hub control traffic, never events."""

KIND_CODES: Final[dict[str, int]] = {"call": CALL, "cast": CAST, "task": TASK}
DELIVER_KINDS: Final[dict[int, str]] = {CALL: "call", CAST: "cast", TASK: "task"}

# command -> number of frames after the header (client side -> hub)
CLIENT_COMMANDS: Final[dict[int, int]] = {
    HELLO: 1,        # json
    HEARTBEAT: 0,
    CALL: 3,         # service, message id, [priority,] envelope
    CAST: 3,
    TASK: 3,
    REPLY: 2,        # delivery tag, envelope (the final answer: settles the delivery)
    ACK: 1,          # delivery tag
    NACK: 2,         # delivery tag, b"1" requeue / b"0" give up / b"p" undecodable
    SERVE: 3,        # service, prefetch (ascii digits), json ServiceInfo
    UNSERVE: 1,      # service
    DISCOVER: 1,     # request id
    SYNC: 1,         # token
    BYE: 0,
    BURY: 2,         # delivery tag, json wire error object
    DEAD: 3,         # request id, service, cursor (ascii digits)
    REPLAY: 4,       # request id, service, message id of the dead letter, [priority,] envelope
    ITEM: 2,         # delivery tag, envelope (an item or beat of a streamed call: settles nothing)
    ROUTES: 2,       # request id, service
}

OPTIONAL: Final[dict[int, int]] = {CALL: 1, CAST: 1, TASK: 1, REPLAY: 1}
"""Client commands that may carry this many more frames (the priority frame, just before
the envelope)."""

# hub -> client / node
HUB_COMMANDS: Final[dict[int, int]] = {
    WELCOME: 1,      # json
    HEARTBEAT: 0,
    CALL: 3,         # service, delivery tag, envelope
    CAST: 3,
    TASK: 3,
    ANSWER: 1,       # envelope
    UNREACHABLE: 2,  # message id, reason
    SERVICES: 2,     # request id, json list
    RESET: 0,
    PROTOCOL: 2,     # message id (may be empty), reason
    PUBOK: 0,
    QUEUED: 1,       # message id of a cast or task the hub now holds (or has delivered)
    DEAD_LETTERS: 2,  # request id, json page header; then GROUPS[DEAD_LETTERS] frames per letter
    REPLAYED: 2,     # request id, b"1" queued again / b"0" no such dead letter
    REPLICAS: 2,     # request id, json list of the service's direct endpoints
}

# the direct path (docs/protocol/zmq.md §2b): caller DEALER -> a node's own ROUTER
DIRECT_CALLS: Final[dict[int, int]] = {
    CALL: 3,         # service, message id, [priority,] envelope: as to the hub
}
DIRECT_ANSWERS: Final[dict[int, int]] = {
    ANSWER: 1,       # envelope (reply, error, item, beat)
    REDIRECT: 1,     # message id: not served here (any more): send the call through the hub
}

GROUPS: Final[dict[int, int]] = {DEAD_LETTERS: 3}
"""Commands followed by any number of frame groups of this size, after their fixed frames
(DEAD_LETTERS: message id, json error object, envelope, per dead letter)."""

_HEADERS: Final[dict[int, bytes]] = {c: bytes((VERSION, c)) for c in
                                     set(CLIENT_COMMANDS) | set(HUB_COMMANDS) | {REDIRECT}}


class FrameError(ValueError):
    """A multipart message that does not follow the frame layout."""


def header(command: int) -> bytes:
    """The header frame for ``command`` (a shared constant: no allocation)."""
    return _HEADERS[command]


def parse(frames: list[bytes], table: dict[int, int]) -> tuple[int, list[bytes]]:
    """Check ``frames`` against ``table`` (CLIENT_COMMANDS, HUB_COMMANDS, DIRECT_CALLS or
    DIRECT_ANSWERS).

    Returns the command and the frames after the header.  Raises :class:`FrameError` for
    a missing or wrong-sized header, an unsupported version, an unknown command or a
    wrong frame count (for a command in :data:`GROUPS`: its fixed frames, then whole groups).
    """
    if not frames:
        raise FrameError("empty message")
    head = frames[0]
    if len(head) != 2:
        raise FrameError(f"header frame must be 2 bytes, got {len(head)}")
    if head[0] != VERSION:
        raise FrameError(f"unsupported protocol version {head[0]} (this side speaks {VERSION})")
    command = head[1]
    want = table.get(command)
    if want is None:
        raise FrameError(f"unknown command 0x{command:02x}")
    got = len(frames) - 1
    hub_side = table is HUB_COMMANDS or table is DIRECT_ANSWERS
    group = GROUPS.get(command) if hub_side else None
    extra = 0 if hub_side else OPTIONAL.get(command, 0)
    if group is not None:
        if got < want or (got - want) % group:
            raise FrameError(f"command 0x{command:02x} takes {want} frames and groups of "
                             f"{group}, got {got}")
    elif not want <= got <= want + extra:
        takes = f"{want} or {want + extra}" if extra else f"{want}"
        raise FrameError(f"command 0x{command:02x} takes {takes} frames, got {got}")
    return command, frames[1:]


_PRIORITY_FRAMES: Final = tuple(str(p).encode() for p in range(MAX_PRIORITY + 1))
_PRIORITIES: Final[dict[bytes, int]] = {f: p for p, f in enumerate(_PRIORITY_FRAMES)}


def priority_frame(priority: int) -> bytes:
    """The priority frame for ``priority`` (0..9): one ASCII digit; ValueError otherwise."""
    if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from 0 to {MAX_PRIORITY}, got {priority!r}")
    return _PRIORITY_FRAMES[priority]


def priority_of(frame: bytes) -> int:
    """The priority a priority frame carries; :class:`FrameError` unless it is exactly one
    ASCII digit."""
    p = _PRIORITIES.get(frame)
    if p is None:
        raise FrameError(f"a priority frame is one ASCII digit 0-9, got {frame[:20]!r}")
    return p

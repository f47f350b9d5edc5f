"""``basic.publish`` encoded in one piece, for the properties vertebra publishes with.

py-amqp builds a publish from an :class:`amqp.Message` (properties walked through a
generic serializer), packs its arguments with a generic ``dumps`` and writes the three
frames under a lock: about a fifth of the CPU of one call, each side (profiled).  The frames are
simple (AMQP 0-9-1 §4.2.3 and §4.2.6.1), so :func:`publish_frames` packs them directly
for the shortstr and octet properties — everything vertebra's calls, answers and task
publishes carry — and :func:`ack_frame` packs ``basic.ack``.  Anything else
(``application_headers``, a timestamp, a string longer than a shortstr) gets None, and
the caller goes through py-amqp instead.

The bytes are what py-amqp itself writes for the same publish (a test compares them).
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["ack_frame", "publish_frames"]

_FRAME_END = b"\xce"
_FRAME = struct.Struct(">BHI")            # frame type, channel, payload size
_METHOD = struct.Struct(">HHH")            # class 60, method 40 (basic.publish), reserved
_HEADER = struct.Struct(">HHQH")           # class 60, weight 0, body size, property flags
_PUBLISH = (60, 40, 0)
_ACK = struct.Struct(">BHIHHQB")         # method frame of basic.ack: tag, multiple bit

# basic's properties in their flag order (bit 15 first); "s" shortstr, "o" octet.  Those
# this module does not encode (table, timestamp) are None: a publish with one falls back.
_PROPERTIES: tuple[tuple[str, str | None], ...] = (
    ("content_type", "s"), ("content_encoding", "s"), ("application_headers", None),
    ("delivery_mode", "o"), ("priority", "o"), ("correlation_id", "s"), ("reply_to", "s"),
    ("expiration", "s"), ("message_id", "s"), ("timestamp", None), ("type", "s"),
    ("user_id", "s"), ("app_id", "s"), ("cluster_id", "s"))
_KNOWN = frozenset(name for name, _ in _PROPERTIES)


def _shortstr(value: str) -> bytes | None:
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > 255:
        return None
    return bytes((len(raw),)) + raw


def _properties(props: dict[str, Any]) -> tuple[int, bytes] | None:
    """The property flags and list of ``props``, or None when one is not for this module."""
    flags = 0
    parts: list[bytes] = []
    bit = 1 << 15
    for name, kind in _PROPERTIES:
        value = props.get(name)
        if value is not None:
            if kind == "s" and isinstance(value, str):
                piece = _shortstr(value)
                if piece is None:
                    return None
            elif (kind == "o" and isinstance(value, int) and not isinstance(value, bool)
                  and 0 <= value <= 255):
                piece = bytes((value,))
            else:
                return None
            flags |= bit
            parts.append(piece)
        bit >>= 1
    return flags, b"".join(parts)


def publish_frames(channel: int, exchange: str, key: str, mandatory: bool, body: bytes,
                   props: dict[str, Any], frame_max: int) -> bytes | None:
    """The method, header and body frames of ``basic.publish`` as one bytes object, or
    None when ``props`` hold something only py-amqp encodes (then publish through it)."""
    if not isinstance(body, bytes) or any(n not in _KNOWN for n in props):
        return None
    encoded = _properties(props)
    ex, rk = _shortstr(exchange), _shortstr(key)
    if encoded is None or ex is None or rk is None:
        return None
    flags, plist = encoded
    method = _METHOD.pack(*_PUBLISH) + ex + rk + (b"\x01" if mandatory else b"\x00")
    header = _HEADER.pack(60, 0, len(body), flags) + plist
    out = [_FRAME.pack(1, channel, len(method)), method, _FRAME_END,
           _FRAME.pack(2, channel, len(header)), header, _FRAME_END]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        out += (_FRAME.pack(3, channel, len(piece)), piece, _FRAME_END)
    return b"".join(out)


def ack_frame(channel: int, tag: int, multiple: bool = False) -> bytes:
    """The frame of ``basic.ack`` for delivery ``tag`` (py-amqp's bytes, in one pack)."""
    return _ACK.pack(1, channel, 13, 60, 80, tag, 1 if multiple else 0) + _FRAME_END

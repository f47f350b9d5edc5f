"""Codecs: JSON (the default) and msgpack (the fast one).

A decoder needs no prior agreement: a JSON envelope is an object and so starts with
``{`` (0x7B, after optional whitespace), a msgpack envelope is a map and so starts with a
byte in 0x80–0x8F, 0xDE or 0xDF.  :func:`decode` looks at the first byte.

JSON has no bytes type: a ``bytes`` value travels as ``{"$bytes": "<base64>"}``.  So that a
user's own map can never be mistaken for a tag, a map with exactly one key that starts
with ``$`` is wrapped as ``{"$map": {...}}``.  Nesting deeper than :data:`MAX_DEPTH`
is refused on both sides.  Nothing here can run code: there is no pickle.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from typing import Any, Final, Protocol

from .envelope import Envelope, from_wire, to_wire
from .errors import ProtocolError

__all__ = ["CODECS", "MAX_DEPTH", "Codec", "JsonCodec", "MsgpackCodec", "codec_of", "decode",
           "get_codec", "plain"]

MAX_DEPTH: Final = 64

_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
"""Exact types that are wire data as they are (checked first: most values are one)."""


class Codec(Protocol):
    """Turns envelopes into bytes and back."""

    name: str
    content_type: str

    def encode(self, env: Envelope) -> bytes:
        """Serialise ``env``; raises ProtocolError for values it cannot carry."""

    def decode(self, data: bytes) -> Envelope:
        """Parse and check ``data``; raises ProtocolError for anything malformed."""


def plain(value: Any, json_tags: bool = False, depth: int = 0) -> Any:
    """``value`` as plain wire data: dataclasses and pydantic models become maps, tuples
    lists; with ``json_tags``, bytes become ``{"$bytes": ...}`` and single-``$``-key maps are
    wrapped.  Raises ProtocolError for anything else, or for nesting past MAX_DEPTH."""
    if type(value) in _SCALARS or isinstance(value, (bool, int, float, str)):
        return value
    if depth >= MAX_DEPTH:
        raise ProtocolError(f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(value).decode("ascii")} if json_tags else bytes(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(f"map keys must be strings, not {type(k).__name__}")
            out[k] = v if type(v) in _SCALARS else plain(v, json_tags, depth + 1)
        if json_tags and len(out) == 1 and next(iter(out)).startswith("$"):
            return {"$map": out}
        return out
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _SCALARS else plain(v, json_tags, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
                     json_tags, depth)
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump):
        return plain(dump(mode="json"), json_tags, depth)
    raise ProtocolError(f"cannot send a value of type {type(value).__name__}")


def _untag(value: Any, depth: int = 0) -> Any:
    """Undo the JSON tags, top-down (so a ``$map`` protects what it wraps), checking depth."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"message nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) == 1:
            if "$bytes" in value:
                b = value["$bytes"]
                if not isinstance(b, str):
                    raise ProtocolError("$bytes must hold a base64 string")
                try:
                    return base64.b64decode(b, validate=True)
                except ValueError as exc:
                    raise ProtocolError(f"bad base64 in $bytes: {exc}") from None
            if "$map" in value and isinstance(value["$map"], dict):
                value = value["$map"]
        return {k: _untag(v, depth + 1) if isinstance(v, (dict, list)) else v
                for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v, depth + 1) if isinstance(v, (dict, list)) else v for v in value]
    return value


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"message nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for v in value.values():
            if isinstance(v, (dict, list)):
                _check_depth(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                _check_depth(v, depth + 1)


def _attach_id(exc: ProtocolError, obj: Any) -> None:
    """Say whose message ``exc`` refuses (its id and return address), when they can be read."""
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        exc.envelope_id = obj["id"]
        if isinstance(obj.get("reply_to"), str):
            exc.reply_to = obj["reply_to"]


def _checked(obj: Any) -> Envelope:
    """from_wire, with the message id attached to the error when it could be read."""
    try:
        return from_wire(obj)
    except ProtocolError as exc:
        _attach_id(exc, obj)
        raise


def _wire_with(env: Envelope, json_tags: bool) -> dict[str, Any]:
    """to_wire, with the user's values (args, kwargs, payload, result) made plain."""
    d = to_wire(env)
    if env.args:
        d["args"] = plain(env.args, json_tags, 1)
    if env.kwargs:
        d["kwargs"] = plain(env.kwargs, json_tags, 1)
    kind = env.kind
    if kind == "event":
        value = env.payload
        d["payload"] = value if type(value) in _SCALARS else plain(value, json_tags, 1)
    elif kind == "reply" or kind == "item":
        value = env.result
        d["result"] = value if type(value) in _SCALARS else plain(value, json_tags, 1)
    return d


_decoder = json.JSONDecoder()
_scan = _decoder.scan_once  # type: ignore[attr-defined]
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder the one above makes anew for every message, made once.  No circular check:
# what plain() returns is a fresh tree, depth-bounded (a cycle elsewhere, in a header or an
# error map, ends in RecursionError, which encode turns into a ProtocolError too).
_c_make = getattr(json.encoder, "c_make_encoder", None)
_c_encode = None if _c_make is None else _c_make(
    None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)


def _dumps(obj: Any) -> bytes:
    if _c_encode is not None:
        return "".join(_c_encode(obj, 0)).encode()
    return _encoder.encode(obj).encode()


class JsonCodec:
    """UTF-8 JSON, bytes tagged as ``{"$bytes": base64}``; the default codec."""

    name = "json"
    content_type = "application/json"

    def encode(self, env: Envelope) -> bytes:
        """Serialise ``env`` as compact UTF-8 JSON."""
        try:
            return _dumps(_wire_with(env, True))
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(str(exc)) from None

    def decode(self, data: bytes) -> Envelope:
        """Parse a JSON envelope."""
        try:
            text = data.decode("utf-8")
            if text[:1].isspace():
                text = text.lstrip()
            try:
                obj, end = _scan(text, 0)
            except StopIteration as err:     # what JSONDecoder.raw_decode says, without its frame
                raise json.JSONDecodeError("Expecting value", text, err.value) from None
            if end != len(text) and text[end:].strip():
                raise ValueError(f"extra data after the envelope at {end}")
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"not a JSON envelope: {exc}"[:300]) from None
        # Only a message holding '{"$' can carry tags (inside a JSON string the quote is
        # escaped), and only one with more than MAX_DEPTH brackets can nest too deep.
        if isinstance(obj, dict) and ((b"$" in data and b'{"$' in data)
                                      or len(data) - len(data.translate(None, b"[{")) > MAX_DEPTH):
            for key in ("args", "kwargs", "payload", "result"):
                if isinstance(obj.get(key), (dict, list)):
                    try:
                        obj[key] = _untag(obj[key], 1)
                    except ProtocolError as exc:
                        _attach_id(exc, obj)
                        raise
        return _checked(obj)


_CONTAINER_BYTES: Final = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"
"""Every msgpack map or array starts with one of these bytes (fixmap, fixarray, array
16/32, map 16/32): a message with at most MAX_DEPTH of them cannot nest too deep."""

_packers = threading.local()
_msgpack: Any = None
"""The msgpack module, imported on the first msgpack message: a JSON-only process does
not carry it."""


def _load_msgpack() -> Any:
    global _msgpack
    import msgpack
    _msgpack = msgpack
    return msgpack


def _packer() -> Any:
    """This thread's msgpack Packer (one made per message costs as much as the packing)."""
    try:
        return _packers.packer
    except AttributeError:
        packer = _packers.packer = (_msgpack or _load_msgpack()).Packer(use_bin_type=True)
        return packer


class MsgpackCodec:
    """msgpack, with bytes as msgpack ``bin``; the fast codec."""

    name = "msgpack"
    content_type = "application/msgpack"

    def encode(self, env: Envelope) -> bytes:
        """Serialise ``env`` as msgpack."""
        try:
            out: bytes = _packer().pack(_wire_with(env, False))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(str(exc)) from None
        return out

    def decode(self, data: bytes) -> Envelope:
        """Parse a msgpack envelope."""
        mp = _msgpack or _load_msgpack()
        try:
            obj = mp.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, TypeError, RecursionError, mp.UnpackException) as exc:
            raise ProtocolError(f"not a msgpack envelope: {exc}"[:300]) from None
        if len(data) - len(data.translate(None, _CONTAINER_BYTES)) > MAX_DEPTH:
            try:
                _check_depth(obj)
            except ProtocolError as exc:     # too deep: still say whose call it was, if we can
                _attach_id(exc, obj)
                raise
        return _checked(obj)


_JSON: Final = JsonCodec()
_MSGPACK: Final = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {"json": _JSON, "msgpack": _MSGPACK}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` ("json" or "msgpack")."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None


def codec_of(data: bytes) -> Codec:
    """The codec a message is in, by its first byte after any JSON whitespace (JSON when
    it is neither): the codec its answer is written in (docs/PROTOCOL.md §3)."""
    first = bytes(data[:64]).lstrip(b" \t\r\n")[:1]
    is_msgpack = bool(first) and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF))
    return CODECS["msgpack" if is_msgpack else "json"]


def decode(data: bytes) -> Envelope:
    """Decode an envelope in either codec, telling them apart by the first byte."""
    if not data:
        raise ProtocolError("empty message")
    first = data[0]
    if first in b" \t\r\n":
        view = bytes(data[:64]).lstrip()
        if not view:
            raise ProtocolError("empty message")
        first = view[0]
    if first == 0x7B:
        return _JSON.decode(data)
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return _MSGPACK.decode(data)
    raise ProtocolError(f"not an envelope: first byte 0x{first:02x}")

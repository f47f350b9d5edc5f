"""The envelope: the one message shape every transport carries (docs/PROTOCOL.md §2).

An :class:`Envelope` is a plain record.  :func:`to_wire` turns it into the dict that a
codec serialises, leaving out fields that are empty; :func:`from_wire` checks a decoded
dict field by field and raises :class:`~vertebra.dispatch.errors.ProtocolError` for
anything that is not a well-formed envelope of a supported version.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .errors import ProtocolError

__all__ = [
    "KINDS",
    "PROTOCOL_VERSION",
    "Envelope",
    "Kind",
    "from_wire",
    "new_id",
    "to_wire",
]

PROTOCOL_VERSION: Final = 1
Kind = Literal["call", "cast", "task", "event", "reply", "error"]
KINDS: Final[frozenset[str]] = frozenset({"call", "cast", "task", "event", "reply", "error"})
_REQUESTS: Final = frozenset({"call", "cast", "task"})
_ANSWERS: Final = frozenset({"reply", "error"})

_counter = 0
_prefix = os.urandom(8).hex()


def new_id() -> str:
    """A message id unique across processes: 16 random hex digits and a counter."""
    global _counter
    _counter += 1
    return f"{_prefix}{_counter:x}"


@dataclass(slots=True)
class Envelope:
    """One message.  Field meanings are in docs/PROTOCOL.md §2."""

    kind: str
    id: str = field(default_factory=new_id)
    service: str = ""
    method: str = ""
    topic: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    payload: Any = None
    result: Any = None
    error: dict[str, Any] | None = None
    re: str = ""
    reply_to: str = ""
    deadline: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    v: int = PROTOCOL_VERSION

    def expired(self, now: float | None = None) -> bool:
        """Whether the deadline (if any) has passed."""
        return self.deadline is not None and (time.time() if now is None else now) >= self.deadline

    def answer(self, result: Any) -> Envelope:
        """The ``reply`` envelope that answers this call with ``result``."""
        return Envelope("reply", re=self.id, result=result, reply_to=self.reply_to,
                        headers=_answer_headers(self.headers))

    def fail(self, error: dict[str, Any]) -> Envelope:
        """The ``error`` envelope that answers this call with a wire error object."""
        return Envelope("error", re=self.id, error=error, reply_to=self.reply_to,
                        headers=_answer_headers(self.headers))


def _answer_headers(headers: dict[str, str]) -> dict[str, str]:
    trace = headers.get("traceparent")
    return {"traceparent": trace} if trace else {}


def to_wire(env: Envelope) -> dict[str, Any]:
    """The wire dict of ``env``: only the fields that carry something."""
    d: dict[str, Any] = {"v": env.v, "id": env.id, "kind": env.kind}
    if env.service:
        d["service"] = env.service
    if env.method:
        d["method"] = env.method
    if env.topic:
        d["topic"] = env.topic
    if env.args:
        d["args"] = env.args
    if env.kwargs:
        d["kwargs"] = env.kwargs
    if env.kind == "event":
        d["payload"] = env.payload
    elif env.kind == "reply":
        d["result"] = env.result
    if env.error is not None:
        d["error"] = env.error
    if env.re:
        d["re"] = env.re
    if env.reply_to:
        d["reply_to"] = env.reply_to
    if env.deadline is not None:
        d["deadline"] = env.deadline
    if env.headers:
        d["headers"] = env.headers
    return d


def _str(d: dict[str, Any], key: str, required: bool = False) -> str:
    value = d.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(f"envelope field {key!r} must be a string")
    if required and not value:
        raise ProtocolError(f"envelope field {key!r} is required")
    return value


def from_wire(d: Any) -> Envelope:
    """Check a decoded wire dict and build the :class:`Envelope` it describes."""
    if not isinstance(d, dict):
        raise ProtocolError("an envelope is a map")
    v = d.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {v!r} (this side speaks {PROTOCOL_VERSION})")
    kind = _str(d, "kind", True)
    if kind not in KINDS:
        raise ProtocolError(f"unknown envelope kind {kind!r}")
    env = Envelope(kind, id=_str(d, "id", True), re=_str(d, "re"), reply_to=_str(d, "reply_to"))
    if kind in _REQUESTS:
        env.service = _str(d, "service", True)
        env.method = _str(d, "method", True)
        args = d.get("args", [])
        kwargs = d.get("kwargs", {})
        if not isinstance(args, list):
            raise ProtocolError("envelope field 'args' must be a list")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ProtocolError("envelope field 'kwargs' must be a map with string keys")
        env.args, env.kwargs = args, kwargs
    elif kind == "event":
        env.topic = _str(d, "topic", True)
        env.payload = d.get("payload")
    else:
        if not env.re:
            raise ProtocolError(f"a {kind} envelope needs 're', the id it answers")
        if kind == "reply":
            env.result = d.get("result")
        else:
            error = d.get("error")
            if not isinstance(error, dict):
                raise ProtocolError("an error envelope needs an 'error' map")
            env.error = error
    deadline = d.get("deadline")
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise ProtocolError("envelope field 'deadline' must be a number")
        env.deadline = float(deadline)
    headers = d.get("headers", {})
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in headers.items()):
        raise ProtocolError("envelope field 'headers' must be a map of strings")
    env.headers = headers
    return env

"""The envelope: the one message shape every transport carries (docs/PROTOCOL.md §2).

An :class:`Envelope` is a plain record.  :func:`to_wire` turns it into the dict that a
codec serialises, leaving out fields that are empty; :func:`from_wire` checks a decoded
dict field by field and raises :class:`~vertebra.wire.errors.ProtocolError` for
anything that is not a well-formed envelope of a supported version.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .errors import ProtocolError

__all__ = [
    "ANSWERS",
    "KINDS",
    "MAX_PRIORITY",
    "PROTOCOL_VERSION",
    "STREAM_HEADER",
    "Envelope",
    "Kind",
    "from_wire",
    "new_id",
    "reseed_ids",
    "to_wire",
]

PROTOCOL_VERSION: Final = 1
Kind = Literal["call", "cast", "task", "event", "reply", "error", "item", "beat"]
KINDS: Final[frozenset[str]] = frozenset(
    {"call", "cast", "task", "event", "reply", "error", "item", "beat"})
_REQUESTS: Final = frozenset({"call", "cast", "task"})
ANSWERS: Final[frozenset[str]] = frozenset({"reply", "error", "item", "beat"})
"""Kinds routed back to a caller (to its ``reply_to``); ``item`` and ``beat`` come before
the one final ``reply`` or ``error`` of a streamed call (docs/PROTOCOL.md §6d)."""
STREAM_HEADER: Final = "stream"
"""On a call: the caller wants the result streamed; the value is its window, in items."""
MAX_PRIORITY: Final = 9

_counter = 0
_prefix = os.urandom(8).hex()


def new_id() -> str:
    """A message id unique across processes: 16 random hex digits and a counter."""
    global _counter
    _counter += 1
    return f"{_prefix}{_counter:x}"


def reseed_ids() -> None:
    """Draw a new id prefix; a forked child must (see :mod:`vertebra.dispatch.forks`)."""
    global _counter, _prefix
    _counter, _prefix = 0, os.urandom(8).hex()


os.register_at_fork(after_in_child=reseed_ids)


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
    seq: int | None = None
    not_before: float | None = None
    priority: int | None = None
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

    def item(self, seq: int, result: Any) -> Envelope:
        """The ``item`` envelope carrying item ``seq`` (0-based) of this streamed call."""
        return Envelope("item", re=self.id, seq=seq, result=result, reply_to=self.reply_to)

    def beat(self, sent: int) -> Envelope:
        """The ``beat`` envelope of this streamed call: alive, ``sent`` items sent so far."""
        return Envelope("beat", re=self.id, seq=sent, reply_to=self.reply_to)


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
    elif env.kind == "reply" or env.kind == "item":
        d["result"] = env.result
    if env.seq is not None:
        d["seq"] = env.seq
    if env.not_before is not None:
        d["not_before"] = env.not_before
    if env.priority is not None:
        d["priority"] = env.priority
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


_MISSING: Final = object()


def _bad(key: str, what: str) -> ProtocolError:
    return ProtocolError(f"envelope field {key!r} {what}")


def from_wire(d: Any) -> Envelope:
    """Check a decoded wire dict and build the :class:`Envelope` it describes."""
    if not isinstance(d, dict):
        raise ProtocolError("an envelope is a map")
    get = d.get
    v = get("v")
    if v != PROTOCOL_VERSION or v is True:
        raise ProtocolError(f"unsupported protocol version {v!r} (this side speaks {PROTOCOL_VERSION})")
    kind, mid, re_, reply_to = get("kind"), get("id"), get("re", ""), get("reply_to", "")
    if kind not in KINDS:
        raise ProtocolError(f"unknown envelope kind {kind!r}")
    if not isinstance(mid, str) or not mid:
        raise _bad("id", "must be a non-empty string")
    if not isinstance(re_, str) or not isinstance(reply_to, str):
        raise _bad("re" if not isinstance(re_, str) else "reply_to", "must be a string")
    # Every field is checked, then the envelope is built once (no default made and replaced).
    service: Any = ""
    method: Any = ""
    topic: Any = ""
    args: Any = None
    kwargs: Any = None
    payload = result = error = seq = None
    if kind in _REQUESTS:
        service, method = get("service"), get("method")
        if not isinstance(service, str) or not service:
            raise _bad("service", "must be a non-empty string")
        if not isinstance(method, str) or not method:
            raise _bad("method", "must be a non-empty string")
        args, kwargs = get("args", _MISSING), get("kwargs", _MISSING)
        if args is _MISSING:
            args = []
        elif type(args) is not list:
            raise _bad("args", "must be a list")
        if kwargs is _MISSING:
            kwargs = {}
        elif type(kwargs) is not dict or (kwargs and not all(type(k) is str for k in kwargs)):
            raise _bad("kwargs", "must be a map with string keys")
    elif kind == "event":
        topic = get("topic")
        if not isinstance(topic, str) or not topic:
            raise _bad("topic", "must be a non-empty string")
        payload = get("payload")
    else:
        if not re_:
            raise ProtocolError(f"a {kind} envelope needs 're', the id it answers")
        if kind == "reply" or kind == "item":
            result = get("result")
        seq = get("seq")
        if (seq is not None or kind == "item" or kind == "beat") and (type(seq) is not int or seq < 0):
            raise _bad("seq", f"must be a non-negative integer on {kind!r}")
        if kind == "error":
            error = get("error")
            if type(error) is not dict:
                raise ProtocolError("an error envelope needs an 'error' map")
    deadline = get("deadline")
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise _bad("deadline", "must be a number")
        deadline = float(deadline)
    not_before = get("not_before")
    if not_before is not None:
        if isinstance(not_before, bool) or not isinstance(not_before, (int, float)):
            raise _bad("not_before", "must be a number")
        not_before = float(not_before)
    priority = get("priority")
    if priority is not None and (type(priority) is not int or not 0 <= priority <= MAX_PRIORITY):
        raise _bad("priority", f"must be an integer from 0 to {MAX_PRIORITY}")
    headers = get("headers")
    if headers is None:
        headers = {}
    elif type(headers) is not dict or not all(
            type(k) is str and type(x) is str for k, x in headers.items()):
        raise _bad("headers", "must be a map of strings")
    return Envelope(kind, mid, service, method, topic, [] if args is None else args,
                    {} if kwargs is None else kwargs, payload, result, error, re_, reply_to,
                    deadline, headers, seq, not_before, priority)

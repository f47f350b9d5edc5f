"""Dead letters and the attempt count: the one shape every transport keeps them in.

A task carries its attempt number in the ``attempt`` header (absent means 1; see
docs/PROTOCOL.md §2).  The node that runs it decides, for every transport alike, whether a
failure is tried again (the task is re-sent with ``attempt`` + 1) or buried: then the
transport keeps the envelope with the error that killed it, in the place where it keeps
tasks (the memory broker, the zmq hub, a RabbitMQ dead queue, a PEP node on the XMPP server).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

from .envelope import Envelope

__all__ = ["ATTEMPT_HEADER", "DEAD_ERROR_HEADER", "DeadLetter", "attempt_of", "with_attempt"]

ATTEMPT_HEADER: Final = "attempt"
"""The header that carries a task's 1-based attempt number (absent: the first attempt)."""

DEAD_ERROR_HEADER: Final = "dead-error"
"""The header in which a buried envelope keeps its last error, as JSON text of the wire
error object; it is removed when the dead letter is replayed."""


def attempt_of(env: Envelope) -> int:
    """The attempt number of ``env`` (1 when the header is absent or not a positive integer)."""
    raw = env.headers.get(ATTEMPT_HEADER, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def with_attempt(env: Envelope, attempt: int) -> Envelope:
    """A copy of ``env`` (same id) that says it is attempt number ``attempt``."""
    headers = {k: v for k, v in env.headers.items() if k not in (ATTEMPT_HEADER, DEAD_ERROR_HEADER)}
    if attempt > 1:
        headers[ATTEMPT_HEADER] = str(attempt)
    return dataclasses.replace(env, headers=headers)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that exhausted its attempts: what it was, how it died, how often it ran.

    ``error`` is the wire error object of its last failure (at least ``type`` and
    ``message``); ``envelope`` is the task as it was last delivered, which
    :meth:`replay_envelope` turns back into a first attempt.
    """

    id: str
    service: str
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    error: dict[str, Any]
    attempts: int
    envelope: Envelope = field(repr=False, compare=False)

    @classmethod
    def of(cls, env: Envelope, error: dict[str, Any] | None) -> DeadLetter:
        """The dead letter of ``env``, buried because of ``error``."""
        err = dict(error or {})
        err.setdefault("type", "Error")
        err.setdefault("message", "")
        return cls(env.id, env.service, env.method, list(env.args), dict(env.kwargs), err,
                   attempt_of(env), env)

    def replay_envelope(self) -> Envelope:
        """The task to send again: the same id and arguments, attempt 1, kind ``task``."""
        return dataclasses.replace(with_attempt(self.envelope, 1), kind="task", deadline=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (what ``vertebra dead-letters --json`` prints)."""
        return {"id": self.id, "service": self.service, "method": self.method, "args": self.args,
                "kwargs": self.kwargs, "error": self.error, "attempts": self.attempts}

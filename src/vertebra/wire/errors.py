"""The error tree, drawn once.

::

    VertebraError                      base of everything vertebra raises
    ├── RemoteError                    the remote handler raised; .type .message .remote_traceback
    ├── CallTimeout (+ TimeoutError)   no reply before the call's deadline
    ├── Unreachable (+ ConnectionError) no such service or method, or no route to it
    └── ProtocolError (+ ValueError)   a malformed or unsupported message

Each error also subclasses the builtin it resembles, so ``except TimeoutError`` keeps
working for code that does not know vertebra.  Errors travel on the wire as data (the
``error`` object of docs/PROTOCOL.md); only these classes are ever rebuilt from it, never a
type named by the remote side.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CallTimeout",
    "ProtocolError",
    "RemoteError",
    "Unreachable",
    "VertebraError",
    "error_from_wire",
    "error_to_wire",
    "wire_error",
]


class VertebraError(Exception):
    """Base class of every error vertebra raises."""


class RemoteError(VertebraError):
    """The remote handler raised an exception.

    ``type`` is the name of the remote exception's class, ``message`` its text,
    ``remote_traceback`` the formatted traceback from the node (empty when the node does
    not send tracebacks) and ``node`` the replica that ran the handler (when it said).
    """

    def __init__(self, type: str, message: str, remote_traceback: str = "", node: str = "") -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.remote_traceback = remote_traceback
        self.node = node


class CallTimeout(VertebraError, TimeoutError):
    """No reply arrived before the call's deadline."""


class Unreachable(VertebraError, ConnectionError):
    """No such service or method, or no route to it right now."""


class ProtocolError(VertebraError, ValueError):
    """A message was malformed, of an unsupported version, or too large.

    When the bad message was readable enough, ``envelope_id`` (and ``reply_to``) say which
    message it was, so that a transport can still answer its sender.
    """

    envelope_id: str = ""
    reply_to: str = ""


# The "code" of a wire error object says which class the caller raises.
_CODES: dict[str, type[VertebraError]] = {
    "timeout": CallTimeout,
    "unreachable": Unreachable,
    "protocol": ProtocolError,
}


def wire_error(code: str, type_: str, message: str, traceback: str = "") -> dict[str, Any]:
    """The wire error object ``{code, type, message, traceback}`` (docs/PROTOCOL.md §5)."""
    return {"code": code, "type": type_, "message": message, "traceback": traceback}


def error_to_wire(exc: BaseException, traceback_text: str = "") -> dict[str, Any]:
    """Describe ``exc`` as the wire error object ``{code, type, message, traceback}``."""
    if isinstance(exc, RemoteError):
        return wire_error("remote", exc.type, exc.message, exc.remote_traceback)
    code = "remote"
    for name, cls in _CODES.items():
        if isinstance(exc, cls):
            code = name
    return wire_error(code, type(exc).__name__, str(exc), traceback_text)


def error_from_wire(obj: Any) -> VertebraError:
    """Rebuild the exception a caller raises from a wire error object.

    Anything that is not a well-formed error object becomes a :class:`ProtocolError`.
    """
    if not isinstance(obj, dict):
        return ProtocolError(f"malformed error object: {obj!r:.200}")
    code = obj.get("code", "remote")
    etype = str(obj.get("type", "Exception"))
    message = str(obj.get("message", ""))
    cls = _CODES.get(str(code))
    if cls is not None:
        return cls(message)
    return RemoteError(etype, message, str(obj.get("traceback", "") or ""), str(obj.get("node", "") or ""))

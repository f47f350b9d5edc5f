"""Service descriptions: what ``bus.nodes()`` returns and what nodes announce.

Both are plain data with a wire form (``to_dict``/``from_dict``, docs/PROTOCOL.md §6b).
Keys added since the first version (``params_schema``, ``result_schema``) are optional:
an older peer ignores them, and a description from an older peer parses with them None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MethodInfo", "ServiceInfo"]


def _schema(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """One entry point of a service: ``kind`` is "rpc", "task", "event" or "schedule".

    ``params_schema`` is the JSON Schema (draft-07) of what a sender puts in the envelope:
    for "rpc" and "task" an object ``{"args": [...], "kwargs": {...}}``; for "event" the
    event's ``payload``.  ``result_schema`` is that of an "rpc" reply's ``result``.  Both
    are None when the node did not say (an older or a non-Python node); see
    :mod:`vertebra.wire.schema` for how type hints map to them.
    """

    name: str
    kind: str
    signature: str = ""
    doc: str = ""
    pattern: str = ""  # the topic pattern of an "event" entry point
    params_schema: dict[str, Any] | None = field(default=None, hash=False)
    result_schema: dict[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The wire form; the schemas only when known."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "signature": self.signature,
                             "doc": self.doc, "pattern": self.pattern}
        if self.params_schema is not None:
            d["params_schema"] = self.params_schema
        if self.result_schema is not None:
            d["result_schema"] = self.result_schema
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodInfo:
        """Build from the wire form (unknown keys are ignored)."""
        return cls(str(d.get("name", "")), str(d.get("kind", "rpc")), str(d.get("signature", "")),
                   str(d.get("doc", "")), str(d.get("pattern", "")),
                   _schema(d.get("params_schema")), _schema(d.get("result_schema")))


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A live service: its name, entry points, how many replicas answer, and where."""

    name: str
    methods: tuple[MethodInfo, ...] = ()
    doc: str = ""
    replicas: int = 1
    transport: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def method(self, name: str) -> MethodInfo | None:
        """The entry point called ``name``, if the service has one."""
        return next((m for m in self.methods if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (plain JSON types)."""
        d = asdict(self)
        d["methods"] = [m.to_dict() for m in self.methods]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceInfo:
        """Build from the wire form."""
        methods = tuple(MethodInfo.from_dict(m) for m in d.get("methods", ()) if isinstance(m, dict))
        extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
        return cls(str(d.get("name", "")), methods, str(d.get("doc", "")),
                   int(d.get("replicas", 1) or 1), str(d.get("transport", "")), extra or {})

"""Service descriptions: what ``bus.nodes()`` returns and what nodes announce."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MethodInfo", "ServiceInfo"]


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """One entry point of a service: ``kind`` is "rpc", "task" or "event"."""

    name: str
    kind: str
    signature: str = ""
    doc: str = ""
    pattern: str = ""  # the topic pattern of an "event" entry point

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodInfo:
        """Build from the wire form (unknown keys are ignored)."""
        return cls(str(d.get("name", "")), str(d.get("kind", "rpc")), str(d.get("signature", "")),
                   str(d.get("doc", "")), str(d.get("pattern", "")))


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
        d["methods"] = [asdict(m) for m in self.methods]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceInfo:
        """Build from the wire form."""
        methods = tuple(MethodInfo.from_dict(m) for m in d.get("methods", ()) if isinstance(m, dict))
        extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
        return cls(str(d.get("name", "")), methods, str(d.get("doc", "")),
                   int(d.get("replicas", 1) or 1), str(d.get("transport", "")), extra or {})

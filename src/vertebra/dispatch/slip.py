"""Routing slips: a workflow that needs no coordinator (docs/PROTOCOL.md §6).

A chain of steps sent choreographed carries, in the header ``vertebra-slip``, the JSON of

    {"run": RUN_ID, "done": TOPIC, "steps": [{"service": S, "method": M,
      "args": [...], "kwargs": {...}, "retries": N}, ...], "index": I, "retries": R}

— the steps still to run after the one being delivered, ``index``, the position of the
delivered one, and ``retries``, the attempts it has left after this one. A node that
finishes the delivered step publishes TOPIC ``{"run": RUN_ID, "step": "S.M", "index": I}``
(progress) and sends its result to the first remaining step (as a ``task``, the result
prepended to that step's arguments, the slip shortened by one); after the last step it
publishes TOPIC ``{"run": RUN_ID, "result": R}``. When the delivered step fails it is sent
again with ``retries`` one less; when none are left the node publishes TOPIC
``{"run": RUN_ID, "error": ERROR, "step": "S.M", "index": I}``. Step arguments are JSON
with the tags of the JSON codec (bytes as ``{"$bytes": ...}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..wire.codec import plain
from ..wire.errors import ProtocolError

__all__ = ["SLIP_HEADER", "Slip", "SlipStep"]

SLIP_HEADER = "vertebra-slip"


@dataclass(frozen=True, slots=True)
class SlipStep:
    """One step still to run."""

    service: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Slip:
    """The rest of a choreographed workflow, as carried in a message's headers."""

    run: str
    done: str
    steps: tuple[SlipStep, ...]
    index: int = 0
    retries: int = 0

    def encode(self) -> str:
        """The header value."""
        steps = [{"service": s.service, "method": s.method, "args": list(s.args),
                  "kwargs": dict(s.kwargs), "retries": s.retries} for s in self.steps]
        return json.dumps(plain({"run": self.run, "done": self.done, "steps": steps, "index": self.index,
                                 "retries": self.retries}, json_tags=True), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Slip:
        """Parse a header value; ProtocolError when it is not a slip."""
        from ..wire.codec import _untag  # the JSON codec's tag rules, applied to the header
        try:
            d = _untag(json.loads(text))
            steps = tuple(SlipStep(str(x["service"]), str(x["method"]), tuple(x.get("args", ())),
                                   tuple(sorted(dict(x.get("kwargs", {})).items())), int(x.get("retries", 0)))
                          for x in d["steps"])
            return cls(str(d["run"]), str(d["done"]), steps, int(d.get("index", 0)),
                       int(d.get("retries", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed routing slip: {exc}") from None

    def rest(self) -> Slip:
        """The slip that travels with the next step."""
        return Slip(self.run, self.done, self.steps[1:], self.index + 1, self.steps[0].retries)

    def retry(self) -> Slip:
        """The slip of the same step sent again, one attempt fewer left."""
        return Slip(self.run, self.done, self.steps, self.index, self.retries - 1)

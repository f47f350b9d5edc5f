"""A workflow as JSON text, and back: what a journal keeps so that a workflow can be
rebuilt by a process that never saw the code that built it.

Each shape is one JSON object::

    {"step": "service.method", "args": [...], "kwargs": {...}, "retries": 0,
     "timeout": null, "compensate": <a step or null>}
    {"chain": [<workflow>, ...]}
    {"group": [<workflow>, ...]}
    {"fan_out": <workflow>, "limit": 0}

Arguments and results are JSON with the wire's tags (``{"$bytes": base64}`` for bytes; see
:mod:`vertebra.wire.codec`); dataclasses and pydantic models become maps, as on the wire.

Step paths name a step's place in a run: the indexes from the top-level sequence down,
dot-separated (a workflow that is not a chain is a sequence of one). In
``a | group(b, c | d) | fan_out(e)``, ``a`` is ``0``, ``b`` is ``1.0``, ``c`` is ``1.1.0``,
``d`` is ``1.1.1`` and ``e`` run on the third element of its input is ``2.2``.
"""

from __future__ import annotations

import json
from typing import Any

from ..wire.codec import _untag, plain  # the JSON codec's tag rules, for stored values
from ..wire.errors import ProtocolError
from .canvas import Chain, FanOut, Group, Step, Workflow

__all__ = ["dump_value", "dump_workflow", "load_value", "load_workflow", "root_path", "step_at", "subpath"]


def dump_value(value: Any) -> str:
    """``value`` as JSON text with the wire's tags (bytes survive); ProtocolError if it
    cannot travel on the wire either."""
    return json.dumps(plain(value, json_tags=True), separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, sort_keys=True)


def load_value(text: str) -> Any:
    """The value :func:`dump_value` wrote."""
    return _untag(json.loads(text))


def _shape(flow: Workflow) -> dict[str, Any]:
    if isinstance(flow, Step):
        return {"step": flow.name, "args": list(flow.args), "kwargs": dict(flow.kwargs),
                "retries": flow.retries, "timeout": flow.timeout,
                "compensate": _shape(flow.compensate) if flow.compensate else None}
    if isinstance(flow, Chain):
        return {"chain": [_shape(p) for p in flow.parts]}
    if isinstance(flow, Group):
        return {"group": [_shape(b) for b in flow.branches]}
    if isinstance(flow, FanOut):
        return {"fan_out": _shape(flow.body), "limit": flow.limit}
    raise TypeError(f"not a workflow: {flow!r}")


def dump_workflow(flow: Workflow) -> str:
    """``flow`` as JSON text; the same workflow always gives the same text."""
    return dump_value(_shape(flow))


def _build(d: Any) -> Workflow:
    if not isinstance(d, dict):
        raise ProtocolError(f"a workflow is a JSON object, not {d!r:.80}")
    if "step" in d:
        service, sep, method = str(d["step"]).rpartition(".")
        args, kwargs = d.get("args", []), d.get("kwargs", {})
        if not sep or not service or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ProtocolError(f"malformed step: {d!r:.200}")
        comp = d.get("compensate")
        compensate = _build(comp) if comp is not None else None
        if compensate is not None and not isinstance(compensate, Step):
            raise ProtocolError("a compensation is a single step")
        timeout, retries = d.get("timeout"), d.get("retries", 0)
        if not isinstance(retries, int) or not (timeout is None or isinstance(timeout, (int, float))):
            raise ProtocolError(f"malformed step policy: {d!r:.200}")
        return Step(service, method, tuple(args), tuple(sorted(kwargs.items())), retries, timeout, compensate)
    if "chain" in d and isinstance(d["chain"], list) and d["chain"]:
        return Chain(tuple(_build(p) for p in d["chain"]))
    if "group" in d and isinstance(d["group"], list) and d["group"]:
        return Group(tuple(_build(b) for b in d["group"]))
    if "fan_out" in d and isinstance(d.get("limit", 0), int):
        return FanOut(_build(d["fan_out"]), d.get("limit", 0))
    raise ProtocolError(f"not a workflow: {d!r:.200}")


def load_workflow(text: str) -> Workflow:
    """The workflow :func:`dump_workflow` wrote; ProtocolError if the text is not one."""
    try:
        return _build(load_value(text))
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"not a stored workflow: {exc}") from None


def root_path(flow: Workflow) -> str:
    """The path prefix of the top level: a chain's parts are ``0``, ``1``, ...; any other
    workflow is itself ``0``."""
    return "" if isinstance(flow, Chain) else "0"


def subpath(path: str, index: int) -> str:
    """The path of part ``index`` under ``path``."""
    return f"{path}.{index}" if path else str(index)


def step_at(flow: Workflow, path: str) -> Step:
    """The step at ``path`` (a fan-out's index picks an element, not a part of its body);
    KeyError if the path leads nowhere."""
    node: Workflow = flow if isinstance(flow, Chain) else Chain((flow,))
    try:
        for index in (int(i) for i in path.split(".")):
            if isinstance(node, Chain):
                node = node.parts[index]
            elif isinstance(node, Group):
                node = node.branches[index]
            elif isinstance(node, FanOut):
                node = node.body
            else:
                raise KeyError(path)
    except (ValueError, IndexError):
        raise KeyError(path) from None
    if not isinstance(node, Step):
        raise KeyError(path)
    return node

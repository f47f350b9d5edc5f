"""Binding wire arguments to a handler: the signature is checked before dispatch, and
maps become dataclasses or pydantic models where the handler is annotated with them.

The same signature and hints describe the handler to the world: :func:`method_info`
builds the :class:`~vertebra.wire.info.MethodInfo` a node announces, with the JSON
Schemas of its arguments and result (:mod:`vertebra.wire.schema`)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

from ..wire.info import MethodInfo
from ..wire.schema import json_schema, params_schema, result_schema

__all__ = ["Binder", "method_info"]


def _converter(annotation: Any) -> Callable[[Any], Any] | None:
    if isinstance(annotation, type):
        if dataclasses.is_dataclass(annotation):
            cls = annotation

            def to_dataclass(value: Any) -> Any:
                return cls(**value) if isinstance(value, dict) else value
            return to_dataclass
        validate = getattr(annotation, "model_validate", None)  # pydantic v2
        if callable(validate):
            return lambda value: validate(value) if isinstance(value, dict) else value
    return None


class Binder:
    """Checks arguments against one handler's signature and converts annotated values."""

    def __init__(self, func: Callable[..., Any], skip: int = 0) -> None:
        try:
            sig = inspect.signature(func, eval_str=True)
        except Exception:  # an annotation that does not resolve: show it as written
            sig = inspect.signature(func)
        params = list(sig.parameters.values())[skip:]
        self.signature = sig.replace(parameters=params)
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable string annotations: no conversion, still callable
            hints = {}
        self.hints: dict[str, Any] = hints
        self.converters = {p.name: c for p in params
                           if (c := _converter(hints.get(p.name))) is not None}
        # Fast path: plain positional parameters called positionally need no bind().
        plain_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional = not self.converters and all(p.kind in plain_kinds for p in params)
        self._max_args = len(params)
        self._min_args = sum(1 for p in params if p.default is inspect.Parameter.empty)
        self.simple = not self.converters

    def bind(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments to call with; TypeError if they do not fit."""
        if self._positional and not kwargs and self._min_args <= len(args) <= self._max_args:
            return tuple(args), kwargs
        bound = self.signature.bind(*args, **kwargs)
        if not self.simple:
            for name, convert in self.converters.items():
                if name in bound.arguments:
                    bound.arguments[name] = convert(bound.arguments[name])
        return bound.args, bound.kwargs

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of the envelope's ``args``/``kwargs`` that bind to this handler."""
        return params_schema(self.signature, self.hints)

    def result_schema(self) -> dict[str, Any]:
        """The JSON Schema of this handler's result."""
        return result_schema(self.signature, self.hints)

    def payload_schema(self) -> dict[str, Any]:
        """For an event handler ``(topic, payload)``: the JSON Schema of the payload."""
        params = list(self.signature.parameters.values())
        if len(params) < 2:
            return {}
        return json_schema(self.hints.get(params[1].name, params[1].annotation))


def method_info(binder: Binder, name: str, kind: str, doc: str = "", pattern: str = "") -> MethodInfo:
    """The description a node announces for one entry point (what ``bus.nodes()`` shows):
    its signature as text and, by kind, the schemas of its arguments and result ("rpc"),
    of its arguments ("task"), of its payload ("event"), none ("schedule")."""
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    if kind in ("rpc", "task"):
        params = binder.params_schema()
        if kind == "rpc":
            result = binder.result_schema()
    elif kind == "event":
        params = binder.payload_schema()
    return MethodInfo(name, kind, str(binder.signature), doc, pattern, params, result)

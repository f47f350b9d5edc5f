"""JSON Schemas from Python type hints, as the values travel on the wire.

The schemas are JSON Schema draft-07 (the dialect AsyncAPI 3.0 builds on, and the one
most libraries in other languages read), self-contained (no ``$ref``), and describe the
*wire* form of docs/PROTOCOL.md §2-3 with the JSON codec:

=========================================  ==============================================
hint                                        schema
=========================================  ==============================================
``int`` ``float`` ``str`` ``bool`` ``None``  ``integer`` ``number`` ``string`` ``boolean`` ``null``
``bytes``                                   the JSON tag ``{"$bytes": <base64 string>}``
                                            (:data:`BYTES_SCHEMA`; msgpack carries ``bin``)
``list[X]``, ``Sequence[X]``, ``tuple[X, ...]``  ``array`` of X
``tuple[A, B]``                             an array of exactly A then B
``dict[str, X]``, ``Mapping[str, X]``        ``object`` whose values are X
``Optional[X]``, ``X | Y``, ``Union``       ``anyOf`` (a list of ``type`` when all are plain)
``Literal[...]``, an ``Enum``               ``enum`` of the values
a dataclass, a ``TypedDict``                ``object`` with its fields; the required ones
                                            are those without a default
a pydantic model                            its ``model_json_schema()``, ``$defs`` inlined
``Any``, no annotation, anything else       ``{}`` (any value)
=========================================  ==============================================

Nothing here raises: an annotation that cannot be understood gives ``{}``.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["BYTES_SCHEMA", "json_schema", "params_schema", "result_schema", "topic_regex"]

BYTES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "bytes: with the JSON codec the tag {\"$bytes\": base64}; msgpack sends bin",
    "properties": {"$bytes": {"type": "string", "contentEncoding": "base64"}},
    "required": ["$bytes"],
    "additionalProperties": False,
}
"""The schema of a byte string on the JSON wire (docs/PROTOCOL.md §3)."""

_SCALARS: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}
_ARRAYS = (list, tuple, cabc.Sequence, cabc.MutableSequence, cabc.Iterable, cabc.Collection)
_MAPS = (dict, cabc.Mapping, cabc.MutableMapping)
_UNIONS: tuple[Any, ...] = (typing.Union, types.UnionType)


def json_schema(hint: Any, *, mode: str = "validation") -> dict[str, Any]:
    """The JSON Schema of values of type ``hint``; ``mode`` is pydantic's ("validation"
    for arguments, "serialization" for results). ``{}`` for what it cannot describe."""
    try:
        return _schema(hint, mode, ())
    except Exception:  # a schema is documentation: it must never break serving
        return {}


def _schema(hint: Any, mode: str, stack: tuple[Any, ...]) -> dict[str, Any]:
    if hint is Any or hint is object or hint is inspect.Parameter.empty or isinstance(hint, str):
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _schema(args[0], mode, stack)
    if isinstance(hint, typing.NewType):
        return _schema(hint.__supertype__, mode, stack)
    if isinstance(hint, typing.TypeVar):
        return _schema(hint.__bound__, mode, stack) if hint.__bound__ is not None else {}
    if origin is typing.Literal:
        return _enum(list(args))
    if origin in _UNIONS:
        return _union([_schema(a, mode, stack) for a in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema(args[0], mode, stack)}
        items = [_schema(a, mode, stack) for a in args if a != ()]
        out: dict[str, Any] = {"type": "array", "minItems": len(items), "maxItems": len(items)}
        if items:
            out["items"] = items
        return out
    if origin in _ARRAYS:
        return {"type": "array", "items": _schema(args[0], mode, stack)} if args else {"type": "array"}
    if origin in _MAPS:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": _schema(args[1], mode, stack)}
        return {"type": "object"}
    if origin is not None:
        return {}
    return _class(hint, mode, stack)


def _class(hint: Any, mode: str, stack: tuple[Any, ...]) -> dict[str, Any]:
    if not isinstance(hint, type):
        return {}
    for cls, name in _SCALARS.items():
        if hint is cls:
            return {"type": name}
    if hint in (bytes, bytearray, memoryview):
        return dict(BYTES_SCHEMA)
    if hint in (list, tuple):
        return {"type": "array"}
    if hint is dict:
        return {"type": "object"}
    if hint in stack:  # a type that contains itself: say no more than its name
        return {"title": hint.__name__}
    if issubclass(hint, enum.Enum):
        return _enum([m.value for m in hint], title=hint.__name__)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, mode, (*stack, hint))
    if typing.is_typeddict(hint):
        return _typeddict(hint, mode, (*stack, hint))
    model_schema = getattr(hint, "model_json_schema", None)  # pydantic v2
    if callable(model_schema):
        return _inline_defs(model_schema(mode=mode))
    return {}


def _enum(values: list[Any], title: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"enum": values}
    kinds = {_json_type(v) for v in values}
    if len(kinds) == 1 and None not in kinds:
        out["type"] = kinds.pop()
    if title:
        out["title"] = title
    return out


def _json_type(value: Any) -> str | None:
    if value is None:
        return "null"
    return next((name for cls, name in _SCALARS.items() if type(value) is cls), None)


def _union(members: list[dict[str, Any]]) -> dict[str, Any]:
    if any(m == {} for m in members):
        return {}
    plain = [m["type"] for m in members if set(m) == {"type"} and isinstance(m["type"], str)]
    if len(plain) == len(members):
        return {"type": plain[0]} if len(set(plain)) == 1 else {"type": list(dict.fromkeys(plain))}
    return {"anyOf": members}


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(cls.__name__ + "(") else doc   # a dataclass's generated __doc__


def _dataclass(cls: Any, mode: str, stack: tuple[Any, ...]) -> dict[str, Any]:
    hints = _hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        props[f.name] = _schema(hints.get(f.name, Any), mode, stack)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        elif f.default is not dataclasses.MISSING and _json_type(f.default) is not None:
            props[f.name] = {**props[f.name], "default": f.default}
    return _object(cls, props, required)


def _typeddict(cls: Any, mode: str, stack: tuple[Any, ...]) -> dict[str, Any]:
    hints = _hints(cls)
    props = {name: _schema(h, mode, stack) for name, h in hints.items()}
    return _object(cls, props, [n for n in hints if n in cls.__required_keys__])


def _object(cls: type, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "title": cls.__name__, "properties": props,
                           "additionalProperties": False}
    if required:
        out["required"] = required
    if doc := _doc(cls):
        out["description"] = doc
    return out


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:
        return {}


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema with its ``#/$defs/...`` references replaced by the definitions
    themselves (so that it can be embedded anywhere); a cycle becomes ``{}``."""
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(x, seen) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref[len("#/$defs/"):]
            if name in seen or name not in defs:
                return {"title": name}
            rest = {k: walk(v, seen) for k, v in node.items() if k != "$ref"}
            return {**walk(defs[name], (*seen, name)), **rest}
        return {k: walk(v, seen) for k, v in node.items() if k != "$defs"}

    out = walk(schema, ())
    return out if isinstance(out, dict) else {}


def _hint(p: inspect.Parameter, hints: Mapping[str, Any]) -> Any:
    return hints.get(p.name, p.annotation)


def params_schema(signature: inspect.Signature, hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema of an envelope's ``{"args": [...], "kwargs": {...}}`` for a handler with
    this ``signature`` (``self`` already left out), typed by ``hints`` (from
    :func:`typing.get_type_hints`; else the signature's annotations).

    ``args`` lists the positional parameters in order, ``kwargs`` those that may be given
    by name; an ``allOf`` says that each required parameter comes one way or the other and
    none comes both ways, so a validator accepts exactly the calls that bind.
    """
    hints = hints or {}
    positional: list[dict[str, Any]] = []
    by_name: dict[str, Any] = {}
    var_args: dict[str, Any] | None = None
    var_kwargs: dict[str, Any] | None = None
    kw_required: list[str] = []
    min_args = 0
    rules: list[dict[str, Any]] = []
    P = inspect.Parameter
    for p in signature.parameters.values():
        s = json_schema(_hint(p, hints))
        if p.default is not P.empty and _json_type(p.default) is not None:
            s = {**s, "default": p.default}
        required = p.default is P.empty
        if p.kind is P.VAR_POSITIONAL:
            var_args = s
        elif p.kind is P.VAR_KEYWORD:
            var_kwargs = s
        elif p.kind is P.KEYWORD_ONLY:
            by_name[p.name] = s
            if required:
                kw_required.append(p.name)
        else:
            positional.append(s if "title" in s else {"title": p.name, **s})
            if p.kind is P.POSITIONAL_OR_KEYWORD:
                by_name[p.name] = s
                rules.append({"not": {"required": ["args", "kwargs"], "properties": {   # not twice
                    "args": {"minItems": len(positional)}, "kwargs": {"required": [p.name]}}}})
                if required:
                    rules.append({"anyOf": [
                        {"required": ["args"], "properties": {"args": {"minItems": len(positional)}}},
                        {"required": ["kwargs"], "properties": {"kwargs": {"required": [p.name]}}}]})
            elif required:
                min_args = len(positional)
    args: dict[str, Any] = {"type": "array"}
    if positional:
        args["items"] = positional
        args["additionalItems"] = var_args if var_args is not None else False
    elif var_args is not None:
        args["items"] = var_args
    else:
        args["maxItems"] = 0
    if min_args:
        args["minItems"] = min_args
    kwargs: dict[str, Any] = {"type": "object", "properties": by_name,
                              "additionalProperties": var_kwargs if var_kwargs is not None else False}
    if kw_required:
        kwargs["required"] = kw_required
    out: dict[str, Any] = {"type": "object", "properties": {"args": args, "kwargs": kwargs}}
    needed = (["args"] if min_args else []) + (["kwargs"] if kw_required else [])
    if needed:
        out["required"] = needed
    if rules:
        out["allOf"] = rules
    return out


def result_schema(signature: inspect.Signature, hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema of a handler's result (a reply's ``result``): its return annotation."""
    hint = (hints or {}).get("return", signature.return_annotation)
    return json_schema(hint, mode="serialization")


_WORD = r"[^.]+"
_SYNTAX = set("^$\\.*+?()[]{}|/")


def _escape(word: str) -> str:
    """Escape only ECMA 262's syntax characters (valid with and without the ``u`` flag)."""
    return "".join("\\" + c if c in _SYNTAX else c for c in word)


def topic_regex(pattern: str) -> str:
    """A regular expression (ECMA 262 and Python alike) that matches exactly the topics
    ``pattern`` matches (docs/PROTOCOL.md: ``*`` one word, ``#`` zero or more), for the
    ``pattern`` keyword of an event's ``topic``."""
    words: list[str] = []
    for w in pattern.split("."):
        if not (w == "#" and words and words[-1] == "#"):   # "#.#" is "#"
            words.append(w)
    if words == ["#"]:
        return rf"^{_WORD}(?:\.{_WORD})*$"
    out = "^"
    for i, w in enumerate(words):
        if w == "#":
            out += rf"(?:{_WORD}\.)*" if i == 0 else rf"(?:\.{_WORD})*"
            continue
        dot = "" if i == 0 or (i == 1 and words[0] == "#") else r"\."
        out += dot + (_WORD if w == "*" else _escape(w))
    return out + "$"

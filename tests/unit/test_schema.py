"""JSON Schemas from type hints (vertebra.wire.schema), and the schemas a node announces."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import itertools
import json
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NewType, Optional, TypedDict, Union

import jsonschema
import pytest

from vertebra import Node, event, rpc, task
from vertebra.asyncapi import service_info
from vertebra.nodes import every
from vertebra.nodes.binding import Binder, method_info
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import Envelope
from vertebra.wire.info import MethodInfo, ServiceInfo
from vertebra.wire.schema import BYTES_SCHEMA, json_schema, params_schema, result_schema, topic_regex
from vertebra.wire.topics import matches


@dataclasses.dataclass
class Point:
    """A point."""

    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Tree:
    value: int
    children: list[Tree] = dataclasses.field(default_factory=list)


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Movie(TypedDict, total=False):
    title: str
    year: int


class FakeModel:
    """Stands for a pydantic v2 model: what the schema code asks of one."""

    @classmethod
    def model_json_schema(cls, mode: str = "validation") -> dict[str, Any]:
        return {"type": "object", "title": "FakeModel", "properties": {
            "owner": {"$ref": "#/$defs/User"}, "mode": {"const": mode}},
            "$defs": {"User": {"type": "object", "properties": {"boss": {"$ref": "#/$defs/User"}}}}}


UserId = NewType("UserId", int)


@pytest.mark.parametrize(("hint", "schema"), [
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (bool, {"type": "boolean"}),
    (None, {"type": "null"}),
    (bytes, BYTES_SCHEMA),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (Sequence[str], {"type": "array", "items": {"type": "string"}}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (tuple[int, str], {"type": "array", "minItems": 2, "maxItems": 2,
                       "items": [{"type": "integer"}, {"type": "string"}]}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (Mapping[str, Any], {"type": "object", "additionalProperties": {}}),
    (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045 (typing.Union, not X | Y)
    (int | str, {"type": ["integer", "string"]}),
    (Union[Point, None], {"anyOf": [json_schema(Point), {"type": "null"}]}),  # noqa: UP007
    (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
    (Literal[1, "x"], {"enum": [1, "x"]}),
    (Colour, {"enum": ["red", "green"], "type": "string", "title": "Colour"}),
    (Annotated[int, "meta"], {"type": "integer"}),
    (UserId, {"type": "integer"}),
    (Any, {}),
    (inspect.Parameter.empty, {}),
    ("Unresolved", {}),
    (object, {}),
    (complex, {}),
    (Optional[Any], {}),  # noqa: UP045
])
def test_hints_become_schemas(hint: Any, schema: dict[str, Any]) -> None:
    assert json_schema(hint) == schema
    jsonschema.Draft7Validator.check_schema(schema)


def test_a_dataclass_is_an_object_with_its_required_fields() -> None:
    s = json_schema(Point)
    assert s == {"type": "object", "title": "Point", "description": "A point.",
                 "additionalProperties": False, "required": ["x"],
                 "properties": {"x": {"type": "integer"}, "y": {"type": "integer", "default": 0},
                                "tags": {"type": "array", "items": {"type": "string"}}}}
    v = jsonschema.Draft7Validator(s)
    assert v.is_valid({"x": 1}) and v.is_valid({"x": 1, "y": 2, "tags": ["a"]})
    assert not v.is_valid({"y": 2}) and not v.is_valid({"x": 1, "z": 0})   # cls(**m) refuses z


def test_a_recursive_dataclass_stops_at_itself() -> None:
    s = json_schema(Tree)
    assert s["properties"]["children"] == {"type": "array", "items": {"title": "Tree"}}


def test_a_typeddict_knows_its_required_keys() -> None:
    s = json_schema(Movie)
    assert s["properties"] == {"title": {"type": "string"}, "year": {"type": "integer"}}
    assert "required" not in s


def test_a_pydantic_model_is_inlined_with_cycles_cut() -> None:
    s = json_schema(FakeModel, mode="serialization")
    assert "$defs" not in json.dumps(s)
    assert s["properties"]["owner"] == {"type": "object", "properties": {"boss": {"title": "User"}}}
    assert s["properties"]["mode"] == {"const": "serialization"}


def test_a_bytes_value_validates_as_the_json_codec_sends_it() -> None:
    wire = json.loads(get_codec("json").encode(Envelope("cast", service="s", method="m",
                                                        args=[b"\x00\xff"])))
    jsonschema.validate(wire["args"][0], json_schema(bytes))
    assert not jsonschema.Draft7Validator(json_schema(bytes)).is_valid("AP8=")


def sample(a: int, b: str = "x", /, c: float = 1.0, *, d: bool, **more: int) -> Point: ...
def star(a: int, *rest: str) -> None: ...
def nothing() -> None: ...


JSON_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def binds(func: Any, args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Whether the call binds and every value has its annotated type, as a node sees it."""
    sig = inspect.signature(func)
    try:
        bound = sig.bind(*args, **kwargs)
        func(*args, **kwargs)    # the call itself too: 3.13.0's bind lets a positional-only
    except TypeError:            # name through as a keyword into **kwargs, the call does not
        return False
    hints = typing.get_type_hints(func)
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        values = value if kind is inspect.Parameter.VAR_POSITIONAL else \
            value.values() if kind is inspect.Parameter.VAR_KEYWORD else [value]
        if not all(type(v) in JSON_TYPES[hints[name]] for v in values):
            return False
    return True


CANDIDATE_ARGS = [[], [1], [1, "y"], [1, "y", 2.5], [1, "y", 2.5, 4], ["no"], [True]]
CANDIDATE_KWARGS = [{}, {"d": True}, {"c": 2.0, "d": False}, {"a": 1, "d": True}, {"d": True, "e": 3},
                    {"d": True, "e": "no"}, {"rest": "x"}, {"d": 1}]


@pytest.mark.parametrize("func", [sample, star, nothing])
def test_the_params_schema_accepts_exactly_the_calls_that_bind(func: Any) -> None:
    schema = Binder(func).params_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    v = jsonschema.Draft7Validator(schema)
    for args, kwargs in itertools.product(CANDIDATE_ARGS, CANDIDATE_KWARGS):
        wire = {k: x for k, x in (("args", args), ("kwargs", kwargs)) if x}   # as to_wire sends it
        assert v.is_valid(wire) == binds(func, args, kwargs), (func.__name__, args, kwargs)


def test_result_schema_from_the_return_annotation() -> None:
    assert Binder(sample).result_schema() == json_schema(Point)
    assert result_schema(inspect.signature(nothing), {"return": type(None)}) == {"type": "null"}
    assert result_schema(inspect.signature(lambda: 1)) == {}


def test_params_schema_without_hints_uses_the_annotations_or_nothing() -> None:
    def f(a, b: int = 3): ...  # type: ignore[no-untyped-def]
    s = params_schema(inspect.signature(f, eval_str=True))
    assert s["properties"]["args"]["items"] == [{"title": "a"},
                                                {"title": "b", "type": "integer", "default": 3}]


@pytest.mark.parametrize("pattern", ["#", "orders.#", "#.b", "a.#.b", "*", "a.*", "*.#", "#.*",
                                     "a.#.#.b", "#.a.#", "a.*.#", "x-y.(z)", "a.b"])
def test_topic_regex_matches_what_the_pattern_matches(pattern: str) -> None:
    words = ["a", "b", "orders", "x-y", "(z)", "q"]
    regex = re.compile(topic_regex(pattern))
    for n in range(1, 4):
        for topic in (".".join(t) for t in itertools.product(words, repeat=n)):
            assert bool(regex.match(topic)) == matches(pattern, topic), (pattern, topic)


class Shop(Node):
    """Sells things."""

    @rpc
    def price(self, item: str, qty: int = 1) -> float:
        """The price of qty items."""
        return 1.0

    @task
    def ship(self, order: Point) -> None: ...

    @event("orders.*")
    def on_order(self, topic: str, payload: dict[str, int]) -> None: ...

    @every(60)
    def tick(self) -> None: ...


def test_method_info_by_kind() -> None:
    shop = Shop()
    rpc_info = method_info(Binder(shop.price), "price", "rpc", "doc")
    assert rpc_info.signature == "(item: str, qty: int = 1) -> float"
    assert rpc_info.params_schema == Binder(shop.price).params_schema()
    assert rpc_info.result_schema == {"type": "number"}
    assert method_info(Binder(shop.ship), "ship", "task").result_schema is None
    ev = method_info(Binder(shop.on_order), "on_order", "event", pattern="orders.*")
    assert ev.params_schema == {"type": "object", "additionalProperties": {"type": "integer"}}
    tick = method_info(Binder(shop.tick), "tick", "schedule", pattern="every 60s")
    assert (tick.params_schema, tick.result_schema) == (None, None)


def test_service_info_of_a_class_equals_that_of_an_instance() -> None:
    by_class, by_instance = service_info(Shop), service_info(Shop())
    assert by_class == by_instance
    assert by_class.doc == "Sells things."
    assert [(m.name, m.kind, m.pattern) for m in by_class.methods] == [
        ("on_order", "event", "orders.*"), ("price", "rpc", ""), ("ship", "task", ""),
        ("tick", "schedule", "every 60s")]


def test_method_info_wire_form_is_backward_compatible() -> None:
    old = {"name": "add", "kind": "rpc", "signature": "(a, b)", "doc": "", "pattern": ""}
    m = MethodInfo.from_dict(old)
    assert (m.params_schema, m.result_schema) == (None, None)
    assert m.to_dict() == old                               # nothing new when nothing is known
    new = MethodInfo("add", "rpc", "(a: int)", params_schema={"type": "object"},
                     result_schema={"type": "integer"})
    d = new.to_dict()
    assert set(old) <= set(d) and d["result_schema"] == {"type": "integer"}
    assert MethodInfo.from_dict(json.loads(json.dumps(d))) == new
    assert MethodInfo.from_dict({**old, "params_schema": "junk"}).params_schema is None
    hash(new)                                               # still usable in sets
    info = ServiceInfo("calc", (new,), "doc")
    assert ServiceInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info

"""The AsyncAPI catalogue (vertebra.asyncapi), validated against the official AsyncAPI
3.0.0 JSON Schema (tests/data/, vendored from the npm package @asyncapi/specs), and its
messages against envelopes as vertebra really encodes them."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys
import uuid
from typing import Any, Literal

import jsonschema
import pytest

import vertebra
from vertebra import Node, event, rpc, task
from vertebra.asyncapi import asyncapi_document, service_info
from vertebra.testing import Harness
from vertebra.transports.zmq import Hub
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import Envelope
from vertebra.wire.info import MethodInfo, ServiceInfo

OFFICIAL_SCHEMA = pathlib.Path(__file__).parent.parent / "data" / "asyncapi-3.0.0.schema.json"

URLS = {
    "memory": "memory://catalogue",
    "zmq": "zmq://127.0.0.1:7000",
    "amqp": "amqp://guest:s3cret@127.0.0.1:5672/shop?prefix=staging.",
    "xmpp": "xmpp://calc:s3cret@127.0.0.1:5222?domain=example.org&room=prod",
}


@dataclasses.dataclass
class Order:
    """An order."""

    id: int
    items: list[str]
    note: str | None = None


class Calc(Node):
    """Arithmetic, and orders."""

    @rpc
    def add(self, a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    @rpc
    def place(self, order: Order, *, mode: Literal["fast", "slow"] = "fast") -> Order:
        """Place an order."""
        return order

    @rpc
    def checksum(self, data: bytes) -> bytes:
        return data

    @task
    def crunch(self, job: str, weight: float = 1.0) -> None:
        """Crunch a job."""

    @event("orders.*")
    def on_order(self, topic: str, payload: Order) -> None:
        """React to orders."""


@pytest.fixture(scope="module")
def official() -> jsonschema.Draft7Validator:
    schema = json.loads(OFFICIAL_SCHEMA.read_text())     # missing file: the test fails, never skips
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema.Draft7Validator(schema)


def errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def payload(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    schema = doc["components"]["messages"][message]["payload"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def on_wire(env: Envelope) -> dict[str, Any]:
    return json.loads(get_codec("json").encode(env))


@pytest.mark.parametrize("scheme", sorted(URLS))
def test_the_document_of_a_calc_node_is_valid_asyncapi_3(scheme: str, official) -> None:
    doc = asyncapi_document([Calc], URLS[scheme])
    assert errors(official, doc) == []
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["servers"]) == {scheme}


def test_several_transports_in_one_document(official) -> None:
    doc = asyncapi_document([Calc, Calc()], list(URLS.values()), title="shop", version="2.1.0")
    assert errors(official, doc) == []
    assert doc["info"]["title"] == "shop" and doc["info"]["version"] == "2.1.0"
    for scheme in URLS:
        assert f"{scheme}.calc.add" in doc["operations"]
        assert doc["channels"][f"{scheme}.calc.calls"]["servers"] == [{"$ref": f"#/servers/{scheme}"}]


def test_every_reference_resolves_and_operations_use_their_channels_messages() -> None:
    doc = asyncapi_document([Calc], list(URLS.values()))
    for ref in refs(doc):
        resolve(doc, ref)
    for name, op in doc["operations"].items():
        channel = resolve(doc, op["channel"]["$ref"])
        assert all(resolve(doc, m["$ref"]) in channel["messages"].values() for m in op["messages"]), name
        if "reply" in op:
            replies = resolve(doc, op["reply"]["channel"]["$ref"])
            assert all(resolve(doc, m["$ref"]) in replies["messages"].values()
                       for m in op["reply"]["messages"]), name


def test_the_operations_of_each_kind() -> None:
    ops = asyncapi_document([Calc], URLS["memory"])["operations"]
    assert sorted(ops) == ["memory.calc.add", "memory.calc.add.cast", "memory.calc.checksum",
                           "memory.calc.checksum.cast", "memory.calc.crunch", "memory.calc.on_order",
                           "memory.calc.place", "memory.calc.place.cast"]
    assert all(op["action"] == "receive" for op in ops.values())
    assert "reply" in ops["memory.calc.add"] and "reply" not in ops["memory.calc.crunch"]
    assert ops["memory.calc.add"]["summary"] == "Return a + b."


def test_amqp_channels_are_the_queues_and_exchange_of_the_protocol() -> None:
    doc = asyncapi_document([Calc], URLS["amqp"])
    ch = doc["channels"]
    assert ch["amqp.calc.calls"]["address"] == "staging.vertebra.call.calc"
    assert ch["amqp.calc.calls"]["bindings"]["amqp"]["queue"] == {
        "name": "staging.vertebra.call.calc", "durable": False, "exclusive": False, "autoDelete": True,
        "vhost": "shop"}
    assert ch["amqp.calc.tasks"]["address"] == "staging.vertebra.task.calc"
    assert ch["amqp.calc.tasks"]["x-vertebra-dead-letters"] == "staging.vertebra.dead.calc"
    events = ch["amqp.events.orders.star"]
    assert events["address"] == "orders.*"
    assert events["bindings"]["amqp"]["exchange"]["name"] == "staging.vertebra.events"
    assert ch["amqp.replies"]["address"] == "amq.rabbitmq.reply-to"
    assert doc["servers"]["amqp"] == {
        "host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0-9-1", "pathname": "/shop",
        "description": doc["servers"]["amqp"]["description"]}


def test_no_credentials_in_the_document() -> None:
    text = json.dumps(asyncapi_document([Calc], list(URLS.values())))
    assert "s3cret" not in text and "guest" not in text


def test_xmpp_and_zmq_addresses() -> None:
    doc = asyncapi_document([Calc], [URLS["xmpp"], URLS["zmq"]])
    calls = doc["channels"]["xmpp.calc.calls"]
    assert calls["address"] == "{replica}" and "prod@conference.example.org" in \
        calls["parameters"]["replica"]["description"]
    assert doc["channels"]["xmpp.events.orders.star"]["address"] == "prod-events@conference.example.org"
    assert doc["channels"]["zmq.calc.calls"]["address"] == "calc"


def test_several_brokers_give_several_servers() -> None:
    doc = asyncapi_document([Calc], "amqp://u:p@h1:5672,h2:5673/")
    assert {s: v["host"] for s, v in doc["servers"].items()} == {"amqp-1": "h1:5672", "amqp-2": "h2:5673"}
    assert doc["channels"]["amqp.calc.calls"]["servers"] == [{"$ref": "#/servers/amqp-1"},
                                                             {"$ref": "#/servers/amqp-2"}]


def test_call_messages_validate_envelopes_as_vertebra_encodes_them() -> None:
    doc = asyncapi_document([Calc], URLS["memory"])
    add = payload(doc, "calc.add.call")
    assert add.is_valid(on_wire(Envelope("call", service="calc", method="add", args=[2, 3],
                                         deadline=1e9, headers={"traceparent": "00-ab"})))
    assert add.is_valid(on_wire(Envelope("call", service="calc", method="add", args=[2],
                                         kwargs={"b": 3})))
    for bad in (Envelope("call", service="calc", method="add", args=[2, "3"]),
                Envelope("call", service="calc", method="add", args=[2]),
                Envelope("call", service="calc", method="add", args=[2, 3], kwargs={"c": 1}),
                Envelope("call", service="calc", method="sub", args=[2, 3]),
                Envelope("cast", service="calc", method="add", args=[2, 3])):
        assert not add.is_valid(on_wire(bad)), bad
    place = payload(doc, "calc.place.call")
    order = Order(1, ["tea"])
    assert place.is_valid(on_wire(Envelope("call", service="calc", method="place", args=[order],
                                           kwargs={"mode": "slow"})))
    assert not place.is_valid(on_wire(Envelope("call", service="calc", method="place", args=[order],
                                               kwargs={"mode": "later"})))
    assert not place.is_valid(on_wire(Envelope("call", service="calc", method="place",
                                               args=[{"id": "x", "items": []}])))
    blob = payload(doc, "calc.checksum.call")
    assert blob.is_valid(on_wire(Envelope("call", service="calc", method="checksum", args=[b"\x00\xff"])))
    assert not blob.is_valid(on_wire(Envelope("call", service="calc", method="checksum", args=["AP8="])))


def test_reply_task_event_and_error_messages() -> None:
    doc = asyncapi_document([Calc], URLS["memory"])
    call = Envelope("call", service="calc", method="place", args=[Order(1, [])])
    assert payload(doc, "calc.place.reply").is_valid(on_wire(call.answer(Order(1, ["x"], "n"))))
    assert not payload(doc, "calc.add.reply").is_valid(on_wire(call.answer("five")))
    error = call.fail({"code": "remote", "type": "ValueError", "message": "no", "traceback": ""})
    assert payload(doc, "vertebra.error").is_valid(on_wire(error))
    crunch = payload(doc, "calc.crunch.task")
    assert crunch.is_valid(on_wire(Envelope("task", service="calc", method="crunch", args=["j"])))
    assert crunch.is_valid(on_wire(Envelope("cast", service="calc", method="crunch", args=["j", 2])))
    assert not crunch.is_valid(on_wire(Envelope("task", service="calc", method="crunch")))
    ev = payload(doc, "calc.on_order.event")
    assert ev.is_valid(on_wire(Envelope("event", topic="orders.eu", payload=Order(2, ["a"]))))
    assert not ev.is_valid(on_wire(Envelope("event", topic="orders.eu.x", payload=Order(2, ["a"]))))
    assert not ev.is_valid(on_wire(Envelope("event", topic="orders.eu", payload={"id": 2})))


def test_a_service_described_without_schemas_gets_open_messages(official) -> None:
    old = ServiceInfo("legacy", (MethodInfo("ping", "rpc", "(x)"), MethodInfo("on", "event", pattern="#")))
    doc = asyncapi_document([old], URLS["zmq"])
    assert errors(official, doc) == []
    ping = payload(doc, "legacy.ping.call")
    assert ping.is_valid(on_wire(Envelope("call", service="legacy", method="ping", args=[1, {"a": 2}])))


def test_schedules_are_listed_not_operations() -> None:
    from vertebra.nodes import every

    class Ticker(Node):
        @every(30)
        def tick(self) -> None: ...

    doc = asyncapi_document([Ticker], URLS["memory"])
    assert doc["operations"] == {}
    assert doc["x-vertebra-schedules"] == [{"service": "ticker", "method": "tick", "schedule": "every 30s"}]


def test_discovered_services_carry_their_schemas_over_zmq(official) -> None:
    """What a node announces reaches another bus with its schemas (here through a hub,
    whose frames carry the ServiceInfo as JSON), and documents the same as the class."""
    from vertebra.testing import RecordingService

    described = service_info(Calc)

    class Announcing(RecordingService):
        def __vertebra_runtime__(self, bus: Any) -> Any:
            rt = super().__vertebra_runtime__(bus)
            rt.info = dataclasses.replace(described, transport=rt.info.transport)
            return rt

    with Hub("tcp://127.0.0.1:0") as hub, Harness(hub.url) as h:
        h.served(Announcing("calc"))
        [info] = h.client.nodes()
    assert info.methods == described.methods
    assert errors(official, asyncapi_document([info], hub.url)) == []


def test_a_served_node_announces_the_schemas_of_its_code() -> None:
    """bus.nodes() lists each method's schemas, as service_info() finds them in the code."""
    with Harness(f"memory://asyncapi-{uuid.uuid4().hex[:8]}") as h:
        h.served(Calc())
        [info] = h.client.nodes()
    by_name = {m.name: m for m in info.methods}
    for m in service_info(Calc).methods:
        assert by_name[m.name].params_schema == m.params_schema, m.name
        assert by_name[m.name].result_schema == m.result_schema, m.name
    assert by_name["add"].params_schema is not None


def test_the_document_is_plain_json() -> None:
    doc = asyncapi_document([Calc], list(URLS.values()))
    assert json.loads(json.dumps(doc)) == doc
    assert vertebra.__version__


CLI_NODE = '''
from vertebra import Node, rpc, task

class Calc(Node):
    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b

    @task
    def crunch(self, job: str) -> None: ...
'''


def test_the_asyncapi_command_writes_a_valid_document(tmp_path: pathlib.Path, official) -> None:
    (tmp_path / "calcnode.py").write_text(CLI_NODE)
    out = tmp_path / "calc.json"
    done = subprocess.run([sys.executable, "-m", "vertebra", "asyncapi", "calcnode:Calc",
                           "--url", URLS["amqp"], "--url", URLS["zmq"], "-o", str(out),
                           "--title", "calc", "--api-version", "3.2.1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert errors(official, doc) == []
    assert doc["info"]["version"] == "3.2.1" and set(doc["servers"]) == {"amqp", "zmq"}
    assert "amqp.calc.add" in doc["operations"] and "zmq.calc.crunch" in doc["operations"]


def test_the_asyncapi_command_describes_live_services(official) -> None:
    """Without NODES it asks discovery: here a hub with a calc node on it."""
    with Hub("tcp://127.0.0.1:0") as hub, Harness(hub.url) as h:
        h.served(Calc())
        done = subprocess.run([sys.executable, "-m", "vertebra", "asyncapi", "--url", hub.url],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert errors(official, doc) == []
    assert "zmq.calc.place" in doc["operations"]

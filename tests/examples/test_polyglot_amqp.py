"""A node written in plain pika from the documents alone (examples/polyglot/pika_node.py),
called by vertebra over RabbitMQ: results, errors, discovery, the codec of the answer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

import vertebra

from .conftest import EXAMPLES

AmqpUrl = Callable[..., str]


@pytest.fixture
def pika_node(amqp_url: AmqpUrl):
    url = amqp_url("adder")
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "polyglot/pika_node.py"), "--url", url],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving adder"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_vertebra_calls_a_node_written_in_plain_pika(pika_node: str, codec: str) -> None:
    with vertebra.connect(pika_node, codec=codec, timeout=10) as bus:
        adder = bus.proxy("adder")
        assert adder.add(2, 3) == 5
        with pytest.raises(vertebra.RemoteError) as err:
            adder.add(1)
        assert err.value.type == "TypeError"
        with pytest.raises(vertebra.RemoteError) as err:
            adder.fail()
        assert err.value.type == "ZeroDivisionError"
        with pytest.raises(vertebra.Unreachable):
            adder.nosuch()


def test_discovery_lists_the_pika_node(pika_node: str) -> None:
    with vertebra.connect(pika_node) as bus:
        deadline = time.monotonic() + 15
        while True:
            found = {s.name: s for s in bus.nodes()}
            if "adder" in found or time.monotonic() > deadline:
                break
        assert found["adder"].method("add") is not None
        assert found["adder"].doc.startswith("Adds numbers")


def test_a_vertebra_node_answers_in_the_codec_of_the_call(amqp_url: AmqpUrl) -> None:
    import urllib.parse

    import msgpack
    import pika

    class Adder(vertebra.Node):
        name = "adder"

        @vertebra.rpc
        def add(self, a: int, b: int) -> int:
            return a + b

    url = amqp_url("adder")
    parts = urllib.parse.urlsplit(url)
    prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
    with vertebra.connect(url, codec="json") as bus:          # the node's own codec: JSON
        bus.serve(Adder())
        conn = pika.BlockingConnection(pika.URLParameters(parts._replace(query="").geturl()))
        try:
            ch = conn.channel()
            answers: list[bytes] = []
            ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, body: answers.append(body),
                             auto_ack=True)
            call = {"v": 1, "id": "c0ffee01", "kind": "call", "service": "adder", "method": "add",
                    "args": [2, 3], "deadline": time.time() + 10}
            ch.basic_publish("", f"{prefix}vertebra.call.adder", msgpack.packb(call),
                             pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                                  correlation_id="c0ffee01"))
            deadline = time.monotonic() + 10
            while not answers and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.05)
        finally:
            conn.close()
    (body,) = answers
    assert 0x80 <= body[0] <= 0x8F, body[:20]                  # msgpack, like the call
    assert msgpack.unpackb(body)["result"] == 5

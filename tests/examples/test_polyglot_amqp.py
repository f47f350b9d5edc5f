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

"""A client written against docs/PROTOCOL.md and docs/protocol/zmq.md alone, in plain
pyzmq (run with vertebra unimportable), calling a vertebra node behind an embedded hub:
answers, errors and refusals as the documents promise, each in the codec of its call."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

import vertebra
from vertebra import Node, rpc

from .conftest import run_example

NOT_VERTEBRA = ("vertebra",)     # the polyglot program must not import it


class Calc(Node):
    """Arithmetic, for programs that know nothing of vertebra."""

    name = "calc"

    @rpc
    def add(self, a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    @rpc
    def echo(self, value: Any) -> Any:
        """Return ``value`` unchanged (bytes too)."""
        return value


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    """An embedded hub with a vertebra Calc node on it (routable once serve returns)."""
    with vertebra.Hub("tcp://127.0.0.1:0") as hub, vertebra.connect(hub.url) as bus:
        bus.serve(Calc())
        yield hub.url


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_polyglot_zmq_client_calls_a_vertebra_node(hub_url: str, codec: str) -> None:
    out = run_example("polyglot/zmq_client.py", "--url", hub_url, "--codec", codec,
                      "--call", "calc.add", "2", "3", "--call", "calc.add", "1",
                      "--call", "calc.nosuch", "--call", "nobody.add", "1", "2",
                      without=NOT_VERTEBRA)
    assert f"calc.add(2, 3) -> 5 [{codec}]\n" in out, out     # answered in the call's codec
    assert re.search(rf"^calc\.add\(1\) -> error remote TypeError: .* \[{codec}\]$", out, re.M), out
    assert re.search(rf"^calc\.nosuch\(\) -> error unreachable Unreachable: .* \[{codec}\]$", out,
                     re.M), out
    assert "nobody.add(1, 2) -> error unreachable (hub): no live replica serves nobody\n" in out, out


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_polyglot_zmq_client_gets_bytes_back(hub_url: str, codec: str) -> None:
    out = run_example("polyglot/zmq_client.py", "--url", hub_url, "--codec", codec,
                      "--call", "calc.echo", '{"$bytes": "AP8="}', without=NOT_VERTEBRA)
    # bytes travel as a $bytes tag in JSON and as bin in msgpack; both come back as bytes
    assert f'calc.echo({{"$bytes": "AP8="}}) -> {{"$bytes": "AP8="}} [{codec}]\n' in out, out


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_polyglot_zmq_client_malformed_calls_are_refused_with_code_protocol(hub_url: str,
                                                                           codec: str) -> None:
    out = run_example("polyglot/zmq_client.py", "--url", hub_url, "--codec", codec,
                      "--malformed", "v2", "--malformed", "no-method", "--malformed", "deep",
                      "--malformed", "garbage", without=NOT_VERTEBRA)
    assert re.search(rf"^malformed v2 -> error protocol ProtocolError: .*version 2.*1.* \[{codec}\]$",
                     out, re.M), out                                        # §9: both versions
    for kind in ("no-method", "deep"):
        assert re.search(rf"^malformed {kind} -> error protocol ProtocolError: .* \[{codec}\]$",
                         out, re.M), out
    # not an envelope at all: the hub answers by the message-id frame, in JSON (no codec)
    assert re.search(r"^malformed garbage -> error protocol ProtocolError: .* \[json\]$", out,
                     re.M), out

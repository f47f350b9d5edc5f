"""Programs written against docs/PROTOCOL.md and docs/protocol/xmpp.md alone, in plain
slixmpp (run with vertebra unimportable): a stock XEP-0009 client and an envelope client
that call by the stable JID SERVICE@GATEWAY and join nothing, and a node that vertebra
callers and stock clients reach through the gateway."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vertebra
from vertebra import Node, rpc, task

from .conftest import run_example, start_example, stop

NOT_VERTEBRA = ("vertebra",)     # the polyglot programs must not import it


class Calc(Node):
    """Arithmetic, for programs that know nothing of vertebra."""

    name = "calc"

    def __init__(self) -> None:
        self.done: list[Any] = []

    @rpc
    def add(self, a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    @rpc
    def typo(self, value: Any) -> None:
        """Raise a TypeError of its own (not an argument mismatch: faultCode 500)."""
        raise TypeError(f"the handler itself raised on {value!r}")

    @task
    def work(self, job: str) -> None:
        """Record ``job``."""
        self.done.append(job)


def wait_for_gateway(bus: vertebra.Bus, service: str, gateway: str) -> None:
    """Until discovery shows ``service`` at its stable JID (a bus holds the gateway)."""
    deadline = time.monotonic() + 20
    while True:
        info = next((s for s in bus.nodes() if s.name == service), None)
        if info is not None and info.extra.get("jid") == f"{service}@{gateway}":
            return
        assert time.monotonic() < deadline, f"{service} never showed up at {service}@{gateway}"
        time.sleep(0.05)


@pytest.fixture
def calc_node(xmpp_server: Any, xmpp_url: Callable[..., str]) -> Iterator[tuple[Calc, str]]:
    """A vertebra Calc node that holds the gateway; yields (the node, its stable JID)."""
    from tests.servers.xmpp import GATEWAY

    calc = Calc()
    with vertebra.connect(xmpp_url("calc", **xmpp_server.gateway_params())) as bus:
        bus.serve(calc)
        wait_for_gateway(bus, "calc", GATEWAY)
        yield calc, f"calc@{GATEWAY}"


def test_stock_jabber_rpc_client_calls_by_the_stable_jid(calc_node: tuple[Calc, str],
                                                         xmpp_url: Callable[..., str]) -> None:
    _, jid = calc_node
    out = run_example("polyglot/jabber_rpc.py", "--url", xmpp_url("stock"), "--jid", jid,
                      "--call", "add", "2", "3", "--call", "add", "1", "--call", "add", "1", "2", "3",
                      "--call", "nosuch", "--call", "typo", "1", "--call", "calc.add", "20", "22",
                      without=NOT_VERTEBRA)
    assert "add(2, 3) -> 5\n" in out, out
    assert re.search(r"^add\(1\) -> fault 400: TypeError", out, re.M), out
    assert re.search(r"^add\(1, 2, 3\) -> fault 400: TypeError", out, re.M), out
    assert re.search(r"^nosuch\(\) -> fault 404", out, re.M), out
    assert re.search(r"^typo\(1\) -> fault 500: TypeError: the handler itself", out, re.M), out
    assert "calc.add(20, 22) -> 42\n" in out, out


def test_stock_jabber_rpc_client_calls_hello_greeter(xmpp_server: Any,
                                                    xmpp_url: Callable[..., str]) -> None:
    from tests.servers.xmpp import GATEWAY

    out = run_example("polyglot/jabber_rpc.py", "--url", xmpp_url("rpcclient"),
                      "--jid", f"greeter@{GATEWAY}",
                      "--node-url", xmpp_url("greeter", **xmpp_server.gateway_params()),
                      without=NOT_VERTEBRA)
    assert re.search(r'^hello\("slixmpp"\) -> "Hello, slixmpp! \(from pid \d+\)"$', out, re.M), out
    assert "divide(1, 0) -> fault 500: ZeroDivisionError: division by zero" in out, out
    assert re.search(r"^divide\(1\) -> fault 400: TypeError", out, re.M), out
    assert re.search(r"^nosuch\(\) -> fault 404", out, re.M), out


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_polyglot_envelope_client_by_the_stable_jid(calc_node: tuple[Calc, str], codec: str,
                                                    xmpp_url: Callable[..., str]) -> None:
    calc, jid = calc_node
    out = run_example("polyglot/xmpp_client.py", "--url", xmpp_url("polyglot"), "--jid", jid,
                      "--codec", codec, "--call", "add", "2", "3", "--call", "add", "1",
                      "--call", "nosuch", "--task", "work", "job-1", without=NOT_VERTEBRA)
    assert f"add(2, 3) -> 5 [{codec}]\n" in out, out           # answered in the call's codec
    assert re.search(rf"^add\(1\) -> error remote TypeError: .* \[{codec}\]$", out, re.M), out
    assert re.search(rf"^nosuch\(\) -> error unreachable Unreachable: .* \[{codec}\]$", out,
                     re.M), out
    assert 'work("job-1") -> acknowledged\n' in out, out
    assert calc.done == ["job-1"]                             # acknowledged after it ran


def test_polyglot_node_serves_vertebra_callers_and_stock_clients(
        xmpp_server: Any, xmpp_url: Callable[..., str]) -> None:
    from tests.servers.xmpp import GATEWAY

    node = start_example("polyglot/xmpp_node.py", "--url", xmpp_url("shouter"))
    try:
        # this bus only calls, and holds the gateway for the foreign node behind it
        with vertebra.connect(xmpp_url("client", **xmpp_server.gateway_params()),
                              timeout=10.0) as bus:
            wait_for_gateway(bus, "shouter", GATEWAY)
            shouter = bus.proxy("shouter")
            assert shouter.shout("hi") == "HI!"
            assert shouter.reverse(b"\x00\x01\xff") == b"\xff\x01\x00"
            assert shouter.shout(text="kw") == "KW!"
            with pytest.raises(vertebra.RemoteError) as err:
                shouter.shout(1, 2)
            assert err.value.type == "TypeError"
            with pytest.raises(vertebra.Unreachable):
                shouter.nosuch()
            info = next(s for s in bus.nodes() if s.name == "shouter")
            assert {m.name for m in info.methods} == {"shout", "reverse"}
            with vertebra.connect(xmpp_url("client2"), codec="msgpack", timeout=10.0) as mp:
                assert mp.proxy("shouter").reverse(b"ab") == b"ba"
            jid = f"shouter@{GATEWAY}"
            out = run_example("polyglot/jabber_rpc.py", "--url", xmpp_url("stock"), "--jid", jid,
                              "--call", "shout", "hello", "--call", "shout", "--call", "nosuch",
                              without=NOT_VERTEBRA)
            assert 'shout("hello") -> "HELLO!"\n' in out, out
            assert re.search(r"^shout\(\) -> fault 400: TypeError", out, re.M), out
            assert re.search(r"^nosuch\(\) -> fault 404", out, re.M), out
            out = run_example("polyglot/xmpp_client.py", "--url", xmpp_url("polyglot"),
                              "--jid", jid, "--codec", "msgpack", "--call", "shout", "hi",
                              without=NOT_VERTEBRA)
            assert 'shout("hi") -> "HI!" [msgpack]\n' in out, out
    finally:
        stop(node)
    assert node.returncode == 0, node.stderr

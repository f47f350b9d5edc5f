"""Every example, run end to end as a subprocess on the embedded default (a ZeroMQ hub the
example starts itself) and on RabbitMQ, checking what it prints."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

import vertebra

from .conftest import run_example, start_example, stop

AmqpUrl = Callable[..., str]


# hello -------------------------------------------------------------------------------

def test_hello_embedded() -> None:
    out = run_example("hello.py", "both", "Ada")
    assert "Hello, Ada!" in out
    assert "remote error: ZeroDivisionError: division by zero" in out


def test_hello_server_and_client_processes_on_amqp(amqp_url: AmqpUrl) -> None:
    url = amqp_url("greeter")
    server = start_example("hello.py", "serve", "--url", url)
    try:
        deadline = time.monotonic() + 20
        while True:       # the call raises Unreachable until the server's queue exists
            proc = subprocess.run([sys.executable, "examples/hello.py", "call", "Bob", "--url", url],
                                  capture_output=True, text=True, timeout=30)
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            assert "Unreachable" in proc.stderr, proc.stderr
            time.sleep(0.2)
        assert proc.returncode == 0, proc.stderr
        assert "Hello, Bob!" in proc.stdout
        assert f"pid {server.pid}" in proc.stdout
    finally:
        stop(server)


# pipeline ------------------------------------------------------------------------------

def check_pipeline(out: str, jobs: int) -> None:
    killed = re.search(r"killed (worker-\d+) after (\d+) jobs", out)
    assert killed, out
    counts = {w: int(n) for w, n in re.findall(r"^(worker-\d+): (\d+) jobs$", out, re.M)}
    assert f"done {jobs}/{jobs} jobs" in out, out
    assert sum(counts.values()) == jobs, counts
    survivors = {w: n for w, n in counts.items() if w != killed.group(1)}
    assert len(survivors) == 2 and all(n > 0 for n in survivors.values()), counts
    assert counts.get(killed.group(1), 0) <= int(killed.group(2)), (killed.group(0), counts)


def test_pipeline_embedded() -> None:
    check_pipeline(run_example("pipeline.py", "--jobs", "60"), 60)


def test_pipeline_amqp(amqp_url: AmqpUrl) -> None:
    check_pipeline(run_example("pipeline.py", "--jobs", "60", "--url", amqp_url("workers", "sink")), 60)


# weather -------------------------------------------------------------------------------

def check_weather(out: str, count: int) -> None:
    sent = {z: int(n) for z, n in re.findall(r"'(\d{5})': (\d+)", out.splitlines()[0])}
    assert sum(sent.values()) == count, out
    got = {p: int(n) for p, n in re.findall(r"^(weather\S+)\s+(\d+) updates", out, re.M)}
    assert got == {
        "weather.#": count,
        "weather.1.*": sum(n for z, n in sent.items() if z.startswith("1")),
        "weather.*.10001": sent.get("10001", 0),
    }, out


def test_weather_embedded() -> None:
    check_weather(run_example("weather.py", "--count", "300"), 300)


def test_weather_amqp(amqp_url: AmqpUrl) -> None:
    check_weather(run_example("weather.py", "--count", "300", "--url", amqp_url()), 300)


# reporter ------------------------------------------------------------------------------
# The example uses Flask when it is installed, else a plain WSGI app: both are run, the
# plain one in a process where `import flask` fails, as in a virtualenv without Flask.

WEB = {
    "flask": {"without": (), "says": "web app: Flask"},
    "plain-wsgi": {"without": ("flask",), "says": "web app: plain WSGI"},
}


def run_reporter(web: str, *args: str) -> str:
    out = run_example("reporter.py", *args, without=WEB[web]["without"])
    assert WEB[web]["says"] in out, (
        f"wanted the {web} app, got: {out.splitlines()[0]!r}"
        + (" (Flask is a test dependency: is it installed?)" if web == "flask" else ""))
    return out


def check_reporter(out: str, requests: int) -> None:
    for phase in ("up", "down"):
        line = re.search(rf"collector {phase}\s*: (\d+) requests (.*) p50 [\d.]+ ms  p99 [\d.]+ ms", out)
        assert line, out
        assert int(line.group(1)) == requests
        assert f"'200 OK': {requests - requests // 10}" in line.group(2), line.group(0)
        assert f"'500 INTERNAL SERVER ERROR': {requests // 10}" in line.group(2), line.group(0)
    dropped = int(re.search(r"outbox: dropped (\d+)", out).group(1))
    assert "unsent after flush 0" in out
    received = re.search(r"collector received (\d+) of (\d+) reports sent \((\d+) not dropped\)", out)
    assert received, out
    assert int(received.group(2)) == 2 * requests
    assert int(received.group(1)) == int(received.group(3)) == 2 * requests - dropped
    metrics = re.search(r"metrics \{'orders.amount': (\d+)\}, exceptions \{'RuntimeError': (\d+)\}", out)
    assert metrics, out          # every report is a sale or the one exception /boom raises
    assert int(metrics.group(1)) + int(metrics.group(2)) == int(received.group(1))


@pytest.mark.parametrize("web", WEB)
def test_reporter_embedded(web: str) -> None:
    check_reporter(run_reporter(web, "--requests", "400"), 400)


@pytest.mark.parametrize("web", WEB)
def test_reporter_amqp(web: str, amqp_url: AmqpUrl) -> None:
    check_reporter(run_reporter(web, "--requests", "400", "--url", amqp_url("collector")), 400)


@pytest.mark.parametrize("web", WEB)
def test_reporter_xmpp(web: str, xmpp_url: Callable[[str], str]) -> None:
    # no broker: the running app is what holds the reports until the collector is back
    check_reporter(run_reporter(web, "--requests", "400", "--url", xmpp_url("collector")), 400)


# media ---------------------------------------------------------------------------------

def check_media(out: str, store_scheme: str) -> None:
    assert re.search(rf"^store\s+on {store_scheme}://", out, re.M), out
    assert re.search(r"^resize\s+on zmq://", out, re.M), out
    for name in ("upload.accept", "resize.thumbnail", "store.put", "notify.send"):
        assert re.search(rf"done\s+{name}", out), out
    key = re.search(r"announced cat\.png as ([0-9a-f]{12})", out)
    assert key, out
    assert f"event media.stored: {{'name': 'cat.png', 'key': '{key.group(1)}'" in out


def test_media_embedded() -> None:
    check_media(run_example("media.py", "--no-amqp"), "zmq")


def test_media_store_on_amqp(amqp_url: AmqpUrl) -> None:
    check_media(run_example("media.py", "--url", amqp_url("store")), "amqp")


# polyglot ------------------------------------------------------------------------------

def test_polyglot_zmq_node_demo() -> None:
    out = run_example("polyglot/zmq_node.py")
    assert 'shouter.shout hello -> "HELLO!"' in out
    assert "missing 1 required positional argument" in out
    assert "Unreachable: no method 'nosuch'" in out


def test_polyglot_zmq_node_called_by_vertebra() -> None:
    with vertebra.Hub("tcp://127.0.0.1:0") as hub:
        node = start_example("polyglot/zmq_node.py", "--url", hub.url)
        try:
            with vertebra.connect(hub.url, timeout=5.0) as bus:
                deadline = time.monotonic() + 20
                while "shouter" not in {s.name for s in bus.nodes()}:
                    assert time.monotonic() < deadline, "the pyzmq node never showed up"
                    time.sleep(0.1)
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
        finally:
            stop(node)
        assert node.returncode == 0


def test_polyglot_pika_client_calls_vertebra_node(amqp_url: AmqpUrl) -> None:
    out = run_example("polyglot/pika_client.py", "--url", amqp_url("greeter", "nobody"))
    assert "greeter.hello -> Hello, pika!" in out
    assert "greeter.divide -> error remote: ZeroDivisionError: division by zero" in out
    assert "greeter.nosuch -> error unreachable: Unreachable" in out
    assert "nobody.ping -> error unreachable: Unreachable: returned: NO_ROUTE" in out


def test_hello_on_xmpp(xmpp_url: Callable[[str], str]) -> None:
    out = run_example("hello.py", "both", "Xena", "--url", xmpp_url("greeter"))
    assert "Hello, Xena!" in out
    assert "remote error: ZeroDivisionError: division by zero" in out


def test_pipeline_on_xmpp(xmpp_url: Callable[[str], str]) -> None:
    check_pipeline(run_example("pipeline.py", "--jobs", "30", "--url", xmpp_url("pipeline")), 30)


def test_weather_on_xmpp(xmpp_url: Callable[[str], str]) -> None:
    check_weather(run_example("weather.py", "--count", "100", "--url", xmpp_url("weather")), 100)

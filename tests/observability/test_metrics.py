"""Prometheus metrics: the same figures as the stats call, under conventional names."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.core import CollectorRegistry

import vertebra
from vertebra import Node, rpc
from vertebra.nodes.metrics import start_metrics_server


class Shop(Node):
    name = "shop"

    @rpc
    def buy(self, item: str) -> str:
        if item == "nothing":
            raise ValueError("nothing to buy")
        return item


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_exposes_handler_and_outbox_figures():
    with vertebra.connect("memory://metrics") as bus:
        bus.serve(Shop())
        port = free_port()
        start_metrics_server(bus.core, port, registry=CollectorRegistry())
        shop = bus.proxy("shop")
        for _ in range(3):
            shop.buy("apple")
        with pytest.raises(vertebra.RemoteError):
            shop.buy("nothing")
        bus.publish("x.y", 1)
        bus.flush()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lines = set(text.splitlines())
    assert 'vertebra_handler_calls_total{method="buy",service="shop"} 4.0' in lines
    assert 'vertebra_handler_errors_total{method="buy",service="shop"} 1.0' in lines
    assert 'vertebra_handler_in_flight{method="buy",service="shop"} 0.0' in lines
    assert 'vertebra_handler_latency_seconds_count{method="buy",service="shop"} 4.0' in lines
    assert 'vertebra_handler_latency_seconds_bucket{le="+Inf",method="buy",service="shop"} 4.0' in lines
    buckets = sorted((float(line.split('le="')[1].split('"')[0]), float(line.rsplit(" ", 1)[1]))
                     for line in lines if line.startswith("vertebra_handler_latency_seconds_bucket{")
                     and 'method="buy"' in line and "+Inf" not in line)
    assert len(buckets) == 16
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)     # cumulative
    assert any(line.startswith('vertebra_handler_latency_seconds_sum{method="buy",service="shop"}')
               for line in lines)
    assert 'vertebra_outbox_events_total{outcome="sent"} 1.0' in lines
    assert 'vertebra_outbox_messages{state="queued"} 0.0' in lines


def test_serve_command_exposes_metrics(tmp_path):
    import subprocess
    import sys
    import textwrap
    import time

    (tmp_path / "shopnode.py").write_text(textwrap.dedent("""
        from vertebra import Node, rpc
        class Shop(Node):
            @rpc
            def buy(self, item):
                return item
    """))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vertebra", "serve", "shopnode:Shop", "--url", "memory://",
                             "--metrics-port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving shopnode:Shop" in proc.stderr.readline()
        text = ""
        for _ in range(100):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.05)
        assert 'vertebra_handler_calls_total{method="buy",service="shop"} 0.0' in text
    finally:
        proc.terminate()
        proc.wait(30)

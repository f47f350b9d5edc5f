"""What a process carries: optional heavy modules are imported only when they are used.

Each check runs in a fresh interpreter, since pytest itself (and other tests) import
opentelemetry, sqlite3 and importlib.metadata into this one.  docs/performance.md has the
figures (peak RSS of a node, before and after).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ["opentelemetry", "sqlite3", "importlib.metadata", "msgpack", "zmq.auth"]


def _loaded_after(script: str) -> dict[str, bool]:
    """Run ``script`` in a fresh interpreter; which of HEAVY it left in sys.modules."""
    code = textwrap.dedent(script) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, bool] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_a_call_on_memory_carries_none_of_the_optional_modules() -> None:
    loaded = _loaded_after("""
        import vertebra
        from vertebra import Node, rpc

        class Echo(Node):
            name = "echo"

            @rpc
            def echo(self, value: str) -> str:
                return value

        with vertebra.connect("memory://") as bus:
            bus.serve(Echo())
            assert bus.proxy("echo").echo("x") == "x"
    """)
    assert loaded == {m: False for m in HEAVY}


def test_importing_the_zmq_transport_carries_none_of_them() -> None:
    pytest.importorskip("zmq", reason="the zmq extra is not installed (the bare-install run)")
    loaded = _loaded_after("import vertebra.transports.zmq, vertebra.transports.zmq.hub")
    assert loaded == {m: False for m in HEAVY}


def test_each_is_imported_when_it_is_used(tmp_path: pytest.TempPathFactory) -> None:
    loaded = _loaded_after(f"""
        import vertebra
        from vertebra.dispatch.spool import Spool
        from vertebra.wire.codec import get_codec
        from vertebra.wire.envelope import Envelope
        from vertebra.transports import transport_class

        Spool({str(tmp_path / "spool.db")!r})
        get_codec("msgpack").encode(Envelope("reply", re="x", result=1))
        try:
            transport_class("nosuch")
        except ValueError:
            pass
    """)
    assert loaded["sqlite3"] and loaded["msgpack"] and loaded["importlib.metadata"]


def test_tracing_starts_when_a_provider_is_set_after_the_bus_is_running() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import vertebra
        from vertebra import Node, rpc

        class Echo(Node):
            name = "echo"

            @rpc
            async def echo(self, value: str) -> str:
                return value

        with vertebra.connect("memory://") as bus:
            bus.serve(Echo())
            echo = bus.proxy("echo")
            echo.echo("before")
            assert "opentelemetry" not in sys.modules
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter)
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            echo.echo("after")
        print(sorted(s.name for s in exporter.get_finished_spans()))
    """)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['echo.echo call', 'echo.echo handle']"

"""The public surface is exactly the contract, and the layers never point the wrong way."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import vertebra

SRC = pathlib.Path(vertebra.__file__).parent
TRANSPORT_LIBS = ("zmq", "amqp", "slixmpp")


def test_public_names_are_the_contract():
    assert set(vertebra.__all__) == {
        "AsyncBus", "Bus", "CallContext", "CallTimeout", "Hub", "Node", "ProtocolError",
        "RemoteError", "Unreachable", "VertebraError", "__version__", "connect", "connect_async",
        "current", "event", "rpc", "serve", "task"}
    for name in vertebra.__all__:
        if name != "Hub":
            assert getattr(vertebra, name) is not None
            assert name.startswith("__") or getattr(vertebra, name).__doc__


def test_error_tree():
    assert issubclass(vertebra.CallTimeout, TimeoutError)
    for cls in (vertebra.RemoteError, vertebra.CallTimeout, vertebra.Unreachable, vertebra.ProtocolError):
        assert issubclass(cls, vertebra.VertebraError)
    err = vertebra.RemoteError("KeyError", "k", "tb")
    assert (err.type, err.message, err.remote_traceback) == ("KeyError", "k", "tb")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
            out.update(f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted((SRC / "dispatch").glob("*.py")), ids=lambda p: p.name)
def test_dispatch_imports_no_transport_module_or_library(path):
    for name in _imports(path):
        top = name.lstrip(".").split(".")[0]
        assert top not in TRANSPORT_LIBS, f"{path.name} imports {name}"
        for t in ("memory", "zmq", "amqp", "xmpp"):
            assert f"transports.{t}" not in name, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sorted((SRC / "transports").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_transports_never_import_nodes_or_workflow(path):
    for name in _imports(path):
        assert "nodes" not in name.split(".") and "workflow" not in name.split("."), f"{path} imports {name}"


def test_importing_vertebra_and_using_memory_loads_no_transport_library():
    code = ("import sys, vertebra\n"
            "from vertebra import Node, rpc\n"
            "class E(Node):\n"
            "    @rpc\n"
            "    def ping(self): return 'pong'\n"
            "with vertebra.connect('memory://') as bus:\n"
            "    bus.serve(E()); assert bus.proxy('e').ping() == 'pong'\n"
            f"print(sorted(m for m in {TRANSPORT_LIBS!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_unknown_scheme_names_the_known_ones():
    with pytest.raises(ValueError, match="memory"):
        vertebra.connect("nope://x")


@pytest.mark.parametrize("path", sorted((SRC / "transports").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_transports_never_import_dispatch(path):
    for name in _imports(path):
        assert "dispatch" not in name.split("."), f"{path} imports {name}"


@pytest.mark.parametrize("path", sorted((SRC / "wire").glob("*.py")), ids=lambda p: p.name)
def test_wire_types_import_nothing_else_of_vertebra(path):
    for name in _imports(path):
        assert not name.startswith("..") and not name.startswith("vertebra"), f"{path.name} imports {name}"

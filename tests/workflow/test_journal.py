"""Durable workflows in one process: the journal, resuming, the idempotency key, failures,
ownership and the CLI's --list (the starter's death across processes is in
test_durable_killed.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading

import pytest
from click.testing import CliRunner

from tests.conformance.util import eventually
from vertebra import Node, rpc
from vertebra.cli import main
from vertebra.workflow import Journal, WorkflowBusy, WorkflowError, fan_out, group, resume_async, step
from vertebra.workflow.definition import dump_value, dump_workflow, load_value, load_workflow, step_at
from vertebra.workflow.journal import redact_url

from .services import Store


@pytest.fixture
def scheme() -> str:
    """The journal does not depend on the transport: memory:// only (the other transports
    run the cross-process test)."""
    return "memory"


class Gate(Node):
    """Steps that count their runs; ``wait`` blocks until ``opened`` is set."""

    name = "gate"

    def __init__(self) -> None:
        self.runs: list[tuple[str, object]] = []
        self.opened = threading.Event()
        self.lock = threading.Lock()

    def _ran(self, what: str, x: object) -> None:
        with self.lock:
            self.runs.append((what, x))

    def count(self, what: str) -> int:
        with self.lock:
            return sum(1 for w, _ in self.runs if w == what)

    @rpc
    def inc(self, x: int) -> int:
        """x + 1."""
        self._ran("inc", x)
        return x + 1

    @rpc
    def split(self, n: int) -> list[int]:
        """[0 .. n-1]."""
        self._ran("split", n)
        return list(range(n))

    @rpc
    def wait(self, x: object) -> object:
        """x, once the gate is open."""
        self._ran("wait", x)
        self.opened.wait(60)
        return x

    @rpc
    def blob(self, xs: list[int], n: int) -> bytes:
        """Some bytes."""
        self._ran("blob", xs)
        return bytes([n, len(xs), 255])

    @rpc
    def total(self, xs: list[int]) -> int:
        """The sum."""
        self._ran("total", xs)
        return sum(xs)

    @rpc
    def explode(self, x: object) -> None:
        """Always fails."""
        self._ran("explode", x)
        raise ArithmeticError("no")

    @rpc
    def undo(self, key: str) -> None:
        """A compensation that waits for the gate."""
        self._ran("undo", key)
        self.opened.wait(60)


class KeyedGate(Gate):
    """The same, dropping repeats of an idempotency key."""

    name = "keyed"
    dedup_window = 300.0


@pytest.fixture
async def gate(open_bus):
    node = Gate()
    await (await open_bus("gate")).serve(node)
    return node


async def _stopped_while(run: asyncio.Future[object], cond) -> None:
    """Let ``run`` go until ``cond()``, then cancel it: the process 'dies' mid-step."""
    await eventually(cond, 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


def test_a_workflow_is_stored_as_json_and_rebuilt_the_same():
    undo = step("store.delete", b"\x00\xff")
    flow = (step("a.b", 1, b"raw", {"$odd": 1}, k=[1, 2], retries=2, timeout=5, compensate=undo)
            | group(step("c.d"), step("e.f") | step("g.h")) | fan_out(step("i.j"), limit=3))
    text = dump_workflow(flow)
    again = load_workflow(text)
    assert str(again) == str(flow) and dump_workflow(again) == text
    first = step_at(again, "0")
    assert first.args == (1, b"raw", {"$odd": 1}) and dict(first.kwargs) == {"k": [1, 2]}
    assert (first.retries, first.timeout, first.compensate) == (2, 5, undo)
    assert [step_at(again, p).name for p in ("1.0", "1.1.0", "1.1.1", "2.0", "2.7")] == \
        ["c.d", "e.f", "g.h", "i.j", "i.j"]
    with pytest.raises(KeyError):
        step_at(again, "1.2")
    assert step_at(step("x.y"), "0").name == "x.y"                  # a lone step is path 0
    assert load_value(dump_value({"b": b"\x01", "l": [None, 1.5]})) == {"b": b"\x01", "l": [None, 1.5]}


async def test_a_durable_run_keeps_each_step_and_an_ended_one_is_not_run_again(open_bus, gate, tmp_path):
    client = await open_bus()
    path = tmp_path / "wf.db"
    flow = step("gate.split") | fan_out(step("gate.inc")) | step("gate.total")
    assert await flow.run_async(client, 3, workflow_id="w1", journal=path) == 6
    with Journal(path) as j:
        (entry,) = j.entries()
    assert (entry.id, entry.status, entry.steps_done, entry.input) == ("w1", "finished", 5, "3")
    assert load_value(entry.result or "") == 6 and entry.owner == ""
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT path, name, result FROM steps ORDER BY path").fetchall()
    assert rows == [("0", "gate.split", "[0,1,2]"), ("1.0", "gate.inc", "1"), ("1.1", "gate.inc", "2"),
                    ("1.2", "gate.inc", "3"), ("2", "gate.total", "6")]
    ran = len(gate.runs)
    assert await flow.run_async(client, 3, workflow_id="w1", journal=path) == 6   # its stored result
    assert len(gate.runs) == ran


async def test_resume_needs_only_the_id_and_skips_the_finished_steps(open_bus, gate, tmp_path):
    client = await open_bus()
    path = tmp_path / "wf.db"
    flow = (step("gate.split") | fan_out(step("gate.inc") | step("gate.wait"))
            | group(step("gate.total"), step("gate.blob", 7)))
    run = asyncio.ensure_future(flow.run_async(client, 3, workflow_id="w2", journal=path))
    await _stopped_while(run, lambda: gate.count("wait") == 3)
    with Journal(path) as j:
        entry = j.entry("w2")
    assert entry is not None and (entry.status, entry.steps_done) == ("running", 4)   # split, 3 x inc
    gate.opened.set()
    seen = []
    other = await open_bus("client2")
    assert await resume_async(other, "w2", path, progress=seen.append) == [6, bytes([7, 3, 255])]
    assert (gate.count("split"), gate.count("inc"), gate.count("wait")) == (1, 3, 6)   # the waits again
    assert (gate.count("total"), gate.count("blob")) == (1, 1)
    replayed = sorted((p.path, p.step) for p in seen if p.event == "replayed")
    assert replayed == [("0", "gate.split"), ("1.0.0", "gate.inc"), ("1.1.0", "gate.inc"),
                        ("1.2.0", "gate.inc")]
    assert seen[-1].event == "finished"
    with Journal(path) as j:                    # bytes survive the journal
        assert await resume_async(other, "w2", j) == [6, bytes([7, 3, 255])]
    with pytest.raises(LookupError):
        await resume_async(other, "nope", path)


async def test_each_step_call_carries_the_workflow_id_and_step_path_as_idempotency_key(open_bus, tmp_path):
    keyed = KeyedGate()
    server = await open_bus("keyed")
    await server.serve(keyed)
    client = await open_bus()
    flow = step("keyed.inc") | group(step("keyed.inc"), step("keyed.inc"))
    assert await flow.run_async(client, 1, workflow_id="k", journal=tmp_path / "wf.db") == [3, 3]
    assert keyed.count("inc") == 3
    for key in ("k:0", "k:1.0", "k:1.1"):   # the node took these keys already: it drops repeats
        client.cast("keyed", "inc", [100], headers={"idempotency-key": key})
    client.cast("keyed", "inc", [200], headers={"idempotency-key": "k:2"})
    (runtime,) = server.runtimes
    await eventually(lambda: runtime.counts["duplicates"] == 3 and keyed.count("inc") == 4)
    assert ("inc", 100) not in keyed.runs and keyed.runs[-1] == ("inc", 200)


async def test_a_failure_is_kept_and_compensation_goes_on_after_a_stop(open_bus, gate, tmp_path):
    store = Store()
    await (await open_bus("store")).serve(store)
    client = await open_bus()
    path = tmp_path / "wf.db"
    flow = (step("store.put", compensate=step("gate.undo"))
            | step("store.put", compensate=step("store.delete"))
            | step("gate.explode"))
    run = asyncio.ensure_future(flow.run_async(client, "thing", workflow_id="w3", journal=path))
    await _stopped_while(run, lambda: gate.count("undo") == 1)       # the 2nd put is undone already
    with Journal(path) as j:
        entry = j.entry("w3")
    assert entry is not None and entry.status == "compensating" and store.deleted == ["key-1"]
    gate.opened.set()
    with pytest.raises(WorkflowError) as info:
        await resume_async(client, "w3", path)
    assert info.value.step == "gate.explode" and info.value.compensated == ("store.put", "store.put")
    assert (gate.count("explode"), gate.count("undo"), store.deleted) == (1, 2, ["key-1"])
    with pytest.raises(WorkflowError) as again:                        # failed is final: no new run
        await flow.run_async(client, "thing", workflow_id="w3", journal=path)
    assert again.value.step == "gate.explode" and "ArithmeticError" in str(again.value)
    assert gate.count("explode") == 1 and len(store.items) == 2


async def test_an_id_belongs_to_one_workflow_and_one_live_process(open_bus, gate, tmp_path):
    client = await open_bus()
    path = tmp_path / "wf.db"
    flow = step("gate.inc") | step("gate.wait")
    run = asyncio.ensure_future(flow.run_async(client, 1, workflow_id="w4", journal=path))
    await eventually(lambda: gate.count("wait") == 1)
    with pytest.raises(WorkflowBusy, match="this process"):          # the same process, at once
        await resume_async(client, "w4", path)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    with pytest.raises(ValueError, match="another definition"):
        await (step("gate.inc") | step("gate.inc")).run_async(client, 1, workflow_id="w4", journal=path)
    with pytest.raises(ValueError, match="another input"):
        await flow.run_async(client, 2, workflow_id="w4", journal=path)
    with sqlite3.connect(path) as db:                                   # owned by a live process
        db.execute("UPDATE workflows SET owner = ?", (f"{socket.gethostname()}:{os.getppid()}",))
    with pytest.raises(WorkflowBusy, match="alive"):
        await resume_async(client, "w4", path)
    gate.opened.set()
    assert await resume_async(client, "w4", path, force=True) == 2
    with pytest.raises(ValueError, match="workflow_id"):
        await flow.run_async(client, 1, journal=path)
    with pytest.raises(ValueError, match="orchestrated"):
        await flow.run_async(client, 1, mode="choreographed", workflow_id="w5", journal=path)


def test_urls_are_kept_without_passwords_or_secret_keys():
    assert redact_url("zmq://127.0.0.1:7000") == ("zmq://127.0.0.1:7000", True)
    assert redact_url("amqp://guest:guest@h1:5672,h2:5673/%2F?prefix=a.") == \
        ("amqp://guest@h1:5672,h2:5673/%2F?prefix=a.", False)
    url, whole = redact_url("zmq://h:1?server_key=PUB&secret_key=SEC")
    assert not whole and "SEC" not in url and "server_key=PUB" in url


async def test_the_run_command_lists_the_journal(open_bus, gate, tmp_path):
    client = await open_bus()
    path = tmp_path / "wf.db"
    await (step("gate.inc") | step("gate.inc")).run_async(client, 1, workflow_id="listed", journal=path)
    out = await asyncio.to_thread(CliRunner().invoke, main, ["run", "--list", "--journal", str(path)])
    assert out.exit_code == 0, out.output
    header, row = out.output.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "STEPS"]
    assert row.split()[:3] == ["listed", "finished", "2"] and row.endswith("gate.inc() | gate.inc()")
    missing = await asyncio.to_thread(CliRunner().invoke, main, ["run", "--resume", "x", "--journal",
                                                                 str(tmp_path / "none.db")])
    assert missing.exit_code != 0 and "no journal" in missing.output

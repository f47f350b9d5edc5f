"""A durable workflow whose starter is SIGKILLed while step 3 runs, resumed by another
process with ``vertebra run --resume``: the finished steps are not run again, the step
that was running runs at most once more (exactly once on a node with dedup_window)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.conftest import SCHEMES
from tests.conformance.util import eventually
from vertebra.workflow import Journal
from vertebra.workflow.definition import load_workflow

from .durable_procs import FLOW, RESULT, DedupLedger, Ledger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=[s for s in ("zmq", "amqp") if s in SCHEMES])
def scheme(request: pytest.FixtureRequest) -> str:
    """Transports that cross processes (memory:// cannot)."""
    return str(request.param)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("VERTEBRA_URL", None)
    env.pop("VERTEBRA_JOURNAL", None)
    return env


def _entry(path: Path, workflow_id: str):
    with Journal(path) as j:
        return j.entry(workflow_id)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("dedup", [False, True],
                         ids=["plain-node", "dedup-node"])
async def test_a_killed_starter_is_resumed_from_the_journal(open_bus, url_for, scheme, tmp_path, dedup):
    node = DedupLedger() if dedup else Ledger()
    await (await open_bus("ledger")).serve(node)
    journal, wid = tmp_path / "wf.db", f"order-42-{scheme}"
    with open(tmp_path / "starter.err", "w") as err:
        starter = subprocess.Popen([sys.executable, "-m", "tests.workflow.durable_procs", url_for("client"),
                                    str(journal), wid], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                                   stderr=err)
    try:
        await eventually(lambda: node.runs[("hold", 4)] == 1, 60, "step 3 started")
    finally:
        starter.kill()                       # SIGKILL, while step 3 runs
        starter.wait(30)
    entry = _entry(journal, wid)
    assert entry is not None and entry.status == "running" and entry.steps_done == 2
    assert str(load_workflow(entry.definition)) == str(FLOW)     # what resume rebuilds

    node.release.set()                       # the dead starter's step 3 finishes now
    if dedup:                                # its answer is kept for the resumed call's duplicate
        await eventually(lambda: node.holds_done == 1, 30, "the first hold finished")
    command = [sys.executable, "-m", "vertebra", "run", "--resume", wid, "--journal", str(journal)]
    if scheme != "zmq":                      # the journal keeps no passwords: say where to go
        command += ["--url", url_for("client2")]
    out = await asyncio.to_thread(subprocess.run, command, cwd=tmp_path, env=_env(), capture_output=True,
                                  text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == RESULT
    assert node.runs[("add", 1, 1)] == 1                      # step 1: once, by the starter
    assert node.runs[("double", 2)] == 1                      # step 2: once, by the starter
    assert node.runs[("hold", 4)] == (1 if dedup else 2)      # step 3: at-least-once, at most twice
    assert node.runs[("add", 104, 10)] == 1                   # step 4: once, by the resumer
    progress = [line for line in out.stderr.splitlines() if line.startswith("[workflow]")]
    assert progress[:2] == ["[workflow] replayed ledger.add", "[workflow] replayed ledger.double"]
    assert progress[-1] == f"[workflow] finished: {RESULT}"
    entry = _entry(journal, wid)
    assert entry is not None and entry.status == "finished" and entry.steps_done == 4

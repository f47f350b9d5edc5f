"""A node SIGKILLed in the middle of a workflow: orchestrated, the step's policy decides;
choreographed on a transport that redelivers, the workflow completes once the node is back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vertebra.workflow import WorkflowError, step

from .services import Maths

ROOT = Path(__file__).resolve().parents[2]


def start_mid(url: str, marker: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.workflow.procs", url, str(marker)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def wait_started(marker: Path) -> None:
    for _ in range(400):
        if marker.exists() and marker.read_text():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the step never started")


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


async def kill_when_started(proc: subprocess.Popen[str], marker: Path) -> None:
    await wait_started(marker)
    kill(proc)


async def needs_processes(open_bus) -> None:
    probe = await open_bus("probe")
    if not probe.transport.capabilities.multi_process:
        pytest.skip("capability multi_process=False: no node in another process to kill")


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_orchestrated_step_retries_on_a_live_replica_or_fails_naming_it(open_bus, url_for, tmp_path):
    await needs_processes(open_bus)
    await (await open_bus("maths")).serve(Maths())
    client = await open_bus()
    marker = tmp_path / "started"
    victim = start_mid(url_for("mid"), marker)
    flow = step("maths.inc") | step("mid.slow_inc") | step("maths.double")
    run = asyncio.ensure_future(flow.run_async(client, 1, timeout=30))
    await kill_when_started(victim, marker)
    with pytest.raises(WorkflowError) as info:      # no retries, no replica left: it fails
        await asyncio.wait_for(run, 60)
    assert info.value.step == "mid.slow_inc"

    marker.unlink()
    victim = start_mid(url_for("mid"), marker)
    spare = None
    try:
        patient = step("maths.inc") | step("mid.slow_inc", retries=2, timeout=4) | step("maths.double")
        run = asyncio.ensure_future(patient.run_async(client, 1))
        await wait_started(marker)                    # the first attempt runs on the victim...
        spare = start_mid(url_for("mid"), tmp_path / "spare")
        kill(victim)                                  # ... which dies mid-step
        assert await asyncio.wait_for(run, 60) == 6   # the retry ran on the spare
        assert (tmp_path / "spare").read_text().split() == ["2"]
    finally:
        for p in (victim, spare):
            if p is not None:
                p.kill()
                p.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_choreographed_workflow_completes_after_the_node_restarts(open_bus, url_for, tmp_path):
    await needs_processes(open_bus)
    probe = await open_bus("probe2")
    if not probe.transport.capabilities.task_redelivery:
        pytest.skip("capability task_redelivery=False")
    await (await open_bus("maths")).serve(Maths())
    client = await open_bus()
    marker = tmp_path / "started"
    victim = start_mid(url_for("mid"), marker)
    flow = step("maths.inc") | step("mid.slow_inc") | step("maths.double")
    run = asyncio.ensure_future(flow.run_async(client, 1, mode="choreographed", timeout=120))
    await kill_when_started(victim, marker)         # mid-step: the task was not acked
    assert not run.done()
    restarted = start_mid(url_for("mid"), tmp_path / "again")
    try:
        assert await asyncio.wait_for(run, 120) == 6
    finally:
        restarted.kill()
        restarted.wait(10)

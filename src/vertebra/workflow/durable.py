"""Durable orchestrated runs: a workflow with a journal and an id survives the death of
the process that started it.

``flow.run(bus, value, workflow_id="order-42", journal="wf.db")`` keeps the workflow's
definition and input in the journal (:mod:`vertebra.workflow.journal`) before the first
step, and each finished step's result before the next step starts. Any process that
later runs the same workflow with the same id and journal — or calls :func:`resume`
with nothing but the id, or runs ``vertebra run --resume order-42`` — takes the results
of the finished steps from the journal and runs only the rest. Steps are at-least-once:
one that was running when its process died runs again. Each step's call carries the
header ``idempotency-key: <workflow id>:<step path>`` (its compensation's:
``<workflow id>:<step path>:compensate``), so a node with ``dedup_window`` drops the
repeat. A workflow that ended is not run again: its stored result is returned, or its
stored failure raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..dispatch.options import IDEMPOTENCY_HEADER
from ..wire.errors import error_from_wire, error_to_wire
from .canvas import NOTHING, Step, Workflow
from .definition import dump_value, dump_workflow, load_value, load_workflow, root_path, step_at
from .journal import Journal, JournalArg, Record
from .runner import Progress, ProgressCallback, WorkflowError, _reporter, _Run

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus
    from ..dispatch.sync import Bus

__all__ = ["resume", "resume_async", "run_durable"]


class _JournalMemo:
    """The runner's memo, kept in a journal."""

    def __init__(self, journal: Journal, workflow_id: str, rec: Record) -> None:
        self.journal = journal
        self.workflow_id = workflow_id
        self.results: dict[str, Any] = {path: load_value(text) for path, text in rec.done}
        self.compensated: set[str] = set(rec.compensated)

    def headers(self, path: str, compensation: bool = False) -> dict[str, str]:
        key = f"{self.workflow_id}:{path}" + (":compensate" if compensation else "")
        return {IDEMPOTENCY_HEADER: key}

    async def finished(self, path: str, step: Step, result: Any) -> None:
        await self.journal.step_done(self.workflow_id, path, step.name, dump_value(result))

    async def undone(self, path: str, step: Step) -> None:
        await self.journal.step_compensated(self.workflow_id, path, step.name)


def _dump_error(exc: WorkflowError) -> str:
    cause = {**error_to_wire(exc.cause, exc.remote_traceback), "node": exc.node}
    return json.dumps({"step": exc.step, "node": exc.node, "cause": cause,
                       "compensated": list(exc.compensated)})


def _load_error(text: str | None) -> WorkflowError:
    d = json.loads(text or "{}")
    return WorkflowError(str(d.get("step", "?")), error_from_wire(d.get("cause")), str(d.get("node", "")),
                         tuple(d.get("compensated", ())))


@contextlib.asynccontextmanager
async def _opened(journal: JournalArg) -> AsyncIterator[Journal]:
    if isinstance(journal, Journal):
        yield journal
        return
    j = Journal(journal)
    try:
        yield j
    finally:
        await asyncio.to_thread(j.close)


async def _drive(flow: Workflow, bus: AsyncBus, value: Any, rec: Record, journal: Journal,
                 workflow_id: str, report: ProgressCallback) -> Any:
    entry = rec.entry
    if entry.status == "finished":
        result = load_value(entry.result or "null")
        report(Progress("finished", detail=result))
        return result
    if entry.status == "failed":
        raise _load_error(entry.error)
    memo = _JournalMemo(journal, workflow_id, rec)
    done = [(step_at(flow, path), memo.results[path], path) for path, _ in rec.done]
    run = _Run(bus, report, memo, done)
    if entry.status == "compensating":          # died while undoing: finish undoing
        failure = _load_error(entry.error)
    else:
        try:
            result = await run.run(flow, value, root_path(flow))
        except WorkflowError as exc:
            failure = exc
            await journal.set_status(workflow_id, "compensating", error=_dump_error(exc))
        else:
            await journal.set_status(workflow_id, "finished", result=dump_value(result))
            report(Progress("finished", detail=result))
            return result
    failure.compensated = await run.compensate()
    await journal.set_status(workflow_id, "failed", error=_dump_error(failure))
    raise failure


async def run_durable(flow: Workflow, bus: AsyncBus, value: Any = NOTHING,
                      progress: ProgressCallback | None = None,
                      journal: JournalArg = None,
                      workflow_id: str = "", force: bool = False) -> Any:
    """Run ``flow`` as workflow ``workflow_id`` of ``journal``, resuming it if the journal
    has it unfinished (same definition and input, else ValueError); its result.

    ``force`` takes the workflow over even when its recorded owner looks alive (a process on
    another host, or a reused pid); without it that raises :class:`WorkflowBusy`.
    """
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError("a durable run needs a workflow_id (a non-empty string)")
    definition = dump_workflow(flow)
    input_text = None if value is NOTHING else dump_value(value)
    async with _opened(journal) as j:
        rec = await j.claim(workflow_id, definition, input_text, tuple(bus.urls), force)
        try:
            return await _drive(flow, bus, value, rec, j, workflow_id, _reporter(progress))
        finally:
            j.release(workflow_id)


async def resume_async(bus: AsyncBus, workflow_id: str,
                       journal: JournalArg = None, *,
                       progress: ProgressCallback | None = None, force: bool = False) -> Any:
    """Go on with workflow ``workflow_id`` from ``journal``, rebuilt from its stored
    definition and input; its result (or its stored one, if it had finished).

    LookupError when the journal has no such workflow; :class:`WorkflowError` when it
    fails (or had failed); :class:`~vertebra.workflow.journal.WorkflowBusy` when a live
    process runs it.
    """
    async with _opened(journal) as j:
        rec = await j.load(workflow_id)
        if rec is None:
            raise LookupError(f"no workflow {workflow_id!r} in {j.path}")
        flow = load_workflow(rec.entry.definition)
        value = NOTHING if rec.entry.input is None else load_value(rec.entry.input)
        return await run_durable(flow, bus, value, progress, j, workflow_id, force)


def resume(bus: Bus, workflow_id: str, journal: JournalArg = None, *,
           progress: ProgressCallback | None = None, force: bool = False) -> Any:
    """:func:`resume_async` on a sync bus: block for the workflow's result."""
    return bus.portal.run(resume_async(bus.core, workflow_id, journal, progress=progress, force=force))

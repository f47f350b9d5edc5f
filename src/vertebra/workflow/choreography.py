"""Running a chain choreographed: a routing slip travels with the work, each node hands its
result to the next step itself, and the last one announces the end — no coordinator.

The caller only starts the first step and listens for the end (and for progress) on a
topic of its own. Because each hand-off is a task, on a durable transport (AMQP) a
workflow in flight survives the caller's disconnect and the restart of a node: the step
waits in its queue. Only sequences can be choreographed: a join (fan-in) needs someone to
wait for all the branches, which is what orchestration is for.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from dataclasses import dataclass
from typing import Any

from ..dispatch.bus import AsyncBus
from ..dispatch.slip import SLIP_HEADER, Slip, SlipStep
from ..wire.envelope import new_id
from ..wire.errors import CallTimeout, error_from_wire
from .canvas import NOTHING, Chain, Step, Workflow
from .runner import Progress, ProgressCallback, WorkflowError, _reporter

__all__ = ["run_choreographed"]

_TOPIC_ROOT = "_vertebra.workflow"
_listeners: weakref.WeakKeyDictionary[AsyncBus, _Listener] = weakref.WeakKeyDictionary()
_ids = itertools.count(1)


@dataclass(slots=True)
class _Run:
    fut: asyncio.Future[Any]
    report: ProgressCallback
    names: list[str]
    reported: int = 0            # steps reported done so far

    def done_through(self, index: int) -> None:
        """Report steps done up to ``index`` (inclusive) that were not reported yet, in
        order: events from different nodes may arrive out of order, or not before the end."""
        while self.reported <= min(index, len(self.names) - 1):
            i = self.reported
            self.report(Progress("done", self.names[i], i))
            if i + 1 < len(self.names):
                self.report(Progress("started", self.names[i + 1], i + 1))
            self.reported += 1


class _Listener:
    """One subscription per bus to its own workflow topic; runs are told apart by id."""

    def __init__(self, bus: AsyncBus) -> None:
        self.prefix = f"{_TOPIC_ROOT}.b{next(_ids)}{new_id()}"
        self.runs: dict[str, _Run] = {}

    async def start(self, bus: AsyncBus) -> None:
        await bus.subscribe(f"{self.prefix}.*", self.on_event)

    def on_event(self, topic: str, payload: Any) -> None:
        if not isinstance(payload, dict) or payload.get("run") not in self.runs:
            return
        run = self.runs[payload["run"]]
        if run.fut.done():
            return
        if "result" in payload:
            run.done_through(len(run.names) - 1)
            run.fut.set_result(payload["result"])
        elif "error" in payload:
            step = str(payload.get("step", "?"))
            index = int(payload.get("index", -1))
            run.done_through(index - 1)
            cause = error_from_wire(payload["error"])
            run.report(Progress("failed", step, index, detail=str(cause)))
            run.fut.set_exception(WorkflowError(step, cause, str(payload["error"].get("node", ""))))
        elif "step" in payload:
            run.done_through(int(payload.get("index", -1)))


async def _listener(bus: AsyncBus) -> _Listener:
    listener = _listeners.get(bus)
    if listener is None:
        listener = _listeners[bus] = _Listener(bus)
        await listener.start(bus)
    return listener


def _sequence(flow: Workflow) -> list[Step]:
    if isinstance(flow, Step):
        return [flow]
    if isinstance(flow, Chain):
        return [s for part in flow.parts for s in _sequence(part)]
    raise ValueError("only a chain of steps can be choreographed; groups and fan-outs need "
                     "a coordinator: run them orchestrated")


async def run_choreographed(flow: Workflow, bus: AsyncBus, value: Any = NOTHING,
                            progress: ProgressCallback | None = None, timeout: float = 60.0) -> Any:
    """Start ``flow`` with a routing slip and wait (up to ``timeout``) for its end."""
    steps = _sequence(flow)
    report = _reporter(progress)
    listener = await _listener(bus)
    run_id = new_id()
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    listener.runs[run_id] = _Run(fut, report, [s.name for s in steps])
    try:
        first, rest = steps[0], steps[1:]
        slip = Slip(run_id, f"{listener.prefix}.{run_id}",
                    tuple(SlipStep(s.service, s.method, s.args, s.kwargs, s.retries) for s in rest),
                    0, first.retries)
        args = list(first.args) if value is NOTHING else [value, *first.args]
        report(Progress("started", first.name, 0))
        bus.cast(first.service, first.method, args, dict(first.kwargs), kind="task",
                 headers={SLIP_HEADER: slip.encode()})
        try:
            result = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CallTimeout(f"choreographed workflow {run_id}: no end within {timeout:g}s") from None
        report(Progress("finished", detail=result))
        return result
    finally:
        listener.runs.pop(run_id, None)

"""Running a workflow orchestrated: the caller drives every step and awaits its result.

Each step is a call through the bus (retried per its policy, bounded by its timeout);
groups and fan-outs run their branches at once and cancel the rest when one fails. A
failure stops the workflow with :class:`WorkflowError` naming the step, the node and the
remote traceback, after running the compensations of the steps that had completed, in
reverse order. Progress is reported as :class:`Progress` events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..dispatch.bus import AsyncBus
from ..wire.errors import CallTimeout, RemoteError, Unreachable, VertebraError
from .canvas import NOTHING, Chain, FanOut, Group, Step, Workflow

__all__ = ["Progress", "WorkflowError", "default_progress", "run_orchestrated", "stream_orchestrated"]

log = logging.getLogger("vertebra.workflow")


class WorkflowError(VertebraError):
    """A step failed: ``step`` ("service.method"), ``node`` (the replica that ran it, when
    known), ``cause`` (the error), ``remote_traceback``, ``compensated`` (steps undone)."""

    def __init__(self, step: str, cause: BaseException, node: str = "",
                 compensated: tuple[str, ...] = ()) -> None:
        where = f" on {node}" if node else ""
        super().__init__(f"step {step}{where} failed: {type(cause).__name__}: {cause}")
        self.step = step
        self.node = node
        self.cause = cause
        self.remote_traceback = getattr(cause, "remote_traceback", "")
        self.compensated = compensated


@dataclass(frozen=True, slots=True)
class Progress:
    """One thing that happened: ``event`` is started, done, retry, failed, compensated or
    finished; ``step`` the step's name ("" for finished); ``index`` its position."""

    event: str
    step: str = ""
    index: int = -1
    detail: Any = None
    at: float = field(default_factory=time.time)


ProgressCallback = Callable[[Progress], None]

default_progress: ProgressCallback | None = None
"""Called with the progress of every run that was given no ``progress`` of its own; set by
``vertebra run`` to draw progress on the terminal."""


def _reporter(progress: ProgressCallback | None) -> ProgressCallback:
    return progress or default_progress or (lambda p: None)


class _Run:
    def __init__(self, bus: AsyncBus, report: ProgressCallback) -> None:
        self.bus = bus
        self.report = report
        self.done: list[tuple[Step, Any]] = []     # completed steps and results, in order

    async def run(self, flow: Workflow, value: Any) -> Any:
        if isinstance(flow, Step):
            return await self.step(flow, value)
        if isinstance(flow, Chain):
            for part in flow.parts:
                value = await self.run(part, value)
            return value
        if isinstance(flow, Group):
            return await self.parallel([(b, value) for b in flow.branches], 0)
        if isinstance(flow, FanOut):
            if not isinstance(value, list):
                raise TypeError(f"fan_out needs a list input, got {type(value).__name__}")
            return await self.parallel([(flow.body, item) for item in value], flow.limit)
        raise TypeError(f"not a workflow: {flow!r}")

    async def parallel(self, jobs: list[tuple[Workflow, Any]], limit: int) -> list[Any]:
        gate = asyncio.Semaphore(limit) if limit else None

        async def one(w: Workflow, v: Any) -> Any:
            if gate is None:
                return await self.run(w, v)
            async with gate:
                return await self.run(w, v)

        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(one(w, v)) for w, v in jobs]
        except BaseExceptionGroup as group:
            first = next((e for e in group.exceptions if isinstance(e, WorkflowError)),
                         group.exceptions[0])
            raise first from None
        return [t.result() for t in tasks]

    async def step(self, s: Step, value: Any) -> Any:
        args = s.args if value is NOTHING else (value, *s.args)
        name = s.name
        for attempt in range(s.retries + 1):
            self.report(Progress("started" if attempt == 0 else "retry", name, detail=attempt))
            try:
                result = await self.bus.call(s.service, s.method, args, dict(s.kwargs), timeout=s.timeout)
            except (RemoteError, CallTimeout, Unreachable) as exc:
                if attempt < s.retries:
                    log.info("step %s failed (%s), attempt %d of %d", name, exc, attempt + 1,
                             s.retries + 1)
                    continue
                self.report(Progress("failed", name, detail=f"{type(exc).__name__}: {exc}"))
                raise WorkflowError(name, exc, getattr(exc, "node", "")) from exc
            self.done.append((s, result))
            self.report(Progress("done", name, detail=result))
            return result
        raise AssertionError("unreachable")

    async def compensate(self) -> tuple[str, ...]:
        undone = []
        for s, result in reversed(self.done):
            if s.compensate is None:
                continue
            c = s.compensate
            try:
                await self.bus.call(c.service, c.method, (result, *c.args), dict(c.kwargs), timeout=c.timeout)
                undone.append(s.name)
                self.report(Progress("compensated", s.name))
            except VertebraError as exc:
                log.error("compensation %s for %s failed: %s", c.name, s.name, exc)
        return tuple(undone)


async def run_orchestrated(flow: Workflow, bus: AsyncBus, value: Any = NOTHING,
                           progress: ProgressCallback | None = None) -> Any:
    """Run ``flow`` with ``value`` as the first step's input; return the last result."""
    run = _Run(bus, _reporter(progress))
    try:
        result = await run.run(flow, value)
    except WorkflowError as exc:
        exc.compensated = await run.compensate()
        raise
    run.report(Progress("finished", detail=result))
    return result


async def stream_orchestrated(flow: Workflow, bus: AsyncBus, value: Any = NOTHING) -> AsyncIterator[Progress]:
    """Run ``flow``, yielding its progress; the last event is "finished" (or it raises)."""
    queue: asyncio.Queue[Progress] = asyncio.Queue()
    task = asyncio.create_task(run_orchestrated(flow, bus, value, queue.put_nowait))
    try:
        while not (task.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        task.result()
    finally:
        task.cancel()

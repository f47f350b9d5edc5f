"""Running a workflow orchestrated: the caller drives every step and awaits its result.

Each step is a call through the bus (retried per its policy, bounded by its timeout);
groups and fan-outs run their branches at once and cancel the rest when one fails. A
failure stops the workflow with :class:`WorkflowError` naming the step, the node and the
remote traceback, after running the compensations of the steps that had completed, in
reverse order. Progress is reported as :class:`Progress` events.

A run can be given a :class:`Memo` (the durable runs of :mod:`vertebra.workflow.durable`
do): it knows the results of the steps finished before, so they are not run again, it
gives each step call its headers (the idempotency key), and it is told of every step
that finishes, before the next one starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..dispatch.bus import AsyncBus
from ..wire.errors import CallTimeout, RemoteError, Unreachable, VertebraError
from .canvas import NOTHING, Chain, FanOut, Group, Step, Workflow
from .definition import root_path, subpath

if TYPE_CHECKING:
    from .journal import JournalArg

__all__ = ["Memo", "Progress", "WorkflowError", "default_progress", "run_orchestrated",
           "stream_orchestrated"]

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
    """One thing that happened: ``event`` is started, done, retry, failed, compensated,
    replayed (a durable run took the step's result from its journal instead of running it)
    or finished; ``step`` the step's name ("" for finished); ``index`` its position in a
    choreographed chain; ``path`` its place in an orchestrated run (see
    :mod:`vertebra.workflow.definition`)."""

    event: str
    step: str = ""
    index: int = -1
    detail: Any = None
    at: float = field(default_factory=time.time)
    path: str = ""


ProgressCallback = Callable[[Progress], None]

default_progress: ProgressCallback | None = None
"""Called with the progress of every run that was given no ``progress`` of its own; set by
``vertebra run`` to draw progress on the terminal."""


def _reporter(progress: ProgressCallback | None) -> ProgressCallback:
    return progress or default_progress or (lambda p: None)


class Memo(Protocol):
    """What a run remembers across processes (see :mod:`vertebra.workflow.durable`)."""

    results: dict[str, Any]
    """Results of the steps finished before, by path: these are not run again."""
    compensated: set[str]
    """Paths of the steps already undone."""

    def headers(self, path: str, compensation: bool = False) -> dict[str, str]:
        """The headers of the call of the step at ``path`` (or of its compensation)."""

    async def finished(self, path: str, step: Step, result: Any) -> None:
        """The step at ``path`` finished: keep its result before the run goes on."""

    async def undone(self, path: str, step: Step) -> None:
        """The step at ``path`` was compensated."""


class _Run:
    def __init__(self, bus: AsyncBus, report: ProgressCallback, memo: Memo | None = None,
                 done: list[tuple[Step, Any, str]] | None = None) -> None:
        self.bus = bus
        self.report = report
        self.memo = memo
        self.done: list[tuple[Step, Any, str]] = done or []   # completed (step, result, path), in order

    async def run(self, flow: Workflow, value: Any, path: str) -> Any:
        if isinstance(flow, Step):
            return await self.step(flow, value, path)
        if isinstance(flow, Chain):
            for i, part in enumerate(flow.parts):
                value = await self.run(part, value, subpath(path, i))
            return value
        if isinstance(flow, Group):
            return await self.parallel([(b, value) for b in flow.branches], 0, path)
        if isinstance(flow, FanOut):
            if not isinstance(value, list):
                raise TypeError(f"fan_out needs a list input, got {type(value).__name__}")
            return await self.parallel([(flow.body, item) for item in value], flow.limit, path)
        raise TypeError(f"not a workflow: {flow!r}")

    async def parallel(self, jobs: list[tuple[Workflow, Any]], limit: int, path: str) -> list[Any]:
        gate = asyncio.Semaphore(limit) if limit else None

        async def one(w: Workflow, v: Any, p: str) -> Any:
            if gate is None:
                return await self.run(w, v, p)
            async with gate:
                return await self.run(w, v, p)

        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(one(w, v, subpath(path, i))) for i, (w, v) in enumerate(jobs)]
        except BaseExceptionGroup as group:
            first = next((e for e in group.exceptions if isinstance(e, WorkflowError)),
                         group.exceptions[0])
            raise first from None
        return [t.result() for t in tasks]

    async def step(self, s: Step, value: Any, path: str) -> Any:
        name = s.name
        memo = self.memo
        if memo is not None and path in memo.results:
            result = memo.results[path]
            self.report(Progress("replayed", name, detail=result, path=path))
            return result
        args = s.args if value is NOTHING else (value, *s.args)
        headers = memo.headers(path) if memo is not None else None
        for attempt in range(s.retries + 1):
            self.report(Progress("started" if attempt == 0 else "retry", name, detail=attempt, path=path))
            try:
                result = await self.bus.call(s.service, s.method, args, dict(s.kwargs), timeout=s.timeout,
                                             headers=headers)
            except (RemoteError, CallTimeout, Unreachable) as exc:
                if attempt < s.retries:
                    log.info("step %s failed (%s), attempt %d of %d", name, exc, attempt + 1,
                             s.retries + 1)
                    continue
                self.report(Progress("failed", name, detail=f"{type(exc).__name__}: {exc}", path=path))
                raise WorkflowError(name, exc, getattr(exc, "node", "")) from exc
            if memo is not None:
                await memo.finished(path, s, result)
            self.done.append((s, result, path))
            self.report(Progress("done", name, detail=result, path=path))
            return result
        raise AssertionError("unreachable")

    async def compensate(self) -> tuple[str, ...]:
        undone = []
        memo = self.memo
        for s, result, path in reversed(self.done):
            if s.compensate is None:
                continue
            if memo is not None and path in memo.compensated:
                undone.append(s.name)              # undone before this process took over
                continue
            c = s.compensate
            headers = memo.headers(path, compensation=True) if memo is not None else None
            try:
                await self.bus.call(c.service, c.method, (result, *c.args), dict(c.kwargs), timeout=c.timeout,
                                    headers=headers)
            except VertebraError as exc:
                log.error("compensation %s for %s failed: %s", c.name, s.name, exc)
                continue
            if memo is not None:
                await memo.undone(path, s)
            undone.append(s.name)
            self.report(Progress("compensated", s.name, path=path))
        return tuple(undone)


async def run_orchestrated(flow: Workflow, bus: AsyncBus, value: Any = NOTHING,
                           progress: ProgressCallback | None = None) -> Any:
    """Run ``flow`` with ``value`` as the first step's input; return the last result."""
    run = _Run(bus, _reporter(progress))
    try:
        result = await run.run(flow, value, root_path(flow))
    except WorkflowError as exc:
        exc.compensated = await run.compensate()
        raise
    run.report(Progress("finished", detail=result))
    return result


async def stream_orchestrated(flow: Workflow, bus: AsyncBus, value: Any = NOTHING, *,
                              workflow_id: str | None = None,
                              journal: JournalArg = None) -> AsyncIterator[Progress]:
    """Run ``flow``, yielding its progress; the last event is "finished" (or it raises).
    With a ``workflow_id`` the run is durable (see :mod:`vertebra.workflow.durable`)."""
    from .durable import run_durable

    queue: asyncio.Queue[Progress] = asyncio.Queue()
    if workflow_id is not None:
        task = asyncio.create_task(run_durable(flow, bus, value, queue.put_nowait, journal, workflow_id))
    elif journal is not None:
        raise ValueError("a journal keeps workflows by id: give the run a workflow_id")
    else:
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

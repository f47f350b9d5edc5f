"""The workflow vocabulary: steps composed in sequence, in parallel and over lists.

A workflow is a value — build it once, print it, validate it against discovery, run it
many times::

    from vertebra.workflow import step, group, fan_out

    flow = (step("media.upload")                         # each result feeds the next step
            | step("media.resize", width=128)
            | group(step("store.put"), step("cdn.push"))  # the same input to both, in parallel
            | step("notify.send"))                        # the join: gets [put's, push's] results
    crawl = step("crawler.links") | fan_out(step("parser.parse")) | step("index.merge")

``a | b`` is a chain; ``group(a, b)`` runs its branches on the same input and gives the list
of their results in order; ``fan_out(w)`` runs ``w`` on every element of a list input, at
once, and gives the results in order. A step is called with the previous result as its
first positional argument, followed by its own bound arguments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..dispatch.bus import AsyncBus
    from ..dispatch.sync import Bus
    from ..wire.info import ServiceInfo
    from .journal import JournalArg
    from .runner import Progress

Mode = Literal["orchestrated", "choreographed"]


class _Nothing:
    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()
"""No input: the first step gets only its own bound arguments."""

__all__ = ["NOTHING", "Chain", "FanOut", "Group", "Step", "Workflow", "chain", "fan_out", "group", "step"]


class Workflow:
    """Base of every shape; ``a | b`` chains two workflows."""

    def __or__(self, other: Workflow) -> Chain:
        if not isinstance(other, Workflow):
            return NotImplemented
        left = self.parts if isinstance(self, Chain) else (self,)
        right = other.parts if isinstance(other, Chain) else (other,)
        return Chain((*left, *right))

    def steps(self) -> Iterator[Step]:
        """Every step in the workflow, in order of appearance."""
        raise NotImplementedError

    def problems(self, services: list[ServiceInfo]) -> list[str]:
        """What is wrong with this workflow given the live ``services`` (empty: nothing)."""
        live = {s.name: s for s in services}
        out = []
        for st in self.steps():
            info = live.get(st.service)
            method = info.method(st.method) if info else None
            if info is None:
                out.append(f"{st.name}: no live service {st.service!r}")
            elif method is None or method.kind == "event":
                out.append(f"{st.name}: service {st.service!r} has no callable method {st.method!r}")
            for comp in (st.compensate,) if st.compensate else ():
                out.extend(f"(compensation) {p}" for p in comp.problems(services))
        return out

    def validate(self, bus: Bus) -> None:
        """Check every step against discovery; ValueError listing what is missing."""
        found = self.problems(bus.nodes())
        if found:
            raise ValueError("workflow cannot run: " + "; ".join(found))

    def run(self, bus: Bus, value: Any = NOTHING, *, mode: Mode = "orchestrated",
            progress: Callable[[Progress], None] | None = None, timeout: float = 60.0,
            workflow_id: str | None = None, journal: JournalArg = None) -> Any:
        """Run on a sync bus and block for the last step's result.

        ``value`` is the first step's input (omit it for none). ``mode="choreographed"``
        sends a routing slip instead of driving each step (chains of steps only);
        ``timeout`` bounds a choreographed run (orchestrated steps use their own).
        ``progress`` is called (on the bus's loop thread) with each :class:`Progress`.
        ``workflow_id`` makes an orchestrated run durable: it is kept in ``journal`` (a
        :class:`~vertebra.workflow.journal.Journal` or the path of its SQLite file; default
        ``$VERTEBRA_JOURNAL``, else vertebra-workflows.db) and resumed from there by any
        process that runs it again (see :mod:`vertebra.workflow.durable`).
        """
        return bus.portal.run(self.run_async(bus.core, value, mode=mode, progress=progress, timeout=timeout,
                                             workflow_id=workflow_id, journal=journal))

    async def run_async(self, bus: AsyncBus, value: Any = NOTHING, *, mode: Mode = "orchestrated",
                        progress: Callable[[Progress], None] | None = None, timeout: float = 60.0,
                        workflow_id: str | None = None, journal: JournalArg = None) -> Any:
        """The async twin of :meth:`run`."""
        from .choreography import run_choreographed
        from .durable import run_durable
        from .runner import run_orchestrated

        if mode not in ("orchestrated", "choreographed"):
            raise ValueError(f"mode is 'orchestrated' or 'choreographed', not {mode!r}")
        if workflow_id is None:
            if journal is not None:
                raise ValueError("a journal keeps workflows by id: give the run a workflow_id")
        elif mode == "choreographed":
            raise ValueError("a journal is for orchestrated runs: a routing slip has no coordinator "
                             "to keep one (on AMQP its steps wait in durable queues instead)")
        if mode == "choreographed":
            return await run_choreographed(self, bus, value, progress, timeout)
        if workflow_id is not None:
            return await run_durable(self, bus, value, progress, journal, workflow_id)
        return await run_orchestrated(self, bus, value, progress)

    def stream(self, bus: AsyncBus, value: Any = NOTHING, *, workflow_id: str | None = None,
               journal: JournalArg = None) -> AsyncIterator[Progress]:
        """Run orchestrated, yielding progress; the last event is "finished" (or it raises).
        ``workflow_id`` and ``journal`` as for :meth:`run`."""
        from .runner import stream_orchestrated

        return stream_orchestrated(self, bus, value, workflow_id=workflow_id, journal=journal)


@dataclass(frozen=True, slots=True, eq=True)
class Step(Workflow):
    """A remote method with bound arguments, and its policy.

    ``retries``: further attempts after a failure (transport errors, timeouts and remote
    errors alike); ``timeout``: seconds per attempt (default: the bus's);
    ``compensate``: a step run with this step's result if a later step fails, to undo it.
    """

    service: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    retries: int = 0
    timeout: float | None = None
    compensate: Step | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """``service.method``."""
        return f"{self.service}.{self.method}"

    def steps(self) -> Iterator[Step]:
        """This step."""
        yield self

    def __str__(self) -> str:
        bound = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(bound)})"


@dataclass(frozen=True, slots=True)
class Chain(Workflow):
    """Workflows in sequence: each one's result is the next one's input."""

    parts: tuple[Workflow, ...]

    def steps(self) -> Iterator[Step]:
        """The steps of every part, in order."""
        for p in self.parts:
            yield from p.steps()

    def __str__(self) -> str:
        return " | ".join(f"({p})" if isinstance(p, Chain) else str(p) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Group(Workflow):
    """Branches run at once on the same input; the result is the list of theirs, in order."""

    branches: tuple[Workflow, ...]

    def steps(self) -> Iterator[Step]:
        """The steps of every branch."""
        for b in self.branches:
            yield from b.steps()

    def __str__(self) -> str:
        return f"group({', '.join(map(str, self.branches))})"


@dataclass(frozen=True, slots=True)
class FanOut(Workflow):
    """``body`` run at once on every element of a list input; results in input order."""

    body: Workflow
    limit: int = 0

    def steps(self) -> Iterator[Step]:
        """The body's steps."""
        yield from self.body.steps()

    def __str__(self) -> str:
        return f"fan_out({self.body}{f', limit={self.limit}' if self.limit else ''})"


def step(target: str, *args: Any, retries: int = 0, timeout: float | None = None,
         compensate: Step | None = None, **kwargs: Any) -> Step:
    """A step calling ``target`` ("service.method") with bound arguments."""
    service, sep, method = target.rpartition(".")
    if not sep or not service or not method:
        raise ValueError(f"a step names service.method, not {target!r}")
    return Step(service, method, args, tuple(sorted(kwargs.items())), retries, timeout, compensate)


def chain(*parts: Workflow) -> Chain:
    """Workflows in sequence (the same as ``a | b | c``)."""
    if not parts:
        raise ValueError("a chain needs at least one part")
    return Chain(tuple(parts))


def group(*branches: Workflow) -> Group:
    """Branches in parallel on the same input; the result lists theirs in order."""
    if not branches:
        raise ValueError("a group needs at least one branch")
    return Group(tuple(branches))


def fan_out(body: Workflow, limit: int = 0) -> FanOut:
    """Run ``body`` on every element of a list input (at most ``limit`` at once; 0: all)."""
    return FanOut(body, limit)

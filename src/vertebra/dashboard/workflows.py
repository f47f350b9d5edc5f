"""Running workflows, as far as the bus can see them.

A choreographed workflow (a routing slip, docs/PROTOCOL.md §6a) announces each step it
completes, and its end or failure, as events on ``_vertebra.workflow.<bus>.<run>``
(§6c): the watcher subscribes to ``_vertebra.workflow.#`` and keeps the recent runs of
every bus.  A run appears once its first step is done (starting one publishes nothing),
and the number of steps still ahead is not announced, so progress is "steps done so far".
An orchestrated workflow reports its progress only to the process that drives it: it
is not visible on the bus.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..dispatch.bus import AsyncBus

__all__ = ["TOPICS", "WorkflowRun", "WorkflowWatcher"]

log = logging.getLogger("vertebra.dashboard")

TOPICS = "_vertebra.workflow.#"
"""The pattern that catches the progress of every choreographed workflow."""


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class WorkflowRun:
    """What the watcher knows of one run: the steps done (by index), its state
    ("running", "finished" or "failed"), its error or a preview of its result."""

    run: str
    starter: str
    first_seen: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    steps: dict[int, str] = field(default_factory=dict)
    state: str = "running"
    failed_step: str = ""
    failed_index: int = 0
    error: str = ""
    result: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the page."""
        top = max(self.steps, default=-1)
        done = self.failed_index if self.state == "failed" else top + 1
        return {"run": self.run, "starter": self.starter, "state": self.state, "done": done,
                "steps": [self.steps.get(i, "?") for i in range(top + 1)],
                "last_step": self.steps[top] if self.steps else "",
                "failed_step": self.failed_step, "error": self.error, "result": self.result,
                "first_seen": self.first_seen, "updated": self.updated}


class WorkflowWatcher:
    """Keeps the ``keep`` most recently active choreographed runs seen on the bus."""

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self._runs: collections.OrderedDict[str, WorkflowRun] = collections.OrderedDict()
        self.note = ""        # why workflows cannot be shown, when they cannot

    async def start(self, bus: AsyncBus) -> None:
        """Subscribe to the workflow topics on ``bus`` (a failure is noted, not raised)."""
        try:
            await bus.subscribe(TOPICS, self.on_event)
        except Exception as exc:
            log.warning("dashboard: cannot follow workflows: %s", exc)
            self.note = f"cannot follow workflows on this transport: {type(exc).__name__}: {exc}"

    def on_event(self, topic: str, payload: Any) -> None:
        """One progress event of a run: a step done, its end, or its failure."""
        if not isinstance(payload, dict) or not isinstance(payload.get("run"), str):
            return
        words = topic.split(".")
        starter = words[2] if len(words) > 3 else ""
        run = self._runs.get(payload["run"])
        if run is None:
            run = self._runs[payload["run"]] = WorkflowRun(payload["run"], starter)
        self._runs.move_to_end(run.run)
        run.updated = time.time()
        index = payload.get("index")
        step = payload.get("step")
        if isinstance(index, int) and isinstance(step, str):
            run.steps[index] = step
        if "result" in payload:
            run.state, run.result = "finished", _short(payload["result"])
        elif "error" in payload:
            err = payload["error"] if isinstance(payload["error"], dict) else {}
            run.state, run.failed_step = "failed", str(step or "")
            run.failed_index = index if isinstance(index, int) and index >= 0 else 0
            run.error = f"{err.get('type', 'Error')}: {err.get('message', '')}"
        self._trim()

    def _trim(self) -> None:
        while len(self._runs) > self.keep:
            ended = next((k for k, r in self._runs.items() if r.state != "running"), None)
            self._runs.pop(ended if ended is not None else next(iter(self._runs)))

    def runs(self) -> list[dict[str, Any]]:
        """The runs, running ones first, then the most recently updated."""
        runs = sorted(self._runs.values(), key=lambda r: (r.state != "running", -r.updated))
        return [r.to_dict() for r in runs]

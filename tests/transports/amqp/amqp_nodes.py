"""Nodes used by the amqp transport tests (also run in worker subprocesses)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from vertebra import Node, event, rpc, task


class Jobs(Node):
    """Records tasks; a task named ``fail*`` always raises, ``fixable*`` raises until
    ``fixed`` is set, ``crash*`` kills the process, ``block*`` hangs for a while,
    ``slow*`` takes half a second, ``busy*`` 10 ms."""

    name = "jobs"
    retry_delay = 0.01

    def __init__(self, log: Path | None = None) -> None:
        self.done: list[str] = []
        self.started: list[str] = []
        self.failures: dict[str, int] = {}
        self.fixed = False
        self.lock = threading.Lock()
        self.log = log

    def _note(self, line: str) -> None:
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(line + "\n")
                f.flush()

    @task
    def run(self, job: str) -> None:
        """Do one job."""
        self._note(f"started {job}")
        self.started.append(job)
        if job.startswith("fail") or (job.startswith("fixable") and not self.fixed):
            with self.lock:
                self.failures[job] = self.failures.get(job, 0) + 1
            raise RuntimeError(f"job {job} is broken")
        if job.startswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)   # a worker that dies on this task
        if job.startswith("block"):
            time.sleep(30)
        if job.startswith("slow"):
            time.sleep(0.5)
        if job.startswith("busy"):
            time.sleep(0.01)
        with self.lock:
            self.done.append(job)
        self._note(f"done {job}")

    @rpc
    def ping(self) -> str:
        """Liveness."""
        return "pong"

    @rpc
    def boom(self) -> None:
        """Always raises (a cast to it is dropped by its node)."""
        raise ValueError("boom")


class Live(Node):
    """Records the casts and events it gets (the live service beside an absent one)."""

    name = "live"

    def __init__(self) -> None:
        self.casts: list[int] = []
        self.events: list[int] = []

    @task
    def put(self, n: int) -> None:
        """One cast."""
        self.casts.append(n)

    @event("live.#")
    def on_live(self, topic: str, payload: int) -> None:
        """One event."""
        self.events.append(payload)


if __name__ == "__main__":   # python amqp_nodes.py URL LOGFILE: serve Jobs until killed
    import vertebra

    vertebra.serve(Jobs(Path(sys.argv[2])), url=sys.argv[1])

"""Nodes used by the amqp transport tests (also run in worker subprocesses)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from vertebra import Node, rpc, task


class Jobs(Node):
    """Records tasks; a task named ``fail*`` always raises, ``block*`` hangs for a while."""

    name = "jobs"

    def __init__(self, log: Path | None = None) -> None:
        self.done: list[str] = []
        self.started: list[str] = []
        self.failures: dict[str, int] = {}
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
        if job.startswith("fail"):
            with self.lock:
                self.failures[job] = self.failures.get(job, 0) + 1
            raise RuntimeError(f"job {job} is broken")
        if job.startswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)   # a worker that dies on this task
        if job.startswith("block"):
            time.sleep(30)
        if job.startswith("slow"):
            time.sleep(0.5)
        with self.lock:
            self.done.append(job)
        self._note(f"done {job}")

    @rpc
    def ping(self) -> str:
        """Liveness."""
        return "pong"


if __name__ == "__main__":   # python amqp_nodes.py URL LOGFILE: serve Jobs until killed
    import vertebra

    vertebra.serve(Jobs(Path(sys.argv[2])), url=sys.argv[1])

"""A step node run as its own process, so that a test can SIGKILL it mid-step.

    python -m tests.workflow.procs URL MARKER   serve "mid"; each slow_inc writes MARKER first
"""

from __future__ import annotations

import sys
import time

import vertebra
from vertebra import Node, rpc


class Mid(Node):
    """A slow middle step."""

    name = "mid"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    @rpc
    def slow_inc(self, x: int) -> int:
        """x + 1, after a second (long enough to be killed in)."""
        with open(self.marker, "a") as f:
            f.write(f"{x}\n")
        time.sleep(1.0)
        return x + 1


if __name__ == "__main__":
    vertebra.serve(Mid(sys.argv[2]), url=sys.argv[1], ready=lambda: print("ready", flush=True))

"""A worker process for the fault tests: serves Calc on URL (argv[1]), writes "ready" to
argv[2] once serving, and appends every task item it starts to argv[2]."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import vertebra
from vertebra import Node, task


class Calc(Node):
    """Records started tasks, then takes forever (until killed)."""

    name = "calc"

    @task
    async def work(self, item: Any, delay: float = 0.0) -> None:
        """Record and hang."""
        with open(sys.argv[2], "a") as f:
            f.write(f"started {item}\n")
        await asyncio.sleep(3600)


async def main() -> None:
    bus = vertebra.connect_async(sys.argv[1])
    await bus.start()
    await bus.serve(Calc())
    Path(sys.argv[2]).write_text("ready\n")
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())

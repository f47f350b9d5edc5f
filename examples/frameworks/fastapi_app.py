"""FastAPI with vertebra: one AsyncBus opened in the app's lifespan, async calls, casts that never block.

    python examples/frameworks/fastapi_app.py [--port 8000]       # an embedded hub, the calc node and the app
    python examples/frameworks/fastapi_app.py node --url URL      # the calc node alone
    VERTEBRA_URL=URL uvicorn --app-dir examples/frameworks fastapi_app:app    # the app alone

    curl 'http://127.0.0.1:8000/add?a=2&b=3'      # {"sum":5}: awaits calc.add over the bus
    curl -X POST http://127.0.0.1:8000/jobs/j1    # 202 at once, whether a calc node is up or not

The lifespan opens the bus on uvicorn's event loop before the first request and closes it at
shutdown (SIGTERM, Ctrl-C), which flushes the outbox within ``linger`` seconds.  A node that is
away, slow or raising becomes a 503, 504 or 502, never a hung request.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

import vertebra
from vertebra import Node, rpc, task


class Calc(Node):
    """The node the app talks to (served elsewhere: another process, another machine)."""

    name = "calc"

    def __init__(self) -> None:
        self.crunched: list[str] = []
        self.lock = threading.Lock()

    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b

    @task
    def crunch(self, job: str) -> None:
        with self.lock:
            self.crunched.append(job)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with vertebra.connect_async(linger=5.0) as bus:      # $VERTEBRA_URL
        app.state.bus = bus
        yield                                                  # the app serves requests
    out = bus.stats()["outbox"]                                # closed: the outbox was flushed
    print(f"vertebra bus closed: {out['sent']} sent, {out['queued']} unsent, {out['dropped']} dropped",
          flush=True)


app = FastAPI(lifespan=lifespan)


def get_bus(request: Request) -> vertebra.AsyncBus:
    return request.app.state.bus                               # opened by the lifespan


BusDep = Annotated[vertebra.AsyncBus, Depends(get_bus)]


@app.get("/add")
async def add(a: int, b: int, bus: BusDep) -> dict[str, int]:
    try:
        return {"sum": await bus.proxy("calc", timeout=5.0).add(a, b)}
    except vertebra.Unreachable as exc:                        # nobody serves calc
        raise HTTPException(503, str(exc)) from exc
    except vertebra.CallTimeout as exc:
        raise HTTPException(504, str(exc)) from exc
    except vertebra.RemoteError as exc:                        # the handler raised
        raise HTTPException(502, f"{exc.type}: {exc.message}") from exc


@app.post("/jobs/{job}", status_code=202)
async def enqueue(job: str, bus: BusDep) -> dict[str, str | None]:
    return {"queued": bus.proxy("calc").crunch.cast(job)}      # into the outbox; no network wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["app", "node"], default="app")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.mode == "node":
        vertebra.serve(Calc(), url=args.url)
        return
    import uvicorn

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(vertebra.Hub("tcp://127.0.0.1:0")).url
        os.environ["VERTEBRA_URL"] = url                       # the lifespan's bus
        stack.enter_context(vertebra.connect(url)).serve(Calc())
        uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()

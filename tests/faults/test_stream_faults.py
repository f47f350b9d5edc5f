"""A node SIGKILLed mid-stream: the consumer gets Unreachable after the items already sent,
never a hang (not even until the call's deadline), on every multi-process transport.

The node runs as a real process: ``python -m tests.faults.test_stream_faults serve URL``
serves :class:`tests.conformance.services.Streamer` and prints ``ready``."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from typing import Any

import pytest

import vertebra
from tests.conformance.services import Streamer

from .util import expect_line, require_processes, spawn, wait_for

BOUND = 60.0
"""How long the consumer may take to learn that the node died: a bound so that a hang
fails the test, far below the call's own timeout (so a deadline cannot be what ends it)."""
CALL_TIMEOUT = 300.0


def _consume(stream: Any, got: list[int], outcome: list[BaseException | None]) -> None:
    try:
        for item in stream:
            got.append(item)  # noqa: PERF402 (the items before the error are the point)
        outcome.append(None)
    except BaseException as exc:       # recorded, checked by the test
        outcome.append(exc)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("window", [4, 32])
def test_a_node_killed_mid_stream_gives_the_consumer_unreachable(url_for, scheme, window):
    require_processes(url_for)
    node = spawn("test_stream_faults", "serve", url_for("streamer"))
    try:
        expect_line(node, "ready")
        with vertebra.connect(url_for("client"), stream_window=window) as bus:
            p = bus.proxy("streamer", timeout=CALL_TIMEOUT)
            got: list[int] = []
            outcome: list[BaseException | None] = []
            stream = p.ticks.stream("doomed", 0.02)
            consumer = threading.Thread(target=_consume, args=(stream, got, outcome), daemon=True)
            consumer.start()
            wait_for(lambda: len(got) >= 10, 60, "the first items", lambda: f"(got {len(got)})")
            node.send_signal(signal.SIGKILL)
            node.wait(10)
            killed_at = time.monotonic()
            consumer.join(BOUND)
            assert not consumer.is_alive(), f"the consumer still waits {BOUND}s after the node died"
            (error,) = outcome
            assert isinstance(error, vertebra.Unreachable), repr(error)
            assert time.monotonic() - killed_at < CALL_TIMEOUT
            assert got == list(range(len(got)))           # what arrived came in order, no gaps
    finally:
        node.kill()
        node.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_node_killed_mid_stream_gives_the_async_consumer_unreachable(url_for, scheme):
    require_processes(url_for)
    node = spawn("test_stream_faults", "serve", url_for("streamer"))
    try:
        expect_line(node, "ready")

        async def consume() -> tuple[list[int], BaseException | None]:
            got: list[int] = []
            async with vertebra.connect_async(url_for("client"), stream_window=8) as bus:
                ticks = bus.proxy("streamer", timeout=CALL_TIMEOUT).ticks
                try:
                    async for item in ticks.stream("doomed", 0.02):
                        got.append(item)
                        if len(got) == 10:
                            node.send_signal(signal.SIGKILL)
                except BaseException as exc:  # recorded, checked below
                    return got, exc
            return got, None

        got, error = asyncio.run(asyncio.wait_for(consume(), BOUND))
        assert isinstance(error, vertebra.Unreachable), repr(error)
        assert len(got) >= 10 and got == list(range(len(got)))
    finally:
        node.kill()
        node.wait(10)


def main(argv: list[str]) -> None:
    """``serve URL``: serve a Streamer until killed."""
    if argv[:1] != ["serve"] or len(argv) != 2:
        raise SystemExit("usage: python -m tests.faults.test_stream_faults serve URL")
    vertebra.serve(Streamer(), url=argv[1], ready=lambda: print("ready", flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])

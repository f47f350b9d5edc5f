"""``vertebra.serve(...)``: serve nodes until SIGINT/SIGTERM, then drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..dispatch.bus import AsyncBus
from ..dispatch.service import Servable
from ..dispatch.url import default_url

__all__ = ["serve"]

log = logging.getLogger("vertebra.serve")


def serve(*nodes: Servable, url: str | None = None, ready: Callable[[], None] | None = None,
          **options: Any) -> None:
    """Serve ``nodes`` on ``url`` and block; SIGINT/SIGTERM drain in-flight work, then stop.

    ``ready`` (optional) is called once every node is listening and announced.  Other
    keyword arguments are Bus options (codec, timeout, linger, ...).
    """
    asyncio.run(serve_async(*nodes, url=url, ready=ready, **options))


async def serve_async(*nodes: Servable, url: str | None = None,
                      ready: Callable[[], None] | None = None,
                      on_ready: Callable[[AsyncBus], None] | None = None, **options: Any) -> None:
    """The coroutine behind :func:`serve`; ``on_ready(bus)`` also gets the bus."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
    try:
        async with AsyncBus(url or default_url(), **options) as bus:
            await bus.serve(*nodes)
            log.info("serving %s on %s", ", ".join(type(n).__name__ for n in nodes), bus.url)
            if ready is not None:
                ready()
            if on_ready is not None:
                on_ready(bus)
            await stop.wait()
            log.info("stopping: draining in-flight work")
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

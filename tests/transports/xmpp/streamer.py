"""A streaming node at the transport level (no Bus): what the xmpp streaming tests serve.

As a program (the mid-stream kill test): ``python streamer.py URL READY_FILE`` serves the
service ``calc`` on URL whose every call streams items without end, one every 20 ms, and
writes "ready" to READY_FILE once it serves.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from vertebra.transports.base import Handler, Incoming
from vertebra.transports.xmpp import XmppTransport
from vertebra.wire.codec import CODECS
from vertebra.wire.envelope import Envelope
from vertebra.wire.info import ServiceInfo


def streaming(count: int | None, pause: float = 0.0, size: int = 0,
              before_final: Callable[[], Awaitable[object]] | None = None,
              errors: list[Exception] | None = None) -> Handler:
    """A handler answering every call with ``count`` items (None: without end), then the
    final reply (result = the number of items); a beat before each item.  Item ``i`` is
    ``[i, "x" * size]``.  ``before_final`` is awaited before the final reply; an exception
    from ``reply`` (an oversized item) goes to ``errors`` and ends the stream with an error."""
    async def handle(incoming: Incoming) -> None:
        call = incoming.envelope
        sent = 0
        try:
            for i in itertools.count() if count is None else range(count):
                await incoming.reply(call.beat(sent))
                await incoming.reply(call.item(i, [i, "x" * size]))
                sent += 1
                if pause:
                    await asyncio.sleep(pause)
            if before_final is not None:
                await before_final()
            await incoming.reply(call.answer(sent))
        except Exception as exc:        # the test looks at it
            if errors is not None:
                errors.append(exc)
            await incoming.reply(call.fail({"code": "remote", "type": type(exc).__name__,
                                            "message": str(exc)}))
        finally:
            await incoming.ack()
    return handle


async def start(url: str, on_answer: Callable[[Envelope], None] | None = None) -> XmppTransport:
    """A connected xmpp transport on ``url`` (JSON codec)."""
    t = XmppTransport(url, CODECS["json"])
    await t.connect(on_answer or (lambda _env: None))
    return t


async def main() -> None:
    t = await start(sys.argv[1])
    await t.serve(ServiceInfo("calc"), streaming(None, pause=0.02))
    Path(sys.argv[2]).write_text("ready\n")
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())

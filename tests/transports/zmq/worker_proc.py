"""A zmq:// replica in its own process, for the fault tests (SIGKILL).

python -m tests.transports.zmq.worker_proc URL SERVICE MODE
  MODE "hold": take deliveries (prefetch 1), print "got <payload-arg>" and never ack.
  MODE "echo": answer calls with their first argument, ack casts and tasks.
  MODE "stream": answer each call with ``item`` envelopes, one every 20 ms, forever
  (printing "item <seq>"), never the final reply.
Prints "ready" once served.
"""

from __future__ import annotations

import asyncio
import sys

from vertebra.transports.base import Incoming
from vertebra.transports.zmq import ZmqTransport
from vertebra.wire.codec import get_codec
from vertebra.wire.info import ServiceInfo


async def main(url: str, service: str, mode: str) -> None:
    t = ZmqTransport(url, get_codec("msgpack"))
    await t.connect(lambda env: None)

    streams: set[asyncio.Task[None]] = set()

    async def stream(inc: Incoming) -> None:
        seq = 0
        while True:
            await inc.reply(inc.envelope.item(seq, seq))
            print("item", seq, flush=True)
            seq += 1
            await asyncio.sleep(0.02)

    async def handle(inc: Incoming) -> None:
        env = inc.envelope
        print("got", env.args[0] if env.args else "", flush=True)
        if mode == "stream":
            task = asyncio.create_task(stream(inc))
            streams.add(task)
            task.add_done_callback(streams.discard)
        elif mode == "echo":
            if env.kind == "call":
                await inc.reply(env.answer(env.args[0] if env.args else None))
            await inc.ack()

    await t.serve(ServiceInfo(service), handle, prefetch=1)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

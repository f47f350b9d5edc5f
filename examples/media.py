"""A media workflow across nodes on different transports: upload → resize → store → notify.

    python examples/media.py                 # resize on an embedded ZeroMQ hub, store on
                                             # RabbitMQ if one answers on 127.0.0.1:5672
                                             # (else on a second hub), notify in-process
    python examples/media.py --url amqp://guest:guest@mq.example.org/%2F   # store there
    python examples/media.py --no-amqp       # no broker: store on a second ZeroMQ hub

Every node is served on its own bus.  The script connects one bus to all the transports
(`vertebra.connect(url1, url2, ...)`): discovery tells it where each service lives, and
the workflow `upload | resize | store | notify` passes each step's result to the next.
The last step announces the stored picture as an event, which a subscriber prints.
Resizing uses Pillow when it is installed, else it shrinks the bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import socket
import threading
from typing import Any

import vertebra
from vertebra import Node, rpc
from vertebra.workflow import step

try:
    from PIL import Image
except ImportError:
    Image = None  # type: ignore[assignment]   # no Pillow: resize is faked


def make_picture() -> bytes:
    if Image is None:
        return bytes(range(256)) * 64
    out = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(out, "PNG")    # a 256×256 picture
    return out.getvalue()


class Upload(Node):
    name = "upload"

    @rpc
    def accept(self, upload: dict[str, Any]) -> dict[str, Any]:
        if not upload["data"]:
            raise ValueError("empty upload")
        return {"name": upload["name"], "data": upload["data"]}


class Resize(Node):
    name = "resize"

    @rpc
    def thumbnail(self, item: dict[str, Any], width: int) -> dict[str, Any]:
        if Image is None:
            small = item["data"][:: max(1, 256 // width)]               # a stand-in
        else:
            picture = Image.open(io.BytesIO(item["data"]))
            picture.thumbnail((width, width))
            out = io.BytesIO()
            picture.save(out, "PNG")
            small = out.getvalue()
        return {"name": item["name"], "data": small}


class Store(Node):
    name = "store"

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    @rpc
    def put(self, item: dict[str, Any]) -> dict[str, Any]:
        key = hashlib.sha256(item["data"]).hexdigest()[:12]
        self.blobs[key] = item["data"]
        return {"name": item["name"], "key": key, "size": len(item["data"])}


class Notify(Node):
    name = "notify"

    def __init__(self, bus: vertebra.Bus) -> None:
        self.bus = bus

    @rpc
    def send(self, stored: dict[str, Any]) -> str:
        self.bus.publish("media.stored", stored)
        return f"announced {stored['name']} as {stored['key']}"


def broker_answers(host: str = "127.0.0.1", port: int = 5672) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", help="where the store node runs (default: see above)")
    parser.add_argument("--no-amqp", action="store_true", help="do not look for a local RabbitMQ")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        resize_url = stack.enter_context(vertebra.Hub("tcp://127.0.0.1:0")).url
        store_url = args.url
        if store_url is None and not args.no_amqp and broker_answers():
            store_url = "amqp://guest:guest@127.0.0.1:5672/%2F"
        if store_url is None:
            store_url = stack.enter_context(vertebra.Hub("tcp://127.0.0.1:0")).url
        local_url = "memory://"

        edge = stack.enter_context(vertebra.connect(local_url))
        edge.serve(Upload(), Notify(edge))
        stack.enter_context(vertebra.connect(resize_url)).serve(Resize())
        stack.enter_context(vertebra.connect(store_url)).serve(Store())
        for service, url in [("upload", local_url), ("resize", resize_url),
                             ("store", store_url), ("notify", local_url)]:
            print(f"{service:<7} on {url.split('?')[0]}")

        announced: list[tuple[str, Any]] = []
        arrived = threading.Event()

        def on_event(topic: str, payload: Any) -> None:
            announced.append((topic, payload))
            arrived.set()

        stack.enter_context(vertebra.connect(local_url)).subscribe("media.*", on_event)

        bus = stack.enter_context(vertebra.connect(resize_url, store_url, local_url, timeout=10.0))
        flow = step("upload.accept") | step("resize.thumbnail", width=64) | step("store.put") \
            | step("notify.send")
        print(flow)
        picture = make_picture()
        result = flow.run(bus, {"name": "cat.png", "data": picture},
                          progress=lambda p: print(f"  {p.event:<8} {p.step}"))
        print(f"{result} ({len(picture)} bytes in)")
        arrived.wait(10)
        for topic, payload in announced:
            print(f"event {topic}: {payload}")


if __name__ == "__main__":
    main()

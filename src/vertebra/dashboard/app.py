"""The dashboard's web app (Starlette): the page, its state as JSON and as a stream of
server-sent events, and the replay of dead letters.

Routes: ``GET /`` the page; ``GET /static/{name}`` its script and style sheet;
``GET /api/state`` the newest state (once there is one); ``GET /events`` server-sent events, one ``state``
event per refresh; ``POST /api/replay`` with a JSON body ``{"service": S, "ids": [...]}``
(``ids`` null: all of S's dead letters) answers ``{"replayed": n}``.

The bus is opened with :func:`vertebra.connect_async` in the app's lifespan and closed with
it.  The only request that changes anything, the replay, must be a same-origin JSON POST
(a page elsewhere cannot send one without the browser asking first, which this app never
allows), and requests must name an allowed host (which stops DNS rebinding).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..wire.errors import VertebraError
from .collector import Collector
from .workflows import WorkflowWatcher

__all__ = ["LOOPBACK_HOSTS", "create_app", "to_json"]

log = logging.getLogger("vertebra.dashboard")

STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
"""The host names a dashboard bound to loopback answers to."""


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return repr(value)


def to_json(value: Any) -> str:
    """JSON text of a state (bytes and other non-JSON values shown as short text)."""
    return json.dumps(value, ensure_ascii=False, default=_plain, separators=(",", ":"))


def _static(name: str) -> str:
    return (resources.files(__package__ or "vertebra.dashboard") / "static" / name).read_text("utf-8")


def create_app(url: str | None = None, *, interval: float = 1.0, timeout: float = 2.0,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS, on_ready: Callable[[], None] | None = None,
               **bus_options: Any) -> Starlette:
    """The dashboard of the vertebra network at ``url``, as an ASGI app.

    It refreshes every ``interval`` seconds (each stats call waits ``timeout`` seconds at
    most) and answers requests whose Host is one of ``allowed_hosts`` (``["*"]``: any).
    ``on_ready`` is called once the bus is connected; ``bus_options`` go to
    :func:`vertebra.connect_async`.
    """
    import vertebra

    page = _static("index.html")
    files = {name: _static(name) for name in STATIC}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with vertebra.connect_async(url, **bus_options) as bus:
            watcher = WorkflowWatcher()
            await watcher.start(bus)
            collector = Collector(bus, interval=interval, timeout=timeout, workflows=watcher)
            app.state.collector = collector
            collector.start()
            if on_ready is not None:
                on_ready()
            try:
                yield
            finally:
                await collector.stop()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(files[name], media_type=STATIC[name], headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        collector: Collector = request.app.state.collector
        current = await collector.next_state(0)          # the first refresh, if it is not done yet
        return Response(to_json(current), media_type="application/json")

    async def events(request: Request) -> Response:
        collector: Collector = request.app.state.collector

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            seen = 0
            if collector.version:
                seen = collector.version
                yield f"event: state\ndata: {to_json(collector.state)}\n\n"
            while True:
                current = await collector.next_state(seen)
                seen = current["version"]
                yield f"event: state\ndata: {to_json(current)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def replay(request: Request) -> Response:
        problem = _refuse(request)
        if problem is not None:
            return problem
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        service = body.get("service") if isinstance(body, dict) else None
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(service, str) or not service or not (
                ids is None or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))):
            return JSONResponse({"error": 'expected {"service": NAME, "ids": [ID, ...] or null}'},
                                status_code=400)
        collector: Collector = request.app.state.collector
        try:
            n = await collector.replay(service, ids)
        except (VertebraError, ConnectionError, NotImplementedError) as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=502)
        log.info("dashboard: replayed %d dead letter(s) of %s", n, service)
        return JSONResponse({"replayed": n})

    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/state", state),
              Route("/events", events), Route("/api/replay", replay, methods=["POST"])]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _refuse(request: Request) -> Response | None:
    """Why a state-changing request is refused (None: it is not)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "send application/json"}, status_code=415)
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
    return None

"""A live web dashboard of a vertebra network: ``vertebra dashboard URL``.

It shows the live services, their replicas and each method's rate, errors, work in flight
and latency, each node's outbox, the dead letters of every service (with a button that
replays them) and the choreographed workflows in progress, updated in the browser with
server-sent events.  It needs ``pip install 'vertebra[dashboard]'`` (Starlette and
uvicorn); the page is plain HTML and a little JavaScript, served by the app itself::

    from vertebra.dashboard import run_dashboard
    run_dashboard("zmq://127.0.0.1:7000", port=8080)      # http://127.0.0.1:8080/

:func:`create_app` gives the ASGI app, to mount in another server.
"""

from .app import create_app
from .collector import Collector
from .server import run_dashboard
from .workflows import WorkflowWatcher

__all__ = ["Collector", "WorkflowWatcher", "create_app", "run_dashboard"]

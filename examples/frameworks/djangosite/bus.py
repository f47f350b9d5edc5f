"""One vertebra bus per process, opened at first use, from any thread.

Lazily, so that ``manage.py`` commands that never send open nothing, and so that a pre-fork
server (gunicorn --preload) opens it in each worker, after the fork.  vertebra flushes it
at exit; there is nothing to close by hand.
"""

import os
import threading

from django.conf import settings

import vertebra

_lock = threading.Lock()
_bus: vertebra.Bus | None = None


def get_bus() -> vertebra.Bus:
    global _bus
    with _lock:
        if _bus is None:
            _bus = vertebra.connect(settings.VERTEBRA_URL, linger=5.0)
        return _bus


def _forget_after_fork() -> None:
    global _bus, _lock
    _bus, _lock = None, threading.Lock()        # the parent's bus is the parent's


os.register_at_fork(after_in_child=_forget_after_fork)

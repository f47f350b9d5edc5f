"""Test helpers for services built on vertebra, shipped as a pytest plugin.

Installed with vertebra, the plugin loads by itself (entry point ``pytest11``); without
the entry point add ``pytest_plugins = ["vertebra.testing"]`` to a conftest.py.

::

    def test_add(served, vertebra_bus):
        served(Calc())                                  # returns once calc is routable
        assert vertebra_bus.proxy("calc").add(2, 3) == 5

    def test_signup_mails(served, recorder, vertebra_bus):
        mail = recorder.service("mailer")               # a stand-in that records
        served(Signup())
        vertebra_bus.proxy("signup").register("bob")
        [sent] = mail.wait_for(1)
        assert sent.method == "send"

Fixtures — sync: ``memory_url``, ``vertebra_url`` (``--vertebra-url``), ``vertebra_harness``,
``vertebra_bus``, ``served``, ``recorder``, ``fake_clock``, ``zmq_hub``; async (with
pytest-asyncio): ``vertebra_async_harness``, ``vertebra_async_bus``, ``served_async``,
``recorder_async``.  The classes behind them (:class:`Harness`, :class:`AsyncHarness`,
:class:`Recorder`, :class:`RecordingService`, :class:`FakeClock`) need no pytest: without
it installed this package imports them alone.
See docs/testing.md.
"""

from __future__ import annotations

import importlib.util

from .clock import FakeClock
from .harness import AsyncHarness, Harness
from .recorder import Record, Recorder, RecordingService

__all__ = ["AsyncHarness", "FakeClock", "Harness", "Record", "Recorder", "RecordingService"]

if importlib.util.find_spec("pytest") is not None:   # the plugin; the classes need no pytest
    from .plugin import (
        AsyncRecorders,
        Recorders,
        fake_clock,
        memory_url,
        pytest_addoption,
        recorder,
        recorder_async,
        served,
        served_async,
        vertebra_async_bus,
        vertebra_async_harness,
        vertebra_bus,
        vertebra_harness,
        vertebra_url,
        zmq_hub,
    )

    __all__ += ["AsyncRecorders", "Recorders", "fake_clock", "memory_url", "pytest_addoption",
                "recorder", "recorder_async", "served", "served_async", "vertebra_async_bus",
                "vertebra_async_harness", "vertebra_bus", "vertebra_harness", "vertebra_url",
                "zmq_hub"]

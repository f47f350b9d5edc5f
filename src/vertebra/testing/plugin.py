"""The pytest fixtures of :mod:`vertebra.testing` (loaded through the ``pytest11`` entry
point, or ``pytest_plugins = ["vertebra.testing"]``, or ``-p vertebra.testing``).

Sync fixtures need nothing but pytest; the async ones need pytest-asyncio and work in
its strict and auto modes.  Every test gets its own ``memory://NAME``; with
``--vertebra-url URL`` the same tests run on a real transport instead (a ``{test}`` in
the URL is replaced by a fresh name per test, e.g. an AMQP ``?prefix={test}.``).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from ..dispatch.bus import AsyncBus
from ..dispatch.sync import Bus
from .clock import FakeClock
from .harness import AsyncHarness, Harness
from .recorder import Recorder

if TYPE_CHECKING:
    from ..dispatch.service import Servable
    from ..transports.zmq import Hub

__all__ = [
    "AsyncRecorders", "Recorders", "fake_clock", "memory_url", "pytest_addoption", "recorder",
    "recorder_async", "served", "served_async", "vertebra_async_bus", "vertebra_async_harness",
    "vertebra_bus", "vertebra_harness", "vertebra_url", "zmq_hub",
]

URL_OPTION = "--vertebra-url"
ZMQ_HINT = "the zmq_hub fixture needs pyzmq: pip install 'vertebra[zmq]'"
ASYNC_HINT = "needs pytest-asyncio: pip install pytest-asyncio"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--vertebra-url URL``: run the vertebra fixtures on URL instead of memory://."""
    group = parser.getgroup("vertebra")
    group.addoption(URL_OPTION, action="store", default=None, metavar="URL",
                    help="transport URL for the vertebra fixtures (default: a fresh memory://NAME "
                         "per test); '{test}' in it becomes a fresh name per test")


def _token() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def memory_url() -> str:
    """A fresh ``memory://NAME``: an in-process broker that no other test shares."""
    return f"memory://{_token()}"


@pytest.fixture
def vertebra_url(request: pytest.FixtureRequest, memory_url: str) -> str:
    """The URL the vertebra fixtures use: ``--vertebra-url`` if given, else ``memory_url``."""
    url = request.config.getoption(URL_OPTION)
    return str(url).replace("{test}", _token()) if url else memory_url


@pytest.fixture
def vertebra_harness(vertebra_url: str) -> Iterator[Harness]:
    """A :class:`~vertebra.testing.Harness` on ``vertebra_url``, closed after the test."""
    with Harness(vertebra_url) as harness:
        yield harness


@pytest.fixture
def vertebra_bus(vertebra_harness: Harness) -> Bus:
    """A connected sync bus (the harness's client): ``vertebra_bus.proxy("calc").add(2, 3)``."""
    return vertebra_harness.client


class _Served:
    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    def __call__(self, *nodes: Servable, **options: Any) -> Bus:
        return self._harness.served(*nodes, **options)


@pytest.fixture
def served(vertebra_harness: Harness) -> _Served:
    """``served(Calc(), ...)`` serves nodes on a bus of their own and returns that bus once
    ``vertebra_bus`` can route to them (options: ``clock=``, ``bus=``, ``timeout=``)."""
    return _Served(vertebra_harness)


class Recorders:
    """What the ``recorder`` fixture gives: recorders made on the test's harness."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def service(self, name: str, answers: Mapping[str, Any] | None = None) -> Recorder:
        """A stand-in for service ``name`` recording every call, cast and task to it."""
        return self.harness.record(name, answers)

    def events(self, pattern: str) -> Recorder:
        """A subscription to ``pattern`` recording every event (in force on return)."""
        return self.harness.record_events(pattern)


@pytest.fixture
def recorder(vertebra_harness: Harness) -> Recorders:
    """``recorder.service("mailer")`` / ``recorder.events("orders.#")``: a
    :class:`~vertebra.testing.Recorder` to assert on (``.wait_for(n)``)."""
    return Recorders(vertebra_harness)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`~vertebra.testing.FakeClock`: ``served(node, clock=fake_clock)`` runs its
    task retries without sleeping; ``fake_clock.sleeps`` lists the waits it skipped."""
    return FakeClock()


@pytest.fixture
def zmq_hub() -> Iterator[Hub]:
    """An embedded zmq:// hub on a free loopback port (``zmq_hub.url``), stopped after the
    test.  Skipped when pyzmq is not installed."""
    if importlib.util.find_spec("zmq") is None:
        pytest.skip(ZMQ_HINT)
    from ..transports.zmq import Hub

    with Hub("tcp://127.0.0.1:0") as hub:
        yield hub


# -- async fixtures (pytest-asyncio) ----------------------------------------------------

class AsyncRecorders:
    """What the ``recorder_async`` fixture gives (see :class:`Recorders`)."""

    def __init__(self, harness: AsyncHarness) -> None:
        self.harness = harness

    async def service(self, name: str, answers: Mapping[str, Any] | None = None) -> Recorder:
        """A stand-in for service ``name`` recording every call, cast and task to it."""
        return await self.harness.record(name, answers)

    async def events(self, pattern: str) -> Recorder:
        """A subscription to ``pattern`` recording every event (in force on return)."""
        return await self.harness.record_events(pattern)


class _ServedAsync:
    def __init__(self, harness: AsyncHarness) -> None:
        self._harness = harness

    async def __call__(self, *nodes: Servable, **options: Any) -> AsyncBus:
        return await self._harness.served(*nodes, **options)


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def vertebra_async_harness(vertebra_url: str) -> AsyncIterator[AsyncHarness]:
        """An :class:`~vertebra.testing.AsyncHarness` on ``vertebra_url``, on the test's loop."""
        async with AsyncHarness(vertebra_url) as harness:
            yield harness

    @pytest_asyncio.fixture
    async def vertebra_async_bus(vertebra_async_harness: AsyncHarness) -> AsyncBus:
        """A started :class:`~vertebra.AsyncBus` (the async harness's client)."""
        return await vertebra_async_harness.client()

    @pytest_asyncio.fixture
    async def served_async(vertebra_async_harness: AsyncHarness) -> _ServedAsync:
        """``await served_async(Calc())``: the async twin of ``served``."""
        return _ServedAsync(vertebra_async_harness)

    @pytest_asyncio.fixture
    async def recorder_async(vertebra_async_harness: AsyncHarness) -> AsyncRecorders:
        """``await recorder_async.service("mailer")``: the async twin of ``recorder``."""
        return AsyncRecorders(vertebra_async_harness)

else:
    def _needs_asyncio(name: str) -> Any:
        @pytest.fixture(name=name)
        def fixture() -> None:
            pytest.fail(f"the {name} fixture {ASYNC_HINT}", pytrace=False)
        fixture.__doc__ = f"Unavailable: {ASYNC_HINT}."
        return fixture

    vertebra_async_harness = _needs_asyncio("vertebra_async_harness")
    vertebra_async_bus = _needs_asyncio("vertebra_async_bus")
    served_async = _needs_asyncio("served_async")
    recorder_async = _needs_asyncio("recorder_async")

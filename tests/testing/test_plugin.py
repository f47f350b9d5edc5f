"""The pytest plugin vertebra.testing, tested as its users meet it: pytester runs small test
files in a fresh pytest process, with pytest-asyncio and without it.

Each inner run disables plugin autoloading and names its plugins with ``-p``, so what is
loaded is exactly what the test says (and the result is the same whether or not the
``pytest11`` entry point is installed).
"""

from __future__ import annotations

import pytest

from vertebra.transports.zmq import Hub

pytest_plugins = ["pytester"]

INNER_TIMEOUT = 50  # seconds: an inner run that hangs fails this test instead of hanging it

NODES = '''
import time
import pytest
import vertebra
from vertebra import Node, rpc, task, event


class Calc(Node):
    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b


class Flaky(Node):
    retry_delay = 0.5
    max_attempts = 3

    @task
    def crunch(self, job: str) -> None:
        raise RuntimeError("always")


class Signup(Node):
    """Registers users: mails them and announces them."""

    @rpc
    def register(self, user: str) -> str:
        with vertebra.connect(URL) as bus:        # the service's own client, as in production
            bus.proxy("mailer").send.cast(user, subject="welcome")
            bus.publish("users.created", {"user": user})
        return user


URL = ""
'''


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(nodes=NODES)
    pytester.makepyfile(block_asyncio="import sys\nsys.modules['pytest_asyncio'] = None\n",
                        block_zmq="import sys\nsys.modules['zmq'] = None\n")
    return pytester


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "no:cacheprovider", *args, "-rsf", timeout=INNER_TIMEOUT)


SYNC_ASYNC_ARGS = ("-p", "pytest_asyncio.plugin", "-p", "vertebra.testing",
                   "-o", "asyncio_default_fixture_loop_scope=function")


def test_sync_fixtures_without_pytest_asyncio(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_sync='''
        import time
        import pytest
        import nodes
        from nodes import Calc, Flaky, Signup


        def test_served_node_is_routable_at_once(served, vertebra_bus):
            bus = served(Calc())
            assert vertebra_bus.proxy("calc").add(2, 3) == 5
            assert bus is not vertebra_bus          # the node has a bus of its own

        def test_each_test_has_its_own_memory_broker(vertebra_bus, vertebra_url):
            assert vertebra_url.startswith("memory://")
            assert vertebra_bus.nodes() == []       # nothing served by the test before

        def test_recorders_see_casts_and_events(served, recorder, vertebra_bus, vertebra_url):
            nodes.URL = vertebra_url
            mail = recorder.service("mailer")
            created = recorder.events("users.*")
            served(Signup())
            assert vertebra_bus.proxy("signup").register("bob") == "bob"
            [sent] = mail.wait_for(1)
            assert (sent.kind, sent.method, sent.args, sent.kwargs) == (
                "cast", "send", ("bob",), {"subject": "welcome"})
            [ev] = created.wait_for(1)
            assert (ev.topic, ev.payload) == ("users.created", {"user": "bob"})

        def test_a_recorder_answers_calls(recorder, vertebra_bus):
            rec = recorder.service("prices", {"quote": lambda item: {"item": item, "eur": 3}})
            assert vertebra_bus.proxy("prices").quote("tea") == {"item": "tea", "eur": 3}
            assert vertebra_bus.proxy("prices").other() is None
            assert [r.method for r in rec.wait_for(2)] == ["quote", "other"]

        def test_fake_clock_drives_task_retries(served, vertebra_bus, fake_clock):
            before = fake_clock.time()
            served(Flaky(), clock=fake_clock)
            vertebra_bus.proxy("flaky").crunch.cast("job-1")
            deadline = time.monotonic() + 20
            while not vertebra_bus.dead_letters("flaky"):
                assert time.monotonic() < deadline, "the task was never buried"
                time.sleep(0.01)
            [dead] = vertebra_bus.dead_letters("flaky")
            assert dead.attempts == 3
            assert fake_clock.sleeps == [0.5, 1.0]   # retry_delay, doubled; jitter fixed at 1
            assert fake_clock.time() - before == pytest.approx(1.5)   # and no real wait

        def test_a_recorder_that_gets_nothing_fails_the_test(recorder):
            rec = recorder.service("silent")
            rec.wait_for(1, timeout=0.2)

        def test_async_fixture_says_what_is_missing(vertebra_async_bus):
            pass
    ''')
    result = run(inner, "-p", "block_asyncio", "-p", "vertebra.testing")
    result.assert_outcomes(passed=5, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*service silent: expected 1 message(s) within 0.2s, got 0*"])
    result.stdout.fnmatch_lines(["*the vertebra_async_bus fixture needs pytest-asyncio: "
                                 "pip install pytest-asyncio*"])


def test_async_fixtures_in_strict_mode(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_async='''
        import asyncio
        import pytest
        import nodes
        from nodes import Calc, Flaky, Signup


        @pytest.mark.asyncio
        async def test_served_async(served_async, vertebra_async_bus):
            await served_async(Calc())
            assert await vertebra_async_bus.proxy("calc").add(2, 3) == 5

        @pytest.mark.asyncio
        async def test_recorders_async(recorder_async, vertebra_async_bus):
            rec = await recorder_async.service("mailer")
            events = await recorder_async.events("orders.#")
            vertebra_async_bus.proxy("mailer").send.cast("x")
            vertebra_async_bus.publish("orders", {"n": 1})
            [r] = await rec.wait_for_async(1)
            [e] = await events.wait_for_async(1)
            assert (r.method, r.args, e.topic, e.payload) == ("send", ("x",), "orders", {"n": 1})
            with pytest.raises(RuntimeError, match="wait_for_async"):
                rec.wait_for(1)                 # would block the loop that delivers

        @pytest.mark.asyncio
        async def test_fake_clock_async(served_async, vertebra_async_bus, fake_clock):
            await served_async(Flaky(), clock=fake_clock)
            vertebra_async_bus.proxy("flaky").crunch.cast("j")
            for _ in range(2000):
                if await vertebra_async_bus.dead_letters("flaky"):
                    break
                await asyncio.sleep(0.01)
            assert len(await vertebra_async_bus.dead_letters("flaky")) == 1
            assert fake_clock.sleeps == [0.5, 1.0]

        def test_sync_fixtures_still_work(served, vertebra_bus):
            served(Calc())
            assert vertebra_bus.proxy("calc").add(1, 1) == 2
    ''')
    result = run(inner, *SYNC_ASYNC_ARGS)
    result.assert_outcomes(passed=4)


def test_async_fixtures_in_auto_mode(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_auto='''
        from nodes import Calc

        async def test_unmarked(served_async, vertebra_async_bus):
            await served_async(Calc())
            assert await vertebra_async_bus.proxy("calc").add(4, 5) == 9
    ''')
    result = run(inner, *SYNC_ASYNC_ARGS, "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=1)


def test_vertebra_url_option_runs_the_same_tests_on_a_real_transport(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_url='''
        from nodes import Calc

        def test_on_the_given_url(served, vertebra_bus, vertebra_url, pytestconfig):
            assert vertebra_url == pytestconfig.getoption("--vertebra-url")
            assert vertebra_bus.core.transport.scheme == "zmq"
            served(Calc())
            assert vertebra_bus.proxy("calc").add(2, 3) == 5
    ''')
    with Hub("tcp://127.0.0.1:0") as hub:
        result = run(inner, "-p", "vertebra.testing", f"--vertebra-url={hub.url}")
    result.assert_outcomes(passed=1)


def test_a_test_placeholder_gives_each_test_its_own_name(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_names='''
        seen = []

        def test_one(vertebra_url):
            seen.append(vertebra_url)

        def test_two(vertebra_url):
            seen.append(vertebra_url)
            assert all(u.startswith("memory://ns-t") for u in seen)
            assert seen[0] != seen[1]
    ''')
    result = run(inner, "-p", "vertebra.testing", "--vertebra-url=memory://ns-{test}")
    result.assert_outcomes(passed=2)


def test_zmq_hub_fixture_and_its_skip_without_pyzmq(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_hub='''
        import vertebra
        from nodes import Calc

        def test_hub(zmq_hub):
            assert zmq_hub.url.startswith("zmq://127.0.0.1:")
            with vertebra.connect(zmq_hub.url) as bus:
                bus.serve(Calc())
                assert bus.proxy("calc").add(2, 3) == 5
    ''')
    run(inner, "-p", "vertebra.testing").assert_outcomes(passed=1)
    skipped = run(inner, "-p", "block_zmq", "-p", "vertebra.testing")
    skipped.assert_outcomes(skipped=1)
    assert "the zmq_hub fixture needs pyzmq: pip install 'vertebra[zmq]'" in skipped.stdout.str()

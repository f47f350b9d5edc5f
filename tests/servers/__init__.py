"""Real servers for the test suite, one module per transport scheme.

Each module ``tests/servers/<scheme>.py`` provides::

    @contextlib.contextmanager
    def running(tmp_dir: pathlib.Path) -> Iterator[Server]
        # start (or find) the server once per test session; raise if it cannot start
        # (a transport whose server cannot start FAILS the run, it is never skipped)

    class Server:
        @contextlib.contextmanager
        def namespace(self, test_id: str) -> Iterator[Callable[[str], str]]
            # per test: yields url_for(role) -> a URL for one new bus.  ``role`` is the
            # name of the service that bus will serve ("calc"), or "client" / "client2"
            # for a bus that only calls.  Everything the test created on the server
            # (queues, exchanges, accounts, nodes) is removed afterwards.

The conformance suite (tests/conformance/conftest.py) uses exactly this and nothing else.
"""

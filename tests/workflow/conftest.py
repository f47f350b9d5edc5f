"""Workflows run on every transport, on the conformance suite's fixtures."""

from tests.conformance.conftest import open_bus, scheme, servers, sync_bus, url_for  # noqa: F401

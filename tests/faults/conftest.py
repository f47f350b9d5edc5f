"""The fault suite runs on the conformance suite's fixtures: every transport, real servers."""

from tests.conformance.conftest import open_bus, scheme, servers, sync_bus, url_for  # noqa: F401

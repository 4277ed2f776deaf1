"""Fixtures shared by the integration tests."""

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the session's in-process flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

"""For test modules that read or render files only: conftest.py's session
fixtures are autouse, and without root `_privileged` skips every test of this
folder (fails with FLOWMETER_REQUIRE_PRIVILEGED=1). Such a module imports these
two names, which shadow conftest's with fixtures that do nothing:

    from unprivileged import _privileged, _remove_stale_namespaces  # noqa: F401
"""
import pytest


@pytest.fixture(scope="session")
def _privileged():
    yield


@pytest.fixture(scope="session")
def _remove_stale_namespaces():
    yield

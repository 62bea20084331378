import pytest

from tests.local_http import LocalServer


@pytest.fixture
def http_server():
    """A LocalServer on 127.0.0.1 (see tests/local_http.py), shut down after the test."""
    server = LocalServer()
    yield server
    server.close()

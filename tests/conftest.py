import os

import pytest

from tests.local_http import LocalServer
from tools import synthetic_data

OFFICIAL_DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'reference', 'data')


def official_file(rel):
    """Path of an official data file in ../shared/reference/data, or skip the test without it."""
    path = os.path.join(OFFICIAL_DATA, rel)
    if not os.path.isfile(path):
        pytest.skip(f'{rel}: ../shared/reference/data not available')
    return path


@pytest.fixture
def http_server():
    """A LocalServer on 127.0.0.1 (see tests/local_http.py), shut down after the test."""
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture(scope='session')
def synthetic(tmp_path_factory):
    """Synthetic datasets written once per run: synthetic(name, **options) -> the writer's info
    dict (tools/synthetic_data.py). Tests that change files must copy the folder first."""
    written = {}

    def get(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in written:
            written[key] = synthetic_data.WRITERS[name](str(tmp_path_factory.mktemp(name)), **options)
        return written[key]
    return get

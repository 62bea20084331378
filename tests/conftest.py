"""Fixtures shared by the test modules (helpers to import are in tests/helpers.py), and the rule that
keeps tests marked ``long`` out of every run whose -m does not name them."""
import pytest

import demo_custom_gcn
import demo_voc2007_gcn
import label_files
from tests.helpers import QUICK, custom_argv, run_demo
from tests.local_http import LocalServer
from tools import synthetic_data


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` (minutes) run only when -m names them (``python -m pytest -m long``);
    any other -m, such as ``-m "not slow"``, leaves them out as the default run does."""
    if 'long' in (config.getoption('markexpr') or ''):
        return
    deselected = [item for item in items if item.get_closest_marker('long')]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker('long')]


@pytest.fixture
def http_server():
    """A LocalServer on 127.0.0.1 (see tests/local_http.py), shut down after the test."""
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture(scope='module')
def browser():
    """Headless Chromium driven by Playwright (tests/browser.py), once per test module (its driver
    must not outlive the module: processes forked later, such as loader workers, would inherit its
    pipes); a test that uses it skips, saying why, where there is no browser."""
    from tests import browser as chromium
    with chromium.launched() as instance:
        yield instance


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


@pytest.fixture(scope='session')
def voc_run(synthetic, tmp_path_factory):
    """Two epochs of VOC training (64 px, ResNet-18) with an EMA of the weights and the ASL loss,
    through demo_voc2007_gcn.py: (dataset info, save folder). Tests must not change the folder."""
    info = synthetic('voc', n_trainval=16, n_test=8, image_size=64)
    save = tmp_path_factory.mktemp('voc_run') / 'out'
    argv = [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], '--epochs', '2',
            '--epoch_step', '1', '-b', '8', '--seed', '0', '--save-dir', save, '--ema-decay', '0.9', '--loss', 'asl',
            *QUICK]
    code, out = run_demo(demo_voc2007_gcn, argv)
    assert code == 0, out
    return info, save


@pytest.fixture(scope='session')
def custom_run(synthetic, tmp_path_factory):
    """One epoch on the synthetic custom data (24 train, 12 val images; test.csv: 12 more) with no
    graph or word file, through demo_custom_gcn.py: (dataset info, save folder, what it printed).
    Tests must not change the folder."""
    info = synthetic('custom', n_train=24, n_val=12, n_test=12)
    label_files._text_or_fallback_vectors.cache_clear()
    save = tmp_path_factory.mktemp('custom_run') / 'out'
    code, out = run_demo(demo_custom_gcn, custom_argv(info['root'], save))
    assert code == 0, out
    return info, save, out

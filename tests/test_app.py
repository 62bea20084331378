"""app.py: the local Gradio app, started as a user starts it, called through gradio_client and
used in a real browser (tests/browser.py)."""
import csv
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch

import app
from tests import browser as chromium
from tests.helpers import REPO, assert_one_line_error, run_main

STARTUP_S = 180


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def served(custom_run, tmp_path_factory):
    """``python app.py --resume`` custom_run's best checkpoint on a free port: (url, checkpoint, two
    images, the server's log, the class names)."""
    info, save, _ = custom_run
    checkpoint = save / 'model_best.pth.tar'
    port = free_port()
    log = tmp_path_factory.mktemp('app') / 'app.log'
    with open(log, 'w') as out:
        process = subprocess.Popen([sys.executable, os.path.join(REPO, 'app.py'), '--resume', str(checkpoint),
                                    '--port', str(port), '--device', 'cpu'], cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    url = f'http://127.0.0.1:{port}/'
    try:
        deadline = time.monotonic() + STARTUP_S
        while 'Running on local URL' not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        images = [os.path.join(info['root'], 'images', 'val', f'{i:04d}.jpg') for i in range(2)]
        yield url, checkpoint, images, log, info['sorted_classes']
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_defaults_stay_on_this_machine():
    args = app.get_app_parser().parse_args(['--resume', 'x.pth.tar'])
    assert args.host == '127.0.0.1' and args.share is False and args.thresholds is None


def test_predict_endpoint_gives_predict_py_probabilities(served, tmp_path, capsys):
    from gradio_client import Client, handle_file
    url, checkpoint, images, log, classes = served
    assert f'Running on local URL:  {url.rstrip("/")}' in log.read_text()   # bound to 127.0.0.1 by default
    assert predict_main(images, checkpoint, tmp_path / 'p.csv') == 0
    with open(tmp_path / 'p.csv', newline='', encoding='utf-8') as f:
        header, *rows = list(csv.reader(f))
    client = Client(url, verbose=False)
    for image, row in zip(images, rows):
        payload = client.predict(handle_file(image), api_name='/predict')
        got = {item['label']: item['confidence'] for item in payload['confidences']}
        assert header[2:] == classes and sorted(got) == sorted(classes)
        assert [got[name] for name in header[2:]] == pytest.approx([float(p) for p in row[2:]], abs=1e-5)
    assert docs_example(url, images[0]) == pytest.approx(dict(zip(header[2:], map(float, rows[0][2:]))), abs=1e-5)
    (tmp_path / 'notes.txt').write_text('not an image')
    with pytest.raises(Exception, match='not an image that can be read'):
        client.predict(handle_file(str(tmp_path / 'notes.txt')), api_name='/predict')


def docs_example(url, image):
    """The gradio_client example of docs/using.md, run as written on this server and image: {class: probability}."""
    with open(os.path.join(REPO, 'docs', 'using.md'), encoding='utf-8') as f:
        code = next(block for block in re.findall(r'```python\n(.*?)```', f.read(), re.S) if 'gradio_client' in block)
    scope = {}
    exec(code.replace("'http://127.0.0.1:7860/'", repr(url)).replace("'photo.jpg'", repr(image)), scope)
    return scope['probabilities']


def predict_main(images, checkpoint, out):
    import predict
    return predict.main([*images, '--resume', str(checkpoint), '--out', str(out), '-j', '0', '--device', 'cpu'])


def test_the_app_in_a_browser(served, browser, tmp_path):
    """The page renders; two images and a text file uploaded: the text file's message, the first
    image's labels, bars and attention sheet."""
    url, _, images, _, classes = served
    (tmp_path / 'notes.jpg').write_text('not an image, whatever its name says')
    with chromium.page(browser, width=1280, height=1000) as (tab, errors):
        tab.goto(url)
        tab.wait_for_selector('#files input[type=file]', state='attached', timeout=60_000)
        assert 'MSRN: model_best.pth.tar' in tab.inner_text('body')
        tab.set_input_files('#files input[type=file]', [*images, str(tmp_path / 'notes.jpg')])
        tab.wait_for_function("document.querySelector('#status').innerText.includes('files read')", timeout=60_000)
        status = tab.inner_text('#status')
        assert '2 of 3 files read.' in status and 'notes.jpg is not an image that can be read' in status
        assert 'threshold 0.50' in tab.inner_text('#labels')
        tab.wait_for_function("Array.from(document.querySelectorAll('#sheet img')).some(i => i.naturalWidth > 800)",
                              timeout=60_000)
        bars = tab.inner_text('#bars')
        assert all(name in bars for name in classes) and '%' in bars
        tab.wait_for_timeout(500)   # the sheet fades in
        assert not chromium.is_blank(chromium.screenshot(tab, 'app', full_page=True))
        assert not [e for e in errors if 'favicon' not in e]


def test_labels_follow_the_slider_or_each_classs_threshold():
    probabilities = torch.tensor([0.2, 0.7, 0.4])
    assert app.labels_text(['a', 'b', 'c'], probabilities, [0.5] * 3, False) == \
        'Labels at or above the threshold 0.50: **b** 0.700'
    assert app.labels_text(['a', 'b', 'c'], probabilities, [0.1, 0.9, 0.3], True) == \
        "Labels at or above its class threshold: **c** 0.400, **a** 0.200"
    assert app.labels_text(['a', 'b', 'c'], probabilities, [0.9] * 3, False) == \
        'No label reaches the threshold 0.90 (best: b 0.700).'


def test_bad_flags_stop_the_start_with_one_line():
    result = run_main('app.py', '--resume', 'x.pth.tar', '--threshold', '0.3', '--thresholds', 't.json')
    assert_one_line_error(result, r'give --threshold .* or --thresholds .*not both')
    assert_one_line_error(run_main('app.py', '--resume', 'x.pth.tar', '--threshold', '2'), r'not a probability')


def test_a_checkpoint_that_is_not_msrn_stops_the_start_with_one_line(tmp_path):
    torch.save({'model': {'layer.weight': torch.zeros(2, 2)}}, tmp_path / 'other.pth')
    result = run_main('app.py', '--resume', tmp_path / 'other.pth', '--device', 'cpu')
    assert_one_line_error(result, r"other.pth: expected a dict with a 'state_dict'")

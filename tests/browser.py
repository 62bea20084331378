"""A real browser for the tests: the system's Chromium (Debian's ``chromium``), headless, driven
through Playwright's Python package, which is pointed at that executable and so never downloads
a browser. Without either, the tests that need it skip, saying which is missing.

``MSRN_SCREENSHOTS=DIR`` makes the browser tests save the screenshots they take into DIR (the
README's pictures come from there: docs/testing.md).
"""
import contextlib
import importlib.util
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

# where a system Chromium is found, first match wins; MSRN_CHROMIUM names another executable
CANDIDATES = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']
SCREENSHOT_WIDTH = 900   # px: the saved screenshots are scaled down to this width


def executable():
    """The path of the system Chromium, or None."""
    named = os.environ.get('MSRN_CHROMIUM')
    if named:
        return shutil.which(named) or (named if os.access(named, os.X_OK) else None)
    return next((found for found in map(shutil.which, CANDIDATES) if found), None)


def missing():
    """Why no browser test can run here, or None."""
    if executable() is None:
        return 'no Chromium found (apt-get install chromium; .ci/run installs it)'
    if importlib.util.find_spec('playwright') is None:
        return 'the playwright package is not installed (pip install -r requirements.txt)'
    return None


@contextlib.contextmanager
def launched():
    """A headless Chromium (Playwright Browser) with a fresh profile; skips the test without one."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable(), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def page(browser, width=1200, height=900):
    """A new page and the list it collects its console errors and uncaught exceptions in."""
    context = browser.new_context(viewport={'width': width, 'height': height})
    tab = context.new_page()
    errors = []
    tab.on('console', lambda message: errors.append(message.text) if message.type == 'error' else None)
    tab.on('pageerror', lambda error: errors.append(str(error)))
    try:
        yield tab, errors
    finally:
        context.close()


def screenshot(tab, name, **options):
    """A screenshot of ``tab`` as a PIL image; saved as ``name``.png (scaled down, 256 colours) into
    $MSRN_SCREENSHOTS when it is set."""
    shot = Image.open(io.BytesIO(tab.screenshot(**options))).convert('RGB')
    folder = os.environ.get('MSRN_SCREENSHOTS')
    if folder:
        os.makedirs(folder, exist_ok=True)
        small = shot.resize((SCREENSHOT_WIDTH, round(shot.height * SCREENSHOT_WIDTH / shot.width)), Image.LANCZOS)
        small.quantize(256, method=Image.Quantize.FASTOCTREE).save(os.path.join(folder, f'{name}.png'), optimize=True)
    return shot


def is_blank(image):
    """True when a screenshot is (nearly) one colour."""
    return float(np.asarray(image, dtype=np.float32).std()) < 2

"""Repository hygiene that users rely on: CI runs what the README tells them to run."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    install = re.search(r'## Install\n\n```\n(.*?)```', read('README.md'), re.S).group(1).splitlines()
    assert install == ['pip install -r requirements.txt', 'python -m pytest -q']
    ci_lines = [line for line in read('.ci/run').splitlines() if line and not line.startswith('#')]
    assert ci_lines[ci_lines.index(install[0]):][:2] == install


def test_no_official_data_files_are_committed():
    """The official pickles are downloaded with a pinned sha256, never copied into the repo."""
    if not os.path.isdir(os.path.join(REPO, '.git')):
        pytest.skip('not a git checkout')
    tracked = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [f for f in tracked.splitlines() if f.endswith(('.pkl', '.npy', '.npz', '.pth', '.tar'))]

"""Repository hygiene that users rely on: CI runs what the README tells them to run."""
import ast
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


def imported_modules(name):
    tree = ast.parse(read(name))
    found = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    return found | {node.module.split('.')[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}


def test_the_engine_depends_on_neither_the_model_nor_the_command_line():
    for name in ('engine.py', 'checkpoint.py'):
        assert not imported_modules(name) & {'models', 'cli', 'argparse'}, name
    names = {node.id for node in ast.walk(ast.parse(read('engine.py'))) if isinstance(node, ast.Name)}
    assert 'args' not in names


def modules_reading_attributes_of_args():
    """The top-level modules in which a name ``args`` has its attributes read (parsed arguments)."""
    found = set()
    for name in sorted(os.listdir(REPO)):
        if name.endswith('.py'):
            nodes = ast.walk(ast.parse(read(name)))
            if any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == 'args'
                   for n in nodes):
                found.add(name)
    return found


def test_cli_docstring_names_exactly_the_modules_that_read_the_parsed_arguments():
    doc = ast.get_docstring(ast.parse(read('cli.py')))
    sentence = re.search(r'^Modules that read the parsed arguments: (.*?)\.$', doc, re.M).group(1)
    assert set(re.findall(r'\w+\.py', sentence)) == modules_reading_attributes_of_args() != set()


def test_readme_test_section_names_every_command_ci_runs():
    ci_tests = [line for line in read('.ci/run').splitlines() if line.startswith('python -m pytest')]
    assert ci_tests == ['python -m pytest -q', 'python -m pytest -q -m long']
    section = read('README.md').split('## Tests and benchmarks')[1]
    for command in ci_tests:
        assert command in section

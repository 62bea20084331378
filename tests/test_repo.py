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


def test_run_docstring_names_exactly_the_modules_that_read_the_parsed_arguments():
    doc = ast.get_docstring(ast.parse(read('run.py')))
    sentence = re.search(r'^Modules that read the parsed arguments: (.*?)\.$', doc, re.M).group(1)
    assert set(re.findall(r'\w+\.py', sentence)) == modules_reading_attributes_of_args() != set()


def test_readme_test_section_names_every_command_ci_runs():
    ci_tests = [line for line in read('.ci/run').splitlines() if line.startswith('python -m pytest')]
    assert ci_tests == ['python -m pytest -q', 'python -m pytest -q -m long']
    section = read('README.md').split('## Tests and benchmarks')[1]
    for command in ci_tests:
        assert command in section


def module_imports(path):
    """The top-level modules of the repository that ``path`` imports, anywhere in it (inside
    functions too)."""
    local = {name[:-3] for name in os.listdir(REPO) if name.endswith('.py')}
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split('.')[0])
    return found & local


def test_the_modules_import_one_another_without_a_cycle():
    graph = {name[:-3]: module_imports(os.path.join(REPO, name)) for name in os.listdir(REPO) if name.endswith('.py')}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module):] + [module])}")
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)
    for module in sorted(graph):
        visit(module)
    assert graph['cli'] and 'demo_voc2007_gcn' not in set().union(*graph.values())   # the walk saw imports


def test_the_shape_of_the_code():
    assert len(read('cli.py').splitlines()) <= 400
    engine = next(node for node in ast.walk(ast.parse(read('engine.py')))
                  if isinstance(node, ast.ClassDef) and node.name == 'GCNMultiLabelMAPEngine')
    init = next(node for node in engine.body if isinstance(node, ast.FunctionDef) and node.name == '__init__')
    parameters = init.args.args[1:] + init.args.kwonlyargs
    assert len(parameters) <= 10, [a.arg for a in parameters]
    calls = {node.func.id if isinstance(node.func, ast.Name) else node.func.attr
             for node in ast.walk(ast.parse(read('models.py'))) if isinstance(node, ast.Call)
             and isinstance(node.func, (ast.Name, ast.Attribute))}
    assert not calls & {'open', 'load', 'load_adjacency', 'read_checkpoint'}, 'models.py reads a file'

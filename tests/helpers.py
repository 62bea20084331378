"""What several test modules share: paths, reference files, small models and graphs, the quick CPU
flags of the demo scripts, and running an entry script in a process of its own."""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import MSRN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Files produced by the official code, beside the repository where they exist; tests that read
# them skip elsewhere, and the same behaviour is checked on synthetic data.
REFERENCE = Path(REPO).parent / 'shared' / 'reference'
OFFICIAL_DATA = str(REFERENCE / 'data')
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason='../shared/reference not present')

# A demo script run that stays small: ResNet-18 from scratch, 64 px, no loader process, CPU.
QUICK = ['--backbone', 'resnet18', '--pretrained', '0', '--image-size', '64', '-j', '0', '--device', 'cpu',
         '--no-download']


def official_file(rel):
    """Path of an official data file in ../shared/reference/data, or skip the test without it."""
    path = os.path.join(OFFICIAL_DATA, rel)
    if not os.path.isfile(path):
        pytest.skip(f'{rel}: ../shared/reference/data not available')
    return path


def random_graph(num_classes, seed=0):
    """Co-occurrence counts {adj, nums} of a plausible label graph."""
    rng = np.random.default_rng(seed)
    nums = rng.integers(20, 200, num_classes)
    adj = np.triu(rng.integers(0, 60, (num_classes, num_classes)), 1)
    adj = np.minimum(adj + adj.T, nums[:, None])
    return {'adj': adj, 'nums': nums}


def small_model(num_classes=5, pool_ratio=0.4, backbone='resnet18', seed=0, **kwargs):
    torch.manual_seed(seed)
    return MSRN(num_classes, pool_ratio, backbone, random_graph(num_classes, seed), **kwargs)


def meta_model(num_classes, pool_ratio, backbone='resnet101'):
    with torch.device('meta'):  # layout only: no memory, no init cost
        return MSRN(num_classes, pool_ratio, backbone, random_graph(num_classes))


def official_checkpoint(path, num_classes, pool_ratio, backbone, graph):
    """An official-format checkpoint of random weights. Its BatchNorm statistics are measured on
    random images (fresh ones give eval features of ~1e4 in a ResNet-101, which overflow float16)."""
    torch.manual_seed(0)
    model = MSRN(num_classes, pool_ratio, backbone, graph)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    with torch.no_grad():
        model.train().resnet_101(torch.randn(4, 3, 64, 64))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'epoch': 20, 'arch': None, 'state_dict': model.state_dict(), 'best_score': torch.tensor(90.0)}, path)
    return model


def custom_argv(root, save_dir, *extra):
    """A one-epoch run of demo_custom_gcn.py on ``root``, small and on the CPU."""
    return [str(root), '--backbone', 'resnet18', '--pretrained', '0', '--image-size', '64', '-b', '8', '-j', '0',
            '--device', 'cpu', '--seed', '0', '--epochs', '1', '--save-dir', str(save_dir), *map(str, extra)]


def run_demo(demo, argv):
    """A demo script's main in this process: (exit code, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = demo.main(demo.DATASET, list(map(str, argv)))
    return code, out.getvalue()


def run_script(script, *argv, cwd=None):
    """A script of the repository in a process of its own: the CompletedProcess (text)."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, argv)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, pattern):
    """Exit code 2, no traceback, one 'error:' line (progress bars may precede it on stderr)."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
    assert re.search(pattern, errors[0]), errors[0]

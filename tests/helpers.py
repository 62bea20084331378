"""What several test modules share: paths, reference files, small models and graphs, the quick CPU
flags of the demo scripts, and running an entry script in a process of its own."""
import contextlib
import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attention import plain_label_attention
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
    return [str(root), *QUICK, '-b', '8', '--seed', '0', '--epochs', '1', '--save-dir', str(save_dir), *map(str, extra)]


def run_demo(demo, argv):
    """A demo script's main in this process: (exit code, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = demo.main(demo.DATASET, list(map(str, argv)))
    return code, out.getvalue()


def run_main(script, *argv):
    """An entry script's ``main`` in this process (much faster than a new one), as ``run_script``
    gives it: the CompletedProcess (returncode, stdout, stderr) of ``python script argv``."""
    module = importlib.import_module(script.removesuffix('.py'))
    args = list(map(str, argv))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main(module.DATASET, args) if hasattr(module, 'DATASET') else module.main(args)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


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


# ---- the label attention: inputs, and answers against the float64 formula ----------------------

# output, grad_x and grad_nodes of the float32 versions against the float64 formula, relative to
# each tensor's largest value, at full size on trained_like inputs (measured: 5e-7 at worst, both versions)
PRECISION = 3e-5


def inputs(batch, positions, nodes, dim, dtype=torch.float32, scale=3.0, seed=0):
    """x (B, P, D) laid out as in the model (a transposed (B, D, P) conv output), nodes (N, D),
    and an output gradient (B, N, D) in float64."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, dim, positions, generator=gen) * scale).transpose(1, 2)
    nodes_ = torch.randn(nodes, dim, generator=gen)
    grad = torch.randn(batch, nodes, dim, generator=gen, dtype=torch.float64)
    return x.to(dtype), nodes_.to(dtype), grad


def trained_like(batch, positions, nodes, dim, seed=0):
    """Inputs as a trained network gives them: x (B, P, D) non-negative and long-tailed (exponential
    draws, each channel with its own exponential scale; the model's layout), node vectors of
    log-normal norms, so that some attend almost uniformly and others to one position; and an
    output gradient (B, N, D) in float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(batch, dim, positions).exponential_(generator=gen)
    x = (x * torch.empty(batch, dim, 1).exponential_(generator=gen)).transpose(1, 2)
    directions = torch.nn.functional.normalize(torch.randn(nodes, dim, generator=gen), dim=1)
    nodes_ = directions * torch.randn(nodes, 1, generator=gen).exp() * dim ** 0.5
    grad = torch.randn(batch, nodes, dim, generator=gen, dtype=torch.float64)
    return x, nodes_, grad


def outputs_and_grads(fn, x, nodes, grad):
    """fn(x, nodes) and its gradients (x, nodes) for the output gradient ``grad``."""
    x, nodes = x.detach().requires_grad_(), nodes.detach().requires_grad_()
    out = fn(x, nodes)
    return (out.detach(), *torch.autograd.grad(out, (x, nodes), grad.to(out.dtype)))


def assert_matches_float64(got, x, nodes, grad, tol=1e-5):
    """Output, grad_x and grad_nodes ``got`` within tol of the float64 formula on the same input
    values, relative to each tensor's largest value."""
    want = outputs_and_grads(plain_label_attention, x.double(), nodes.double(), grad)
    for name, g, w in zip(('output', 'grad_x', 'grad_nodes'), got, want):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, rtol=0, atol=tol * w.abs().max().item(), msg=name)


# (B, P, N, D): partial tiles of every kernel block (16 nodes, 64 channels, 32 positions)
SHAPES = [(2, 37, 5, 16), (2, 13, 20, 80), (1, 70, 3, 8)]


FULL_SIZE = [(1, 784, 84, 512), (1, 784, 24, 512)]


def with_nans(x, nodes):
    """x with a NaN at (b 0, p 3, d 2), nodes with one at (n 1, d 5); and where the output must be
    NaN: (0, every n, 2) and (every b, 1, 5), finite elsewhere."""
    x, nodes = x.clone(), nodes.clone()
    x[0, 3, 2] = nodes[1, 5] = float('nan')
    expected = torch.zeros(x.shape[0], nodes.shape[0], x.shape[2], dtype=torch.bool)
    expected[0, :, 2] = expected[:, 1, 5] = True
    return x, nodes, expected


def training_step(model):
    """Logits, loss and parameter gradients of one forward and backward of a small MSRN."""
    torch.manual_seed(1)
    logits, group_loss = model(torch.randn(2, 3, 40, 40), torch.randn(2, 5, 300))
    loss = logits.square().sum() + group_loss
    loss.backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def file_identity(path):
    """Changes whenever the file is written again, in place or onto a new inode (atomic writes)."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size

"""Label attention (attention.py): chunked and fused versions against the official formula in float64,
NaN propagation, and the default's fallback from the kernels to the chunked code.

The fused Triton kernels run on CPU tensors through Triton's interpreter, in a child process
started with TRITON_INTERPRET=1 (Triton reads it when it is imported). The compiled kernels are
checked on a GPU in test_attention_cuda.py.
"""
import multiprocessing
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import attention
from attention import auto_label_attention, chunked_label_attention, fused_label_attention, plain_label_attention
from tests.helpers import (FULL_SIZE, PRECISION, REPO, SHAPES, assert_matches_float64, inputs, outputs_and_grads,
                           small_model, trained_like, training_step, with_nans)

@pytest.fixture(scope='module')
def interpreted():
    """interpreted(fn, *args): fn(*args) run in the interpreter's process; fn must be defined at
    module level (it is sent by name)."""
    pytest.importorskip('triton')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TRITON_INTERPRET', '1')
        pool = multiprocessing.get_context('spawn').Pool(1)   # inherits the variable as it starts
    with pool:
        yield lambda fn, *args: pool.apply(fn, args)





@pytest.mark.parametrize('shape', SHAPES)
def test_fused_kernels_match_float64_formula(interpreted, shape):
    x, nodes, grad = inputs(*shape)
    assert_matches_float64(interpreted(outputs_and_grads, fused_label_attention, x, nodes, grad), x, nodes, grad)


@pytest.mark.parametrize('shape', SHAPES)
def test_chunked_matches_float64_formula_in_float32(shape):
    x, nodes, grad = inputs(*shape)
    assert_matches_float64(outputs_and_grads(chunked_label_attention, x, nodes, grad), x, nodes, grad)


@pytest.mark.parametrize('batch,positions,nodes,budget', [(2, 37, 5, 1 << 20), (3, 49, 24, 1 << 20), (3, 49, 24, 300)])
def test_chunked_in_float64_matches_formula(batch, positions, nodes, budget, monkeypatch):
    monkeypatch.setitem(attention.CHUNK_ELEMENTS, 'cpu', budget)   # small budget: many batch/node chunks
    x, nodes_, grad = inputs(batch, positions, nodes, 16, torch.float64)
    got = outputs_and_grads(chunked_label_attention, x, nodes_, grad)
    assert got[0].dtype == torch.float64
    assert_matches_float64(got, x, nodes_, grad, tol=1e-9)


def test_chunked_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 4, dtype=torch.float64, requires_grad=True)
    nodes = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chunked_label_attention, (x, nodes))


def test_fused_reads_float16_as_is(interpreted):
    """Under autocast x arrives in float16: read without a float32 copy; its gradient is float16,
    in x's layout; the output and the nodes' gradient stay float32-exact."""
    x, nodes, grad = inputs(2, 37, 20, 16, torch.float16)
    nodes = nodes.float()
    out, grad_x, grad_nodes = interpreted(outputs_and_grads, fused_label_attention, x, nodes, grad)
    assert out.dtype == torch.float32 and grad_x.dtype == torch.float16 and grad_nodes.dtype == torch.float32
    assert grad_x.stride() == x.stride()
    want_out, want_x, want_nodes = outputs_and_grads(plain_label_attention, x.double(), nodes.double(), grad)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5 * want_out.abs().max().item())
    torch.testing.assert_close(grad_nodes.double(), want_nodes, rtol=1e-5, atol=1e-5 * want_nodes.abs().max().item())
    torch.testing.assert_close(grad_x, want_x.half(), rtol=1e-3, atol=1e-3 * want_x.abs().max().item())


@pytest.mark.parametrize('impl', ['chunked', 'fused'])
def test_large_scores_do_not_overflow(impl, interpreted):
    """Scores of ±1e4 still give a convex combination of the positions."""
    x = torch.tensor([[[100.0], [99.0], [-100.0]]])
    nodes = torch.tensor([[100.0], [-100.0]])
    out = chunked_label_attention(x, nodes) if impl == 'chunked' else interpreted(fused_label_attention, x, nodes)
    torch.testing.assert_close(out, torch.tensor([[[100.0], [-100.0]]]))


def test_chunked_under_autocast_runs_in_float32():
    x, nodes, _ = inputs(2, 20, 4, 8)
    x.requires_grad_(), nodes.requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = chunked_label_attention(x.bfloat16(), nodes.bfloat16())
    assert out.dtype == torch.float32
    expected = plain_label_attention(x.bfloat16().double(), nodes.bfloat16().double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(nodes.grad).all()


def largest_saved_tensor(fn, x, nodes):
    """Elements of the largest tensor autograd keeps for the backward of fn(x, nodes)."""
    saved = []
    x, nodes = x.detach().requires_grad_(), nodes.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        fn(x, nodes).sum().backward()
    return max(saved)


@pytest.mark.parametrize('impl', ['chunked', 'fused'])
def test_saves_no_position_by_node_tensor(impl, interpreted):
    """What the lean versions keep for backward is (B, P, D)- or (B, N, D)-sized, never (B, P, N, D)."""
    batch, positions, nodes, dim = 2, 50, 30, 16
    x, l, _ = inputs(batch, positions, nodes, dim)
    lean = (largest_saved_tensor(chunked_label_attention, x, l) if impl == 'chunked' else
            interpreted(largest_saved_tensor, fused_label_attention, x, l))
    assert lean <= batch * positions * dim
    assert largest_saved_tensor(plain_label_attention, x, l) >= batch * positions * nodes * dim


def test_auto_runs_the_chunked_code_on_cpu(monkeypatch):
    x, nodes, _ = inputs(2, 37, 5, 16)
    want = chunked_label_attention(x, nodes)
    monkeypatch.setattr(attention, 'fused_label_attention', None)   # fails if called
    assert torch.equal(auto_label_attention(x, nodes), want)


def model_outputs_and_grads(attention_name, seed=4):
    """Logits and parameter gradients (by name) of a small MSRN after one backward pass."""
    model = small_model(seed=seed, attention=attention_name).train()
    torch.manual_seed(seed)
    logits, group_loss = model(torch.randn(2, 3, 40, 40), torch.randn(2, 5, 300))
    (logits.square().sum() + group_loss).backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_model_with_fused_kernels_equals_chunked(interpreted):
    """The whole model, forward and backward: the kernels see the model's layouts (a transposed
    conv output; a gradient that is a slice of the concatenated levels)."""
    fused_logits, fused_grads = interpreted(model_outputs_and_grads, 'fused')
    logits, grads = model_outputs_and_grads('chunked')
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)


# --------------------------------------------------------------------------------------------
# Precision at full size: COCO's (84 nodes) and VOC's (24) first level, one image

@pytest.mark.parametrize('shape', FULL_SIZE)
def test_chunked_is_exact_at_full_size(shape):
    x, nodes, grad = trained_like(*shape)
    assert_matches_float64(outputs_and_grads(chunked_label_attention, x, nodes, grad), x, nodes, grad, tol=PRECISION)


@pytest.mark.long   # 15-75 s each in the interpreter
@pytest.mark.parametrize('shape', FULL_SIZE)
def test_fused_kernels_are_exact_at_full_size(interpreted, shape):
    x, nodes, grad = trained_like(*shape)
    got = interpreted(outputs_and_grads, fused_label_attention, x, nodes, grad)
    assert_matches_float64(got, x, nodes, grad, tol=PRECISION)


def test_fused_kernels_are_exact_over_784_positions(interpreted):
    """The full-size case with fewer nodes and channels: sums over as many positions, in seconds."""
    x, nodes, grad = trained_like(1, 784, 16, 64)   # one tile of the forward kernel
    got = interpreted(outputs_and_grads, fused_label_attention, x, nodes, grad)
    assert_matches_float64(got, x, nodes, grad, tol=PRECISION)


def spiky(node_scale, positions=784, nodes=6, dim=64):
    """x (1, P, D) near 1 but for one large value per channel, nodes (N, D) scaled by node_scale, an
    output gradient: nodes of scale 1e-4 attend almost uniformly, so V is far from the peak (moments
    about the peak cancel); of scale 1 they split between the spike and the rest (about the mean)."""
    gen = torch.Generator().manual_seed(0)
    x = 1 + 0.5 * torch.rand(1, dim, positions, generator=gen)
    x[:, :, positions // 7] = 20 + 100 * torch.rand(1, dim, generator=gen)
    nodes_ = torch.randn(nodes, dim, generator=gen) * node_scale
    return x.transpose(1, 2), nodes_, torch.randn(1, nodes, dim, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize('node_scale', [1e-4, 1.0])
@pytest.mark.parametrize('impl', ['chunked', 'fused'])
def test_exact_on_one_spike_per_channel(impl, node_scale, interpreted):
    x, nodes, grad = spiky(node_scale)
    run = interpreted if impl == 'fused' else (lambda fn, *args: fn(*args))
    got = run(outputs_and_grads, attention.ATTENTIONS[impl], x, nodes, grad)
    assert_matches_float64(got, x, nodes, grad, tol=PRECISION)


# --------------------------------------------------------------------------------------------
# NaN in, NaN out

@pytest.mark.parametrize('impl', ['plain', 'chunked', 'fused'])
def test_nan_in_gives_nan_out(impl, interpreted):
    x, nodes, expected = with_nans(*inputs(2, 37, 20, 80)[:2])
    fn = attention.ATTENTIONS[impl]
    out = interpreted(fn, x, nodes) if impl == 'fused' else fn(x, nodes)
    assert torch.equal(out.isnan(), expected)
    assert torch.isfinite(out[~expected]).all()


# --------------------------------------------------------------------------------------------
# Double backward: an error that says so, not wrong numbers

def grad_of_grad(fn, x, nodes):
    x = x.detach().requires_grad_()
    grad_x, = torch.autograd.grad(fn(x, nodes.detach().requires_grad_()).square().sum(), x, create_graph=True)
    try:
        grad_x.sum().backward()
    except RuntimeError as error:
        return str(error)
    return 'no error'


@pytest.mark.parametrize('impl', ['chunked', 'fused'])
def test_double_backward_is_a_clear_error(impl, interpreted):
    x, nodes, _ = inputs(2, 13, 3, 8)
    fn = attention.ATTENTIONS[impl]
    message = interpreted(grad_of_grad, fn, x, nodes) if impl == 'fused' else grad_of_grad(fn, x, nodes)
    assert 'once_differentiable' in message


# --------------------------------------------------------------------------------------------
# The default's check of the kernels, and its fallback to the chunked code

@pytest.fixture
def pretend_cuda(monkeypatch):
    """auto_label_attention treats CPU tensors as if on CUDA (where the kernels apply), with no
    device checked yet in this process."""
    monkeypatch.setattr(attention, '_kernels_apply', lambda x, nodes: True)
    monkeypatch.setattr(attention, '_KERNELS_USABLE', {})


class FailingLaunch:
    """Stands for a kernel whose first launch fails to build Triton's C launcher; counts the tries."""
    calls = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls += 1
            raise RuntimeError('Failed to build the launcher: gcc: command not found\nTraceback ...\n(more lines)')
        return launch


def test_auto_falls_back_once_when_the_kernels_fail_to_build(pretend_cuda, monkeypatch):
    launch = FailingLaunch()
    monkeypatch.setattr(attention, '_forward_kernel', launch, raising=False)
    model = small_model(seed=4, attention='auto').train()
    reference = small_model(seed=4, attention='chunked').train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        logits, grads = training_step(model)
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    message = str(caught[0].message)
    assert '\n' not in message
    assert 'gcc: command not found' in message and 'chunked' in message
    want_logits, want_grads = training_step(reference)
    assert torch.equal(logits, want_logits)
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
    with warnings.catch_warnings(record=True) as caught:   # the verdict holds for the process
        warnings.simplefilter('always')
        training_step(model)
    assert caught == [] and launch.calls == 1


def test_auto_falls_back_when_the_kernels_give_wrong_numbers(pretend_cuda, monkeypatch):
    monkeypatch.setattr(attention, 'fused_label_attention', lambda x, nodes: 1.01 * chunked_label_attention(x, nodes))
    x, nodes, _ = inputs(2, 37, 5, 16)
    with pytest.warns(RuntimeWarning, match='output differs from the chunked code by 1.0e-02') as caught:
        out = auto_label_attention(x, nodes)
    assert len(caught) == 1
    assert torch.equal(out, chunked_label_attention(x, nodes))


def test_auto_uses_kernels_that_pass_the_check(pretend_cuda, monkeypatch):
    calls = []

    def kernels(x, nodes):   # right numbers, through another code path
        calls.append(x.shape)
        return plain_label_attention(x, nodes)
    monkeypatch.setattr(attention, 'fused_label_attention', kernels)
    x, nodes, _ = inputs(2, 37, 5, 16)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        auto_label_attention(x, nodes)
        auto_label_attention(x, nodes)
    assert calls == [attention.CHECK_SHAPE[:2] + attention.CHECK_SHAPE[3:], x.shape, x.shape]


def test_check_runs_under_inference_mode(pretend_cuda, monkeypatch):
    """An eval loop's first call (inference_mode, autocast) still checks forward and backward."""
    monkeypatch.setattr(attention, 'fused_label_attention', plain_label_attention)   # right numbers
    x, nodes, _ = inputs(2, 37, 5, 16)
    with warnings.catch_warnings(), torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        warnings.simplefilter('error')
        auto_label_attention(x, nodes)
    assert attention.kernels_usable(x.device)


def test_fused_fails_loudly(monkeypatch):
    monkeypatch.setattr(attention, '_forward_kernel', FailingLaunch(), raising=False)
    x, nodes, _ = inputs(2, 37, 5, 16)
    with pytest.raises(RuntimeError, match='launcher|Triton'):
        fused_label_attention(x, nodes)
    with pytest.raises(RuntimeError, match='launcher|Triton'):
        training_step(small_model(attention='fused'))


def test_broken_triton_leaves_attention_importable(tmp_path):
    """A Triton whose import raises something other than ImportError disables the kernels only."""
    (tmp_path / 'triton').mkdir()
    (tmp_path / 'triton' / '__init__.py').write_text("raise RuntimeError('libcuda.so: cannot open shared object')\n")
    child = textwrap.dedent('''
        import cli      # first: the entry scripts' module imports torchvision, which probes Triton too
        import models
        import attention, pytest, torch
        from tests.helpers import small_model, training_step
        assert attention.triton is None
        assert attention.TRITON_UNAVAILABLE == 'RuntimeError: libcuda.so: cannot open shared object'
        logits, grads = training_step(small_model(attention='auto'))
        assert torch.isfinite(logits).all() and grads
        with pytest.raises(RuntimeError, match='needs a working Triton.*libcuda'):
            training_step(small_model(attention='fused'))
        print('ok')
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    proc = subprocess.run([sys.executable, '-c', child], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['ok']

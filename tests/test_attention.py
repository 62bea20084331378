"""Label attention (attention.py): chunked and fused versions against the official formula in float64.

The fused Triton kernels run on CPU tensors through Triton's interpreter, in a child process
started with TRITON_INTERPRET=1 (Triton reads it when it is imported). The compiled kernels are
checked on a GPU in test_attention_cuda.py.
"""
import multiprocessing

import pytest
import torch

import attention
from attention import chunked_label_attention, fused_label_attention, lean_label_attention, plain_label_attention
from tests.helpers import small_model


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


def inputs(batch, positions, nodes, dim, dtype=torch.float32, scale=3.0, seed=0):
    """x (B, P, D) laid out as in the model (a transposed (B, D, P) conv output), nodes (N, D),
    and an output gradient (B, N, D) in float64."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, dim, positions, generator=gen) * scale).transpose(1, 2)
    nodes_ = torch.randn(nodes, dim, generator=gen)
    grad = torch.randn(batch, nodes, dim, generator=gen, dtype=torch.float64)
    return x.to(dtype), nodes_.to(dtype), grad


def outputs_and_grads(fn, x, nodes, grad):
    """fn(x, nodes) and its gradients (x, nodes) for the output gradient ``grad``."""
    x, nodes = x.detach().requires_grad_(), nodes.detach().requires_grad_()
    out = fn(x, nodes)
    return (out.detach(), *torch.autograd.grad(out, (x, nodes), grad.to(out.dtype)))


def assert_matches_float64(got, x, nodes, grad, rtol=1e-5):
    """Output, grad_x and grad_nodes ``got`` within rtol of the float64 formula on the same input
    values, relative to each tensor's largest value."""
    want = outputs_and_grads(plain_label_attention, x.double(), nodes.double(), grad)
    for name, g, w in zip(('output', 'grad_x', 'grad_nodes'), got, want):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, rtol=rtol, atol=rtol * w.abs().max().item(), msg=name)


# (B, P, N, D): partial tiles of every kernel block (16 nodes, 64 channels, 32 positions)
SHAPES = [(2, 37, 5, 16), (2, 13, 20, 80), (1, 70, 3, 8)]


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
    assert_matches_float64(got, x, nodes_, grad, rtol=1e-9)


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


def test_lean_runs_the_chunked_code_on_cpu(monkeypatch):
    x, nodes, _ = inputs(2, 37, 5, 16)
    want = chunked_label_attention(x, nodes)
    monkeypatch.setattr(attention, 'fused_label_attention', None)   # fails if called
    assert torch.equal(lean_label_attention(x, nodes), want)


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

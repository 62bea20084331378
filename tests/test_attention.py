"""Label attention (attention.py): the chunked version against the official formula in float64."""

import pytest
import torch

import attention
from attention import chunked_label_attention, plain_label_attention


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


@pytest.mark.parametrize('batch,positions,nodes,budget', [(2, 37, 5, 1 << 20), (3, 49, 24, 1 << 20), (3, 49, 24, 300)])
def test_chunked_matches_formula(batch, positions, nodes, budget, monkeypatch):
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


def test_large_scores_do_not_overflow():
    """Scores of ±1e4 still give a convex combination of the positions."""
    x = torch.tensor([[[100.0], [99.0], [-100.0]]])
    nodes = torch.tensor([[100.0], [-100.0]])
    torch.testing.assert_close(chunked_label_attention(x, nodes), torch.tensor([[[100.0], [-100.0]]]))


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


def test_saves_no_position_by_node_tensor():
    """What the chunked version keeps for backward is (B, P, D)- or (B, N, D)-sized, never (B, P, N, D)."""
    batch, positions, nodes, dim = 2, 50, 30, 16
    x, l, _ = inputs(batch, positions, nodes, dim)
    assert largest_saved_tensor(chunked_label_attention, x, l) <= batch * positions * dim
    assert largest_saved_tensor(plain_label_attention, x, l) >= batch * positions * nodes * dim

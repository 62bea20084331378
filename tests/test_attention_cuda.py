"""Label attention on CUDA: the compiled Triton kernels and the chunked code against the float64
formula, the default's choice and check, launching on the inputs' device, and the kernels' memory.
Skipped without a GPU."""
import warnings

import pytest
import torch

import attention
from attention import auto_label_attention, chunked_label_attention, fused_label_attention, plain_label_attention
from tests.helpers import (FULL_SIZE, PRECISION, SHAPES, assert_matches_float64, inputs, outputs_and_grads,
                           trained_like, with_nans)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def on_cuda(*tensors, device='cuda'):
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize('shape', SHAPES + [(2, 784, 84, 512), (3, 49, 24, 512)])
def test_fused_kernels_match_float64_formula(shape):
    x, nodes, grad = on_cuda(*inputs(*shape))
    assert_matches_float64(outputs_and_grads(fused_label_attention, x, nodes, grad), x, nodes, grad, tol=PRECISION)


@pytest.mark.parametrize('impl', ['fused', 'chunked'])
@pytest.mark.parametrize('shape', FULL_SIZE)
def test_exact_at_full_size_on_trained_like_inputs(impl, shape):
    x, nodes, grad = on_cuda(*trained_like(*shape))
    got = outputs_and_grads(attention.ATTENTIONS[impl], x, nodes, grad)
    assert_matches_float64(got, x, nodes, grad, tol=PRECISION)


def test_fused_on_float16_input_at_coco_size():
    """As under autocast: float16 x read as is; output and nodes' gradient float32-exact."""
    x, nodes, grad = on_cuda(*inputs(4, 784, 84, 512, torch.float16))
    out, grad_x, grad_nodes = outputs_and_grads(fused_label_attention, x, nodes.float(), grad)
    assert grad_x.dtype == torch.float16 and grad_x.stride() == x.stride()
    want_out, want_x, want_nodes = outputs_and_grads(chunked_label_attention, x.double(), nodes.double(), grad)
    for got, want, tol in ((out, want_out, PRECISION), (grad_nodes, want_nodes, PRECISION), (grad_x, want_x, 1e-3)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * want.abs().max().item())


@pytest.mark.parametrize('budget', [None, 1000])
def test_chunked_on_cuda_matches_float64_formula(budget, monkeypatch):
    if budget:
        monkeypatch.setattr(attention, 'DEFAULT_CHUNK_ELEMENTS', budget)
    x, nodes, grad = on_cuda(*inputs(3, 49, 24, 64, torch.float64))
    assert_matches_float64(outputs_and_grads(chunked_label_attention, x, nodes, grad), x, nodes, grad, tol=1e-9)


def test_auto_picks_the_kernels_below_float64():
    x, nodes, _ = on_cuda(*inputs(2, 37, 5, 16))
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # the kernels pass their check here
        assert torch.equal(auto_label_attention(x, nodes), fused_label_attention(x, nodes))
    assert attention.kernels_usable(x.device)
    x64, nodes64 = x.double(), nodes.double()
    assert torch.equal(auto_label_attention(x64, nodes64), chunked_label_attention(x64, nodes64))


def test_fused_nan_in_gives_nan_out():
    x, nodes, expected = with_nans(*inputs(2, 37, 20, 80)[:2])
    out = fused_label_attention(*on_cuda(x, nodes))
    assert torch.equal(out.isnan().cpu(), expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
def test_kernels_launch_on_the_inputs_device():
    """Inputs on the second GPU while the first is current: same numbers as the chunked code."""
    x, nodes, grad = on_cuda(*inputs(2, 37, 20, 80), device='cuda:1')
    assert torch.cuda.current_device() == 0
    got = outputs_and_grads(fused_label_attention, x, nodes, grad)
    want = outputs_and_grads(chunked_label_attention, x, nodes, grad)
    for g, w in zip(got, want):
        assert g.device == x.device
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5 * w.abs().max().item())


def extra_peak_mib(fn, x, nodes):
    """Peak CUDA memory of forward + backward above what inputs and gradients hold, in MiB."""
    x, nodes = x.detach().requires_grad_(), nodes.detach().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(x, nodes).sum().backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def test_fused_kernels_need_no_position_by_node_memory():
    """COCO's first level at batch 16 (float16 x): the plain formula needs GBs, the kernels about
    the size of x and of their (B, N, D) outputs."""
    x, nodes, _ = on_cuda(*inputs(16, 784, 84, 512, torch.float16))
    nodes = nodes.float()
    small = 2 * x.numel() * x.element_size() + 6 * 16 * 84 * 512 * 4     # grad_x, x's float32 sums, 4 outputs
    assert extra_peak_mib(fused_label_attention, x, nodes) <= small / 2 ** 20 + 8
    assert extra_peak_mib(plain_label_attention, x, nodes) > 10 * small / 2 ** 20

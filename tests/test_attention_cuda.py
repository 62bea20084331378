"""Label attention on CUDA: the compiled Triton kernels and the chunked code against the float64
formula, the device dispatch, and the kernels' memory. Skipped without a GPU."""
import pytest
import torch

import attention
from attention import chunked_label_attention, fused_label_attention, lean_label_attention, plain_label_attention
from tests.test_attention import SHAPES, assert_matches_float64, inputs, outputs_and_grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def on_cuda(*tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.parametrize('shape', SHAPES + [(2, 784, 84, 512), (3, 49, 24, 512)])
def test_fused_kernels_match_float64_formula(shape):
    x, nodes, grad = on_cuda(*inputs(*shape))
    assert_matches_float64(outputs_and_grads(fused_label_attention, x, nodes, grad), x, nodes, grad)


def test_fused_on_float16_input_at_coco_size():
    """As under autocast: float16 x read as is; output and nodes' gradient float32-exact."""
    x, nodes, grad = on_cuda(*inputs(4, 784, 84, 512, torch.float16))
    out, grad_x, grad_nodes = outputs_and_grads(fused_label_attention, x, nodes.float(), grad)
    assert grad_x.dtype == torch.float16 and grad_x.stride() == x.stride()
    want_out, want_x, want_nodes = outputs_and_grads(chunked_label_attention, x.double(), nodes.double(), grad)
    for got, want, rtol in ((out, want_out, 1e-5), (grad_nodes, want_nodes, 1e-5), (grad_x, want_x, 1e-3)):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * want.abs().max().item())


@pytest.mark.parametrize('budget', [None, 1000])
def test_chunked_on_cuda_matches_float64_formula(budget, monkeypatch):
    if budget:
        monkeypatch.setattr(attention, 'DEFAULT_CHUNK_ELEMENTS', budget)
    x, nodes, grad = on_cuda(*inputs(3, 49, 24, 64, torch.float64))
    assert_matches_float64(outputs_and_grads(chunked_label_attention, x, nodes, grad), x, nodes, grad, rtol=1e-9)


def test_lean_picks_the_kernels_below_float64():
    x, nodes, _ = on_cuda(*inputs(2, 37, 5, 16))
    assert torch.equal(lean_label_attention(x, nodes), fused_label_attention(x, nodes))
    x64, nodes64 = x.double(), nodes.double()
    assert torch.equal(lean_label_attention(x64, nodes64), chunked_label_attention(x64, nodes64))


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

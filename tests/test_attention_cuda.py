"""Label attention on CUDA: the chunked code against the float64 formula. Skipped without a GPU."""
import pytest
import torch

import attention
from attention import chunked_label_attention
from tests.test_attention import assert_matches_float64, inputs, outputs_and_grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def on_cuda(*tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.parametrize('budget', [None, 1000])
def test_chunked_on_cuda_matches_float64_formula(budget, monkeypatch):
    if budget:
        monkeypatch.setattr(attention, 'DEFAULT_CHUNK_ELEMENTS', budget)
    x, nodes, grad = on_cuda(*inputs(3, 49, 24, 64, torch.float64))
    assert_matches_float64(outputs_and_grads(chunked_label_attention, x, nodes, grad), x, nodes, grad, rtol=1e-9)

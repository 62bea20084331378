"""The model on CUDA: same numbers as on the CPU, float16 autocast (attention: test_attention_cuda.py). Skipped without a GPU."""
import numpy as np
import pytest
import torch

import checkpoint
from models import MSRN
from tests.helpers import REFERENCE, needs_reference, random_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


@pytest.fixture(autouse=True)
def exact_float32():
    """Plain float32 matmuls and convolutions (no TF32) so CUDA can be compared with the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@needs_reference
def test_official_fixture_on_cuda():
    fixture = torch.load(REFERENCE / 'head_fixture_small.pt', weights_only=True)
    model = MSRN(2, 0.5, 'resnet50', {k: v.numpy() for k, v in fixture['adj'].items()}).eval()
    model.load_state_dict({k: v.float() for k, v in fixture['head_state_dict'].items()}, strict=False)
    model.cuda()
    with torch.no_grad():
        logits, group_loss = model.head([f.cuda() for f in fixture['features']], fixture['word_vectors'].cuda())
    torch.testing.assert_close(logits.cpu(), fixture['logits'], atol=1e-5, rtol=0)
    torch.testing.assert_close(group_loss.cpu(), fixture['group_loss'], atol=1e-5, rtol=0)


def small_pair():
    torch.manual_seed(0)
    cpu = MSRN(6, 0.5, 'resnet18', random_graph(6)).eval()
    gpu = MSRN(6, 0.5, 'resnet18', random_graph(6)).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


def test_cuda_forward_equals_cpu_forward():
    cpu, gpu = small_pair()
    img, inp = torch.randn(2, 3, 128, 128), torch.randn(2, 6, 300)
    with torch.no_grad():
        want, want_loss = cpu(img, inp)
        got, got_loss = gpu(img.cuda(), inp.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_loss.cpu(), want_loss, atol=1e-6, rtol=1e-5)


def test_float16_autocast_training_step_on_cuda():
    _, gpu = small_pair()
    gpu.train()
    scaler = torch.amp.GradScaler('cuda')
    optimizer = torch.optim.SGD(gpu.get_config_optim(0.01), lr=0.01, momentum=0.9)
    img, inp = torch.randn(4, 3, 224, 224, device='cuda'), torch.randn(4, 6, 300, device='cuda')
    target = (torch.rand(4, 6, device='cuda') > 0.5).float()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=torch.float16):
            logits, group_loss = gpu(img, inp)
            loss = torch.nn.functional.multilabel_soft_margin_loss(logits, target) + group_loss
        assert logits.dtype == torch.float16 and group_loss.dtype == torch.float32
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in gpu.parameters())


def test_cuda_checkpoint_loads_on_cpu(tmp_path):
    cpu, gpu = small_pair()
    torch.save({'epoch': 1, 'arch': 'resnet18', 'state_dict': gpu.state_dict(), 'best_score': 1.0}, tmp_path / 'c.pth')
    fresh = MSRN(6, 0.5, 'resnet18', random_graph(6))
    checkpoint.load_checkpoint(fresh, str(tmp_path / 'c.pth'))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), cpu.state_dict().values()))


def test_graph_mask_follows_the_model_to_cuda():
    _, gpu = small_pair()
    assert gpu.adj_mask.device.type == 'cuda'
    assert np.array_equal(gpu.adj_mask.cpu().numpy(), MSRN(6, 0.5, 'resnet18', random_graph(6)).adj_mask.numpy())

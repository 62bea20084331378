"""Run by test_engine_cuda.py under torchrun (2 GPU processes): with --sync-bn, two processes with
half a batch each normalise exactly like one process with the whole batch."""
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import distributed  # noqa: E402
from tests.toy import ToyMSRN, make_engine  # noqa: E402


def main():
    device = distributed.init_distributed_mode('cuda')
    torch.manual_seed(0)
    model = ToyMSRN().to(device)
    one_gpu = copy.deepcopy(model)
    net = make_engine(device=device, sync_bn=True).wrap(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 16, 16, generator=generator).to(device)
    words = torch.randn(1, 4, 300, generator=generator).to(device)
    rows = slice(4 * distributed.get_rank(), 4 * distributed.get_rank() + 4)
    mine, _ = net.train()(images[rows], words)
    whole, _ = one_gpu.train()(images, words)
    torch.testing.assert_close(mine, whole[rows], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.trunk[1].running_mean, one_gpu.trunk[1].running_mean, rtol=1e-4, atol=1e-6)
    distributed.cleanup()


if __name__ == '__main__':
    main()

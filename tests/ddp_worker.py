"""Run by test_distributed.py under torchrun (2 CPU processes): check the in-order gather, train
one epoch with DDP (toy model with an EMA of its weights, then the real MSRN), then evaluate a given checkpoint.
Usage: ddp_worker.py OUT_DIR CHECKPOINT"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DistributedSampler  # noqa: E402

import distributed  # noqa: E402
from models import MSRN  # noqa: E402
from tests.toy import ToyDataset, ToyMSRN, evaluate_once, make_engine, make_optimizer, resumed  # noqa: E402
from util import seed_everything  # noqa: E402


def main(out_dir, checkpoint):
    torch.set_num_threads(1)
    device = distributed.init_distributed_mode('cpu')
    assert device.type == 'cpu' and distributed.get_world_size() == 2 and dist.get_backend() == 'gloo'

    # 11 samples on 2 ranks: rank 0 gets 0, 2, ..., 10; rank 1 gets 1, 3, ..., 9 and 0 again (padding)
    mine = torch.tensor(list(DistributedSampler(range(11), shuffle=False)))
    assert distributed.gather_in_order(mine, 11).tolist() == list(range(11))

    seed_everything(distributed.get_rank())  # different inits: DDP must broadcast rank 0's
    model = ToyMSRN()
    engine = make_engine(save_dir=os.path.join(out_dir, 'train'), epochs=1, ema_decay=0.9)
    engine.learning(model, nn.MultiLabelSoftMarginLoss(), ToyDataset(30, seed=1), ToyDataset(11, seed=2),
                    make_optimizer(model))
    for name, module in (('replicas', model), ('EMAs', engine.ema.module)):
        weights = torch.cat([v.flatten().double() for v in module.state_dict().values()])
        replicas = distributed.all_gather_objects(weights)
        assert torch.equal(replicas[0], replicas[1]), f'{name} diverged'

    # The real MSRN under DDP: every trainable parameter must get a gradient in every step.
    msrn = MSRN(2, 0.5, 'resnet18', {'adj': [[0, 5], [4, 0]], 'nums': [10, 8]})
    make_engine(epochs=1, image_size=64).learning(
        msrn, nn.MultiLabelSoftMarginLoss(), ToyDataset(24, seed=1, size=72, num_classes=2),
        ToyDataset(4, seed=2, size=72, num_classes=2), make_optimizer(msrn, lr=0.01))

    model = ToyMSRN()
    evaluate_once(make_engine(save_dir=os.path.join(out_dir, 'eval'), resume=resumed(model, checkpoint)), model,
                  ToyDataset(11, seed=2))
    distributed.cleanup()


if __name__ == '__main__':
    main(*sys.argv[1:])

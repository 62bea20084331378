"""The engine driving the real MSRN (ResNet-18 trunk, 64 px, 2 classes) end to end."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from checkpoint import load_checkpoint
from models import MSRN
from tests.toy import ToyDataset, make_engine, make_optimizer
from util import seed_everything

GRAPH = {'adj': np.array([[0, 5], [4, 0]]), 'nums': np.array([10, 8])}


def run(save_dir, max_epochs, resume=None, init_seed=0, evaluate=False):
    seed_everything(init_seed)
    model = MSRN(2, 0.5, model_name='resnet18', adj_file=GRAPH)
    engine = make_engine(save_dir=save_dir, max_epochs=max_epochs, epoch_step=[1], image_size=64, resume=resume,
                         evaluate=evaluate, class_names=['cat', 'dog'])
    score = engine.learning(model, nn.MultiLabelSoftMarginLoss(), ToyDataset(10, seed=1, size=72, num_classes=2),
                            ToyDataset(6, seed=2, size=72, num_classes=2), make_optimizer(model, lr=0.01))
    return model, score


@pytest.mark.slow
def test_msrn_trains_resumes_exactly_and_evaluates_its_checkpoint(tmp_path):
    straight, _ = run(tmp_path / 'a', max_epochs=2)
    run(tmp_path / 'b', max_epochs=1)
    resumed, _ = run(tmp_path / 'b', max_epochs=2, init_seed=1, resume=str(tmp_path / 'b' / 'checkpoint.pth.tar'))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name

    load_checkpoint(straight, str(tmp_path / 'a' / 'checkpoint.pth.tar'))  # the model's strict loader reads ours
    _, score = run(tmp_path / 'e', max_epochs=2, init_seed=2, evaluate=True,
                   resume=str(tmp_path / 'a' / 'checkpoint.pth.tar'))
    last = json.loads(open(tmp_path / 'a' / 'log.jsonl').readlines()[-1])
    assert score == pytest.approx(last['val_mAP'], abs=1e-9)

"""CUDA paths of the engine: float16 autocast with one GradScaler, pinned memory, NCCL collectives.
Skipped without a GPU."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import distributed
from models import MSRN
from tests.toy import (OverflowAt, ToyDataset, ToyMSRN, assert_equal_to_average, average_by_definition, make_engine,
                       make_optimizer, resumed, train_and_record)
from util import seed_everything

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def run(model, save_dir, epochs, resume=None, image_size=16, size=24, num_classes=4, **kwargs):
    engine = make_engine(device='cuda', save_dir=save_dir, epochs=epochs,
                         resume=resumed(model, resume) if resume else None, image_size=image_size, classes=None,
                         **kwargs)
    scaler = engine.scaler
    data = [ToyDataset(n, seed=seed, size=size, num_classes=num_classes) for n, seed in ((30, 1), (10, 2))]
    score = engine.learning(model, nn.MultiLabelSoftMarginLoss(), *data, make_optimizer(model, lr=0.01))
    assert engine.scaler is scaler  # one scaler for the whole run
    return engine, score


def test_amp_training_checkpoints_the_scaler_and_resumes_it(tmp_path):
    seed_everything(0)
    engine, _ = run(ToyMSRN(), tmp_path, epochs=2)
    assert engine.amp and engine.scaler.is_enabled()
    assert engine.make_loader(ToyDataset(4), training=True).pin_memory
    saved = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    assert saved['scaler']['scale'] > 0 and saved['scaler']['_growth_tracker'] >= 0
    engine, _ = run(ToyMSRN(), tmp_path, epochs=2, resume=str(tmp_path / 'checkpoint.pth.tar'))  # nothing left
    assert engine.scaler.get_scale() == saved['scaler']['scale']
    engine, score = run(ToyMSRN(), tmp_path, epochs=3, resume=str(tmp_path / 'checkpoint.pth.tar'))
    assert np.isfinite(score)


def test_ema_under_amp(tmp_path, monkeypatch):
    """Under float16 autocast the average stays float32 and finite, and is updated after every
    ``scaler.step`` call, also the one GradScaler skips (batch 3's gradient is infinite)."""
    model, engine, start, after_steps, made, updates = train_and_record(
        monkeypatch, tmp_path, OverflowAt(3), device='cuda', lr=0.01)
    assert engine.amp and engine.scaler.is_enabled()
    assert updates == len(after_steps) == 2 * 8 and made <= 2 * 8 - 1
    averaged = engine.ema.module.state_dict()
    assert all(torch.isfinite(v).all() for v in averaged.values())
    assert all(v.dtype == torch.float32 for v in averaged.values() if v.is_floating_point())
    assert_equal_to_average(averaged, average_by_definition(start, after_steps, 0.9))
    assert not torch.allclose(averaged['label_embed.weight'], model.label_embed.weight)
    assert all(math.isfinite(json.loads(line)['ema_val_mAP']) for line in open(tmp_path / 'log.jsonl'))


def test_msrn_under_autocast(tmp_path):
    seed_everything(0)
    model = MSRN(4, 0.5, model_name='resnet18', adj_file={'adj': np.ones((4, 4)) - np.eye(4), 'nums': np.full(4, 3)})
    engine, score = run(model, tmp_path, epochs=1, image_size=224, size=256)
    assert np.isfinite(score) and engine.state['output'].dtype == torch.float16


def test_nccl_collectives(tmp_path):
    torch.cuda.set_device(0)
    dist.init_process_group('nccl', init_method=f'file://{tmp_path}/store', world_size=1, rank=0)
    try:
        rows = torch.arange(12).view(6, 2)
        gathered = distributed.gather_in_order(rows, 5)
        assert gathered.device.type == 'cpu' and gathered.tolist() == rows[:5].tolist()
        assert distributed.mean_over_processes(2.5) == 2.5
        assert distributed.all_gather_objects({'a': 1}) == [{'a': 1}]
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 GPUs')
def test_sync_bn_processes_normalise_like_one_gpu():
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'syncbn_worker.py')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           worker], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

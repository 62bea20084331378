import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO, assert_one_line_error, custom_argv
from tests.toy import ToyDataset, ToyMSRN, evaluate_once, make_engine, resumed
from util import seed_everything

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ddp_worker.py')


def test_two_cpu_processes_train_in_step_and_evaluate_like_one(tmp_path):
    seed_everything(11)
    torch.save({'epoch': 0, 'arch': None, 'state_dict': ToyMSRN().state_dict(), 'best_score': 0.0},
               tmp_path / 'weights.pth.tar')
    model = ToyMSRN()
    single = make_engine(save_dir=tmp_path / 'single', resume=resumed(model, tmp_path / 'weights.pth.tar'))
    evaluate_once(single, model, ToyDataset(11, seed=2))

    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           WORKER, str(tmp_path / 'ddp'), str(tmp_path / 'weights.pth.tar')],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Rank 0 alone wrote the files: one log line for one epoch.
    assert len(open(tmp_path / 'ddp' / 'train' / 'log.jsonl').readlines()) == 1
    saved = torch.load(tmp_path / 'ddp' / 'train' / 'checkpoint.pth.tar', weights_only=True)
    assert saved['epoch'] == 1 and saved['ema'].keys() == saved['state_dict'].keys() == ToyMSRN().state_dict().keys()
    # The gathered evaluation (11 images, padding dropped) equals the single-process one.
    ddp = json.load(open(tmp_path / 'ddp' / 'eval' / 'eval.json'))
    one = json.load(open(tmp_path / 'single' / 'eval.json'))
    assert ddp['num_samples'] == one['num_samples'] == 11
    assert ddp['mAP'] == pytest.approx(one['mAP'], abs=1e-9)
    for key in ('fixed', 'fixed_top3', 'official_sweep', 'official_sweep_top3'):
        assert ddp[key] == pytest.approx(one[key], abs=1e-9)
    assert [r['ap'] for r in ddp['per_class_ap']] == pytest.approx([r['ap'] for r in one['per_class_ap']], abs=1e-9)


def test_a_process_that_cannot_join_the_others_stops_in_bounded_time_with_one_line(synthetic, tmp_path):
    """As a restarted worker whose peers never come: rank 1 of 2, nobody listening at MASTER_PORT."""
    info = synthetic('custom', n_train=16, n_val=8)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    start = time.monotonic()
    result = subprocess.run([sys.executable, os.path.join(REPO, 'demo_custom_gcn.py'),
                             *custom_argv(info['root'], tmp_path, '--connect-timeout', '3')],
                            env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60
    assert_one_line_error(result, r'^error: process 1 of 2 could not join the others within 3 s \(.*\); check that '
                                  r'every node started')

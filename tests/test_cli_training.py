"""Training through the demo scripts' command line, as users run it: the checkpoints' official
layout (one process and two under DDP), model_best, resume with changed flags, the other
datasets' scripts, and loader workers. Only the command line and files on disk are used, plus
``metrics.evaluate`` patched to force validation mAPs."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import dataset_base
import demo_apparel_gcn
import demo_coco_gcn
import demo_nuswide_gcn
import demo_voc2007_gcn
import metrics
from tests.helpers import QUICK, REFERENCE, REPO, file_identity, meta_model

CHECKPOINT, BEST = 'checkpoint.pth.tar', 'model_best.pth.tar'
FORCED_MAPS = [50.0, 70.0, 60.0, math.nan]  # validation mAPs of epochs 1-4: epoch 2 is the best


def train_argv(info, save_dir, *extra):
    """A tiny CPU run (QUICK: ResNet-18 from scratch, 64 px, no loader workers), batches of 8."""
    return [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], *QUICK, '-b', '8',
            '--seed', '0', '--save-dir', str(save_dir), *extra]


def load(path):
    return torch.load(path, weights_only=True, mmap=True)


def layout(state_dict):
    return [(key, tuple(t.shape), t.dtype) for key, t in state_dict.items()]


def reference_layout(config):
    entries = json.loads((REFERENCE / f'state_dict_{config}.json').read_text())['entries']
    return [(e['key'], tuple(e['shape']), getattr(torch, e['dtype'])) for e in entries]


def assert_official(checkpoint, epoch, num_classes, pool_ratio, backbone='resnet18', config='voc'):
    """What the official code reads: int ``epoch``, float ``best_score``, a bare ``state_dict``
    whose keys, order, shapes and dtypes are the model's (which test_models ties to the official
    layout) and, where the official reference files are at hand, theirs."""
    assert {'epoch', 'arch', 'state_dict', 'best_score'} <= checkpoint.keys()
    assert type(checkpoint['epoch']) is int and checkpoint['epoch'] == epoch
    assert type(checkpoint['best_score']) is float
    state = layout(checkpoint['state_dict'])
    assert not any(key.startswith('module.') for key, _, _ in state)
    assert state == layout(meta_model(num_classes, pool_ratio, backbone).state_dict())
    if REFERENCE.is_dir():  # the reference describes a ResNet-101 trunk: else compare the rest only
        def comparable(entries):
            return [e for e in entries if backbone == 'resnet101' or not e[0].startswith(('resnet_101.', 'ProjectM.'))]
        assert comparable(state) == comparable(reference_layout(config))


def same_weights(path_a, path_b):
    a, b = load(path_a)['state_dict'], load(path_b)['state_dict']
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope='module')
def tiny_voc(synthetic):
    return synthetic('voc', n_trainval=8, n_test=4, image_size=64)


@pytest.fixture(scope='module')
def four_epochs(tiny_voc, tmp_path_factory):
    """Four epochs with validation mAPs forced to FORCED_MAPS. Each validation also keeps the
    checkpoint on disk, that of the epoch before, as ``<epoch>.pth.tar`` in the snapshot folder
    (a hard link: the engine's next write replaces the name, not the file), and notes the identity
    of model_best then. Returns (save folder, snapshot folder, [(epoch, model_best identity)])."""
    save, snapshots = tmp_path_factory.mktemp('four_epochs'), tmp_path_factory.mktemp('snapshots')
    forced, seen = iter(FORCED_MAPS), []
    real = metrics.evaluate

    def evaluate(*args, **kwargs):
        if (save / CHECKPOINT).exists():
            epoch = load(save / CHECKPOINT)['epoch']
            os.link(save / CHECKPOINT, snapshots / f'{epoch}.pth.tar')
            seen.append((epoch, file_identity(save / BEST)))
        return dict(real(*args, **kwargs), mAP=next(forced))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, 'evaluate', evaluate)
        assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, train_argv(tiny_voc, save, '--epochs', '4')) == 0
    return save, snapshots, seen


@pytest.mark.slow
def test_model_best_holds_the_best_epoch_and_is_left_alone_after_it(four_epochs):
    save, snapshots, seen = four_epochs
    epoch2, epoch3 = snapshots / '2.pth.tar', snapshots / '3.pth.tar'
    assert not same_weights(epoch2, epoch3)  # training moved on, so the next check can fail
    best = load(save / BEST)
    assert best['epoch'] == 2 and best['best_score'] == 70.0
    assert same_weights(save / BEST, epoch2)
    # not written again after epoch 2: not by the worse epoch 3, nor by epoch 4's NaN
    assert {identity for epoch, identity in seen if epoch >= 2} == {file_identity(save / BEST)}
    last = load(save / CHECKPOINT)
    assert last['epoch'] == 4 and last['best_score'] == 70.0


@pytest.mark.slow
def test_training_writes_checkpoints_log_curves_and_eval_json(four_epochs):
    save, _, _ = four_epochs
    for name in (CHECKPOINT, BEST, 'log.jsonl', 'curves.png', 'eval_epoch004.json'):
        assert (save / name).is_file(), name
    assert [json.loads(line)['epoch'] for line in open(save / 'log.jsonl')] == [1, 2, 3, 4]
    last = load(save / CHECKPOINT)
    assert last['arch'] == 'resnet18' and last['args']['lr'] == 0.1


@pytest.mark.slow
def test_checkpoints_have_the_official_layout(four_epochs):
    save, _, _ = four_epochs
    assert_official(load(save / CHECKPOINT), 4, 20, 0.2)
    assert_official(load(save / BEST), 2, 20, 0.2)


@pytest.mark.slow
def test_checkpoint_written_under_two_ddp_processes_has_the_official_layout(tiny_voc, tmp_path):
    argv = train_argv(tiny_voc, tmp_path, '--epochs', '1', '-b', '4')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           os.path.join(REPO, 'demo_voc2007_gcn.py'), *argv],
                          env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_official(load(tmp_path / CHECKPOINT), 1, 20, 0.2)


def error_lines(stderr):
    assert 'Traceback' not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith('error:')]


def record_loading_processes(monkeypatch, folder):
    """Make every image read leave a file named after the reading process in ``folder``."""
    os.makedirs(folder)
    real = dataset_base.read_image

    def read_image(path):
        open(os.path.join(folder, str(os.getpid())), 'a').close()
        return real(path)
    monkeypatch.setattr(dataset_base, 'read_image', read_image)


@pytest.mark.slow
def test_apparel_trains_through_its_script_with_two_loader_workers(synthetic, tmp_path, monkeypatch):
    info = synthetic('apparel', n_per_folder=1)
    record_loading_processes(monkeypatch, tmp_path / 'readers')
    argv = train_argv(info, tmp_path / 'out', '--epochs', '1', '-j', '2')
    assert demo_apparel_gcn.main(demo_apparel_gcn.DATASET, argv) == 0
    assert_official(load(tmp_path / 'out' / CHECKPOINT), 1, 11, 0.2, config='apparel')
    readers = set(os.listdir(tmp_path / 'readers'))
    assert readers and str(os.getpid()) not in readers  # the images were read by the loader workers


@pytest.mark.long
@pytest.mark.parametrize('demo,config,num_classes', [(demo_coco_gcn, 'coco', 80), (demo_nuswide_gcn, 'nuswide', 81)])
def test_coco_and_nuswide_train_through_their_scripts(demo, config, num_classes, synthetic, tmp_path):
    """Left out of the default run: 80 classes make a 2 GB checkpoint (fc1 alone: 264 M weights)."""
    info = synthetic(config, n_train=8, n_val=4)
    assert demo.main(demo.DATASET, train_argv(info, tmp_path, '--epochs', '1')) == 0
    assert_official(load(tmp_path / CHECKPOINT), 1, num_classes, demo.DATASET.pool_ratio, config=config)


@pytest.mark.long
def test_resnet101_checkpoint_matches_the_official_layout_entry_for_entry(tiny_voc, tmp_path):
    argv = train_argv(tiny_voc, tmp_path, '--epochs', '1', '--backbone', 'resnet101')
    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 0
    assert_official(load(tmp_path / CHECKPOINT), 1, 20, 0.2, backbone='resnet101')


@pytest.mark.slow
def test_error_inside_a_loader_worker_stays_one_line(tiny_voc, tmp_path, monkeypatch, capsys):
    root = shutil.copytree(tiny_voc['root'], tmp_path / 'voc')
    broken = sorted((root / 'VOCdevkit' / 'VOC2007' / 'JPEGImages').iterdir())[-1]  # a test image
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    record_loading_processes(monkeypatch, tmp_path / 'readers')
    argv = train_argv(dict(tiny_voc, root=str(root)), tmp_path / 'out', '-e', '-j', '2')
    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 2
    assert str(os.getpid()) not in os.listdir(tmp_path / 'readers')  # raised in a worker
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f'{broken}: cannot read image' in lines[0] and '--skip-corrupt' in lines[0]

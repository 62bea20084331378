import json
import os

import pytest
import torch
import torch.nn as nn

import metrics
from engine import DataLoaderX, lr_at
from errors import NonFiniteLossError, NonFiniteOutputError
from tests.toy import ToyDataset, ToyMSRN, evaluate_once, make_engine, toy_run
from util import eval_transform, seed_everything


def test_lr_is_a_function_of_epoch():
    assert lr_at(0.1, 29, [30]) == 0.1
    assert lr_at(0.1, 30, [30]) == pytest.approx(0.01)
    assert lr_at(0.1, 25, [10, 20]) == pytest.approx(0.001)
    assert lr_at(0.1, 5, []) == 0.1
    # a repeated epoch decays once, as in the official code (x0.1 at each epoch that is in the list)
    assert lr_at(0.1, 35, [30, 30]) == lr_at(0.1, 35, [30]) == pytest.approx(0.01)


def test_loss_targets_map_difficult_to_positive():
    engine = make_engine()
    engine.on_start_batch(((torch.zeros(1, 3, 4, 4), ['x'], torch.zeros(1, 4, 300)), torch.tensor([[1, 0, -1, 1]])))
    assert engine.state['loss_target'].tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert engine.state['labels'].tolist() == [[1, 0, -1, 1]]  # kept for the metrics
    assert engine.state['word_vectors'].shape == (1, 4, 300)


def test_training_writes_checkpoints_logs_and_eval_files(tmp_path):
    model, _, engine, best = toy_run(tmp_path, epochs=2)
    events = [name for name in os.listdir(tmp_path) if name.startswith('events.out.tfevents.')]
    assert len(events) == 1  # TensorBoard's (tests/test_tensorboard.py reads them)
    assert sorted(set(os.listdir(tmp_path)) - set(events)) == [
        'checkpoint.pth.tar', 'curves.png', 'eval_epoch001.json', 'eval_epoch002.json', 'log.jsonl',
        'model_best.pth.tar']
    checkpoint = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    assert {'epoch', 'arch', 'state_dict', 'best_score', 'optimizer', 'scaler', 'rng'} <= checkpoint.keys()
    assert checkpoint['epoch'] == 2 and checkpoint['best_score'] == best
    assert checkpoint['state_dict'].keys() == model.state_dict().keys()  # bare: no 'module.'
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2] and max(r['val_mAP'] for r in log) == best
    assert log[0]['lr'] == log[1]['lr'] == pytest.approx([0.01, 0.1])  # trunk at lr x 0.1; decay from epoch 2
    record = json.load(open(tmp_path / 'eval_epoch002.json'))
    assert [r['class'] for r in record['per_class_ap']] == ['a', 'b', 'c', 'd']
    assert record['mAP'] == pytest.approx(log[1]['val_mAP'])
    assert {'fixed', 'fixed_top3', 'official_sweep', 'official_sweep_top3', 'coverage_error', 'lrap',
            'ranking_loss'} <= record.keys()
    assert open(tmp_path / 'curves.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_evaluate_only_and_released_checkpoint(tmp_path):
    seed_everything(5)
    model = ToyMSRN()
    released = {'epoch': 7, 'arch': None, 'state_dict': model.state_dict(), 'best_score': torch.tensor(12.5)}
    torch.save(released, tmp_path / 'released.pth.tar')  # the official keys only

    _, _, engine, score = toy_run(tmp_path / 'eval', epochs=9, evaluate=True,
                              resume=str(tmp_path / 'released.pth.tar'))
    assert os.listdir(tmp_path / 'eval') == ['eval.json']  # evaluated, not trained
    val = ToyDataset(10, seed=2, transform=eval_transform(16, model.image_normalization_mean,
                                                          model.image_normalization_std))
    model.eval()
    with torch.no_grad():
        items = [val[i] for i in range(len(val))]
        images = torch.stack([x[0][0] for x in items])
        logits, _ = model(images, torch.stack([x[0][2] for x in items]))
    targets = torch.stack([x[1] for x in items])
    assert score == pytest.approx(metrics.mean_average_precision(metrics.average_precision(logits, targets)),
                                  abs=1e-9)

    _, _, engine, _ = toy_run(tmp_path / 'train', epochs=8, resume=str(tmp_path / 'released.pth.tar'))
    assert engine.start_epoch == 7
    assert [json.loads(line)['epoch'] for line in open(tmp_path / 'train' / 'log.jsonl')] == [8]


def test_non_finite_loss_stops_training(tmp_path):
    class NaNLoss(nn.Module):
        def forward(self, logits, y):
            return (logits * float('nan')).mean()

    with pytest.raises(NonFiniteLossError, match='training loss is nan at epoch 1, batch 0'):
        toy_run(tmp_path, epochs=1, criterion=NaNLoss())
    assert not (tmp_path / 'checkpoint.pth.tar').exists()


def test_non_finite_eval_scores_are_a_clear_error(tmp_path):
    model = ToyMSRN()
    with torch.no_grad():
        model.bias[1] = float('inf')   # e.g. a float16 overflow
    engine = make_engine(save_dir=str(tmp_path))
    with pytest.raises(NonFiniteOutputError, match='^6 of 6 evaluation images got NaN or infinite scores'):
        evaluate_once(engine, model, ToyDataset(6, seed=2))
    assert not (tmp_path / 'eval.json').exists()


def _weight_change(clip):
    seed_everything(0)
    model = ToyMSRN()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.get_config_optim(1.0), lr=1.0)  # no momentum or decay: step = lr x grad
    make_engine(epochs=1, clip_grad_norm=clip or 0.0).learning(
        model, nn.MultiLabelSoftMarginLoss(), ToyDataset(16, seed=1), ToyDataset(4, seed=2), optimizer)
    return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()


def test_gradient_clipping_bounds_each_step():
    steps, clip = 4, 1e-3  # 16 images, batch 4
    assert _weight_change(clip) <= steps * clip * 1.0001  # every group's lr <= 1
    assert _weight_change(None) > 100 * steps * clip


def test_loaders():
    engine = make_engine(workers=2)
    loader = engine.make_loader(ToyDataset(5), training=True)
    assert isinstance(loader, DataLoaderX) and loader.persistent_workers and not loader.pin_memory
    assert not make_engine(workers=0).make_loader(ToyDataset(5), training=False).persistent_workers


def test_start_epoch_sets_the_first_epoch_and_the_schedule(tmp_path):
    toy_run(tmp_path, epochs=3, start_epoch=2)
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [3] and log[0]['lr'] == pytest.approx([0.001, 0.01])  # past step 2

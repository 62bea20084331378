"""What a run prints names what it shows: the learning rates by group, the split as the dataset names
it, the classes without positive image, the per-class AP of the best weights."""
import json
import re

import pytest
import torch

import metrics
import report
from engine import lr_group_names
from tests.toy import no_positive_in_validation, toy_run


def test_the_epoch_line_names_its_numbers():
    record = dict(epoch=3, lr=[0.001, 0.01], train_loss=0.5, train_mAP=71.234, val_loss=0.25, val_mAP=60.5,
                  ema_val_loss=0.2, ema_val_mAP=61.25, best_mAP=61.25, train_time_s=3.0, time_s=4.04)
    assert report.format_epoch_line(record, 20, ['trunk', 'head'], 'asl', best_from='ema') == (
        'Epoch 3/20  lr trunk 0.001 head 0.01  train loss (asl) 0.5000 mAP 71.23  val loss 0.2500 mAP 60.500  '
        'val (EMA) mAP 61.250  best 61.250 (EMA weights)  4.0s')


def test_lr_groups_are_msrns_two_else_numbered():
    assert lr_group_names(2) == ['trunk', 'head']
    assert lr_group_names(3) == ['group0', 'group1', 'group2']


def test_the_summary_names_the_classes_without_positive_image():
    torch.manual_seed(0)
    targets = -torch.ones(8, 30, dtype=torch.long)
    targets[:, :5] = 1 - 2 * (torch.rand(8, 5) < 0.5).long()
    targets[0, :5] = 1   # classes 0-4 have a positive, 5-29 none
    result = metrics.evaluate(torch.randn(8, 30), targets)
    names = [f'class{i}' for i in range(30)]
    lines = report.format_summary(result, loss=0.5, label='test', class_names=names).splitlines()
    assert lines[0].startswith('test: 8 images  mAP ')
    assert lines[-1] == f"  no positive image: {', '.join(names[5:25])} and 5 more (left out of mAP, CP and CR)"
    table = report.format_class_ap(result['ap'], names, title='per-class AP, test').splitlines()
    assert table[0] == 'per-class AP, test:' and len(table) == 31
    assert table[1] == f"  class0   {100 * result['ap'][0]:6.2f}" and table[6] == '  class5        -  no positive image'


def test_a_run_names_its_split_and_prints_the_best_weights_per_class_ap(tmp_path, monkeypatch, capsys):
    no_positive_in_validation(monkeypatch, 3)   # class 'd'
    _, _, engine, best = toy_run(tmp_path, epochs=2, ema_decay=0.5, val_split='test')
    out = capsys.readouterr().out
    heads = [line.split('  mAP')[0] for line in out.splitlines() if ': 10 images  mAP' in line]
    assert heads == ['test: 10 images', 'test (EMA): 10 images'] * 2
    assert out.count('  no positive image: d (left out of mAP, CP and CR)') == 4
    assert re.search(r'^Epoch 1/2  lr trunk 0\.01 head 0\.1  train loss .* val \(EMA\) mAP ', out, re.M)
    # the table of the best epoch, from the weights that won it: the same figures as its eval JSON
    table = out[out.index('per-class AP of the best epoch'):].splitlines()
    epoch, label = re.fullmatch(r'per-class AP of the best epoch \((\d)\), (test(?: \(EMA\))?):', table[0]).groups()
    record = json.load(open(tmp_path / f'eval_epoch00{epoch}.json'))
    won = record['ema'] if label == 'test (EMA)' else record
    assert won['mAP'] == pytest.approx(best)
    figures = ['     -  no positive image' if r['ap'] is None else f"{r['ap']:6.2f}" for r in won['per_class_ap']]
    assert table[1:] == [f"  {r['class']}  {figure}" for r, figure in zip(won['per_class_ap'], figures)]
    assert table[4] == '  d       -  no positive image'

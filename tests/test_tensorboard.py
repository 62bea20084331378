"""TensorBoard events in the save folder, read back with TensorBoard's own reader: what an epoch writes,
a resume that rewrites epochs, --no-tensorboard, a missing tensorboard package."""
import errno
import json
import os
import shutil
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer import event_file_writer

from errors import SaveError, UsageError
from tests.toy import no_positive_in_validation, toy_run

TEXT_TAG = 'settings/text_summary'  # where SummaryWriter.add_text('settings', ...) puts the text


def events(folder):
    """The run's events as TensorBoard shows them (every event kept, purges applied)."""
    accumulator = EventAccumulator(str(folder), size_guidance={'scalars': 0, 'tensors': 0})
    accumulator.Reload()
    return accumulator


def text_steps(folder):
    """The steps of the settings text. The legacy EventAccumulator above purges no text (tensors); the
    reader of TensorBoard's own server does, as it does every kind of event."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(folder), size_guidance={'tensors': 0})
    accumulator.Reload()
    return [e.step for e in accumulator.Tensors(TEXT_TAG)]


def steps_and_values(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def next_second():
    """Event files are named after the second they are opened in, and read in name order: a resumed
    run's file must sort after the first run's, as it does when a run is resumed seconds later."""
    time.sleep(1.01 - time.time() % 1)


def test_each_epoch_writes_the_log_figures_lrs_and_every_validation_figure(tmp_path):
    settings = {'lr': 0.1, 'data': '/data/a|b', 'epoch_step': [2]}
    _, _, engine, _ = toy_run(tmp_path, epochs=2, ema_decay=0.5, settings=settings, val_split='test')
    acc = events(tmp_path)
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    for tag, key in [('train/loss', 'train_loss'), ('train/mAP', 'train_mAP'), ('val/loss', 'val_loss'),
                     ('val/mAP', 'val_mAP'), ('val_ema/loss', 'ema_val_loss'), ('val_ema/mAP', 'ema_val_mAP'),
                     ('time/epoch_s', 'time_s'), ('time/train_s', 'train_time_s')]:
        assert steps_and_values(acc, tag) == [(r['epoch'], pytest.approx(r[key], rel=1e-6)) for r in log], tag
    for i, group in enumerate(('trunk', 'head')):
        assert steps_and_values(acc, f'lr/{group}') == [(r['epoch'], pytest.approx(r['lr'][i])) for r in log]
    for epoch in (1, 2):
        record = json.load(open(tmp_path / f'eval_epoch{epoch:03d}.json'))
        for prefix, result in (('val', record), ('val_ema', record['ema'])):
            figures = {f'{prefix}/{k}': v for k, v in result['fixed'].items()}
            figures.update({f'{prefix}_sweep/{k}': v for k, v in result['official_sweep'].items()})
            figures.update({f'{prefix}_ap/{r["class"]}': r['ap'] for r in result['per_class_ap']})
            assert len(figures) == 6 + 7 + 4
            for tag, value in figures.items():
                assert dict(steps_and_values(acc, tag))[epoch] == pytest.approx(value, rel=1e-6), tag
    text = acc.Tensors(TEXT_TAG)
    assert [e.step for e in text] == [1]
    table = text[0].tensor_proto.string_val[0].decode()
    assert '| epoch_step | [2] |' in table and '| data | /data/a\\|b |' in table


def test_a_class_without_positive_gets_no_ap_scalar(tmp_path, monkeypatch):
    no_positive_in_validation(monkeypatch, 3)   # class 'd'
    toy_run(tmp_path, epochs=1)
    tags = events(tmp_path).Tags()['scalars']
    assert {'val_ap/a', 'val_ap/b', 'val_ap/c'} <= set(tags) and 'val_ap/d' not in tags


@pytest.mark.parametrize('resume_from', ['epoch 2 copied aside', 'model_best'])
def test_a_resumed_run_rewrites_its_epochs_once(tmp_path, resume_from):
    """Three epochs, then a resume from an earlier epoch: TensorBoard shows each epoch once, with the
    figures of the run that wrote it last (those of log.jsonl), and the settings of each run from the
    epoch it started at."""
    settings = {'lr': 0.1}
    toy_run(tmp_path, epochs=2, settings=settings)
    source = tmp_path.parent / ('best.pth.tar' if resume_from == 'model_best' else 'epoch2.pth.tar')
    shutil.copy(tmp_path / ('model_best.pth.tar' if resume_from == 'model_best' else 'checkpoint.pth.tar'), source)
    resumed_epoch = torch.load(source, weights_only=True)['epoch']
    next_second()
    toy_run(tmp_path, epochs=3, resume=str(tmp_path / 'checkpoint.pth.tar'), settings=settings)
    acc = events(tmp_path)
    assert [e.step for e in acc.Scalars('val/mAP')] == [1, 2, 3] and text_steps(tmp_path) == [1, 3]
    next_second()
    toy_run(tmp_path, epochs=3, resume=str(source), settings=settings)
    acc = events(tmp_path)
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2, 3]
    for tag, key in [('train/loss', 'train_loss'), ('val/mAP', 'val_mAP'), ('time/epoch_s', 'time_s')]:
        assert steps_and_values(acc, tag) == [(r['epoch'], pytest.approx(r[key], rel=1e-6)) for r in log], tag
    assert resumed_epoch in (1, 2) and text_steps(tmp_path) == [1, resumed_epoch + 1]
    assert len([name for name in os.listdir(tmp_path) if name.startswith('events.out.tfevents.')]) == 3


def test_no_tensorboard_writes_no_events(tmp_path):
    toy_run(tmp_path, epochs=1, tensorboard=False)
    assert not [name for name in os.listdir(tmp_path) if 'tfevents' in name]
    assert (tmp_path / 'log.jsonl').is_file()


def test_a_missing_tensorboard_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)   # import fails as if not installed
    with pytest.raises(UsageError, match='pip install tensorboard, or pass --no-tensorboard') as info:
        toy_run(tmp_path, epochs=1)
    assert '\n' not in str(info.value)
    assert not (tmp_path / 'checkpoint.pth.tar').exists()   # stopped before training
    toy_run(tmp_path / 'off', epochs=1, tensorboard=False)   # without events, the package is not needed


def test_a_full_disk_under_the_events_is_one_line_and_the_checkpoint_intact(tmp_path, monkeypatch):
    """The events file's flush at the end of epoch 2 fails as a full disk does (TensorBoard's writer
    raises the OSError of its file)."""
    real_flush = event_file_writer.EventFileWriter.flush

    def flush(self):
        log = tmp_path / 'log.jsonl'   # written before the events of its epoch
        if log.exists() and len(log.read_text().splitlines()) == 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        real_flush(self)
    monkeypatch.setattr(event_file_writer.EventFileWriter, 'flush', flush)
    with pytest.raises(SaveError) as info:
        toy_run(tmp_path, epochs=3)
    assert str(info.value) == (
        f'cannot write TensorBoard events in {tmp_path}: No space left on device; the last complete checkpoint, '
        f"{tmp_path / 'checkpoint.pth.tar'} (epoch 2), is intact: free space or choose another --save-dir, "
        'then --resume it')
    assert torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)['epoch'] == 2


"""The save folder's files: the per-epoch log, the eval JSON and the checkpoints survive a write that
fails half-way or a crash."""
import builtins
import errno
import json
import os

import pytest

import torch

import run_folder
from errors import SaveError
from run_folder import RunFolder


class DiskFull:
    """A text file that takes the first half of what it is given, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[:len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, 'No space left on device')

    def writelines(self, lines):
        self.write(''.join(lines))


def fill_disk(monkeypatch):
    """From now on, files that run_folder.py opens for writing fail half-way."""
    def open_(path, mode='r', *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return DiskFull(f) if set(mode) & set('wa') else f
    monkeypatch.setattr(run_folder, 'open', open_, raising=False)


def record(epoch, val_map):
    """A log.jsonl record with the fields the curves read."""
    return {'epoch': epoch, 'train_loss': 1.0 / epoch, 'train_mAP': 40.0, 'val_loss': 1.0, 'val_mAP': val_map}


def test_log_lines_are_added_in_order(tmp_path):
    folder = RunFolder(str(tmp_path / 'run'))
    folder.log_epoch(record(1, 50.0))
    folder.log_epoch(record(2, float('nan')))
    log = folder.log()
    assert [r['epoch'] for r in log] == [1, 2] and log[0]['val_mAP'] == 50.0
    folder.truncate_log(1)
    assert folder.log() == [log[0]]


@pytest.mark.parametrize('write', [
    lambda folder: folder.log_epoch(record(3, 60.0)),
    lambda folder: folder.truncate_log(1),
    lambda folder: folder.write_json(run_folder.LOG_NAME, {'epoch': 3}),
], ids=['log_epoch', 'truncate_log', 'write_json'])
def test_a_write_failing_half_way_leaves_the_previous_file_whole(tmp_path, monkeypatch, write):
    folder = RunFolder(str(tmp_path))
    for epoch in (1, 2):
        folder.log_epoch(record(epoch, 10.0 * epoch))
    before = (tmp_path / run_folder.LOG_NAME).read_bytes()
    fill_disk(monkeypatch)
    with pytest.raises(SaveError, match=f'^cannot write {folder.file(run_folder.LOG_NAME)}: No space left on device'):
        write(folder)
    assert (tmp_path / run_folder.LOG_NAME).read_bytes() == before
    assert [json.loads(line)['epoch'] for line in before.decode().splitlines()] == [1, 2]
    assert sorted(os.listdir(tmp_path)) == [run_folder.CURVES_NAME, run_folder.LOG_NAME]  # no temporary file


def test_atomic_save_survives_a_crash_during_save(tmp_path, monkeypatch):
    folder = RunFolder(str(tmp_path))
    folder.save_checkpoint({'epoch': 1}, best={'epoch': 1})
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')  # a partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        folder.save_checkpoint({'epoch': 2}, best={'epoch': 2})
    monkeypatch.setattr(torch, 'save', real_save)
    for name in (run_folder.CHECKPOINT_NAME, run_folder.BEST_NAME):
        assert torch.load(tmp_path / name, weights_only=True) == {'epoch': 1}
    assert sorted(os.listdir(tmp_path)) == [run_folder.CHECKPOINT_NAME, run_folder.BEST_NAME]  # no temp file left

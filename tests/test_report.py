"""report.py's files: the per-epoch log and the eval JSON survive a write that fails half-way."""
import builtins
import errno
import json
import os

import pytest

import report


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
    """From now on, files that report.py opens for writing fail half-way."""
    def open_(path, mode='r', *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return DiskFull(f) if set(mode) & set('wa') else f
    monkeypatch.setattr(report, 'open', open_, raising=False)


def test_log_lines_are_added_in_order(tmp_path):
    report.append_log(str(tmp_path / 'run'), {'epoch': 1, 'val_mAP': 50.0})
    report.append_log(str(tmp_path / 'run'), {'epoch': 2, 'val_mAP': float('nan')})
    log = report.read_log(str(tmp_path / 'run'))
    assert [r['epoch'] for r in log] == [1, 2] and log[0]['val_mAP'] == 50.0
    report.truncate_log(str(tmp_path / 'run'), 1)
    assert report.read_log(str(tmp_path / 'run')) == [log[0]]


@pytest.mark.parametrize('write', [
    lambda save_dir: report.append_log(save_dir, {'epoch': 3, 'val_mAP': 60.0}),
    lambda save_dir: report.truncate_log(save_dir, 1),
    lambda save_dir: report.write_json(os.path.join(save_dir, report.LOG_NAME), {'epoch': 3}),
], ids=['append_log', 'truncate_log', 'write_json'])
def test_a_write_failing_half_way_leaves_the_previous_file_whole(tmp_path, monkeypatch, write):
    save_dir = str(tmp_path)
    for epoch in (1, 2):
        report.append_log(save_dir, {'epoch': epoch, 'val_mAP': 10.0 * epoch})
    before = (tmp_path / report.LOG_NAME).read_bytes()
    fill_disk(monkeypatch)
    with pytest.raises(OSError, match='No space left'):
        write(save_dir)
    assert (tmp_path / report.LOG_NAME).read_bytes() == before
    assert [json.loads(line)['epoch'] for line in before.decode().splitlines()] == [1, 2]
    assert os.listdir(tmp_path) == [report.LOG_NAME]  # no temporary file left either

"""Nothing a run wrote is lost: where runs go, no new run over another one, a full disk that costs nothing."""
import errno
import json
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn as nn

import cli
import run
import demo_custom_gcn
import demo_voc2007_gcn
import run_folder
from errors import SaveError, UsageError, guarded
from tests.helpers import run_main
from tests.toy import ToyDataset, ToyMSRN, make_engine, make_optimizer, resumed
from util import seed_everything


def folder_bytes(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def old_run(path):
    """A folder as a finished run leaves it (the files' content is not read but for the log)."""
    path.mkdir(parents=True)
    for name in (run_folder.CHECKPOINT_NAME, run_folder.BEST_NAME, 'curves.png', 'eval_epoch005.json'):
        (path / name).write_bytes(b'old ' + name.encode())
    (path / run_folder.LOG_NAME).write_text(json.dumps({'epoch': 5, 'best_mAP': 69.7}) + '\n')
    (path / 'notes.txt').write_text('mine')  # not a run's file
    return path


# ---------------------------------------------------------------------------------------------
# Where runs go

def parsed(argv, demo=demo_voc2007_gcn):
    args, given = cli.parse_args(cli.get_args_parser(demo.DATASET), argv)
    run.choose_save_dir(args, given, demo.DATASET)
    return args


def test_save_folders(tmp_path):
    assert parsed(['data/voc']).save_dir == os.path.join(cli.REPO_DIR, 'checkpoint', 'voc2007')
    # your own data: one default folder per dataset folder, so two datasets never collide
    assert parsed(['pics/holiday'], demo_custom_gcn).save_dir == os.path.join(cli.REPO_DIR, 'checkpoint', 'custom',
                                                                             'holiday')
    assert parsed(['pics/holiday/'], demo_custom_gcn).save_dir.endswith(os.path.join('custom', 'holiday'))
    # a resumed run (or an evaluation) goes on in the folder of its checkpoint; --save-dir wins
    resume = str(tmp_path / 'runs' / 'my1b' / 'checkpoint.pth.tar')
    assert parsed(['--resume', resume]).save_dir == str(tmp_path / 'runs' / 'my1b')
    assert parsed(['-e', '--resume', resume]).save_dir == str(tmp_path / 'runs' / 'my1b')
    assert parsed(['--resume', resume, '--save-dir', 'elsewhere']).save_dir == 'elsewhere'


def claim(tmp_path, folder, *flags, resume=None):
    argv = ['data', '--save-dir', str(folder), *flags] + (['--resume', str(resume)] if resume else [])
    args, _ = cli.parse_args(cli.get_args_parser(demo_voc2007_gcn.DATASET), argv)
    run.claim_save_dir(args)


def test_a_new_run_never_writes_over_another(tmp_path):
    folder = old_run(tmp_path / 'my1')
    before = folder_bytes(folder)
    with pytest.raises(UsageError) as info:
        claim(tmp_path, folder)
    assert str(info.value) == (f'{folder} holds another run (epoch 5, best mAP 69.7): continue it with --resume '
                               f'{folder / "checkpoint.pth.tar"}, choose another --save-dir, or pass --overwrite to '
                               'delete its files first')
    with pytest.raises(UsageError, match='holds another run'):  # resumed from elsewhere: as a new run
        claim(tmp_path, folder, resume=tmp_path / 'other' / 'checkpoint.pth.tar')
    assert folder_bytes(folder) == before
    claim(tmp_path, folder, resume=folder / 'model_best.pth.tar')  # its own run
    claim(tmp_path, folder, '-e')                                  # an evaluation writes a new eval JSON only
    claim(tmp_path, tmp_path / 'new')                              # an empty or missing folder
    assert folder_bytes(folder) == before


def test_overwrite_deletes_the_old_runs_files_and_nothing_else(tmp_path, capsys):
    folder = old_run(tmp_path / 'my1')
    (folder / 'eval_model_best.json').write_text('{}')
    (folder / 'events.out.tfevents.1.host').write_text('x')
    claim(tmp_path, folder, '--overwrite')
    assert os.listdir(folder) == ['notes.txt']
    assert f'=> --overwrite: deleted the 7 files of the run in {folder} (epoch 5, best mAP 69.7)' in \
        capsys.readouterr().out


def test_a_folder_without_a_log_is_described_by_its_files(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'model_best.pth.tar').write_bytes(b'x')
    assert run_folder.held_run(str(tmp_path / 'run')) == 'model_best.pth.tar'
    (tmp_path / 'run' / 'model_best.pth.tar').unlink()
    (tmp_path / 'run' / 'eval_model_best.json').write_text('{}')  # an evaluation's file is not a run
    assert run_folder.held_run(str(tmp_path / 'run')) is None


def test_a_new_run_into_a_used_folder_is_one_line_and_touches_nothing(synthetic, tmp_path):
    info = synthetic('custom', n_train=24, n_val=12)
    folder = old_run(tmp_path / 'my1')
    before = folder_bytes(folder)
    result = run_main('demo_custom_gcn.py', info['root'], '--save-dir', folder, '--pretrained', '0', '--backbone',
                        'resnet18', '--device', 'cpu')
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f'error: {folder} holds another run (epoch 5, best mAP 69.7): continue it '
                                          f'with --resume {folder / "checkpoint.pth.tar"}, choose another --save-dir, '
                                          'or pass --overwrite to delete its files first']
    assert folder_bytes(folder) == before


# ---------------------------------------------------------------------------------------------
# A full disk

def train(save_dir, epochs, resume=None):
    """ToyMSRN for ``epochs`` (resuming ``resume``) as a fresh process would; returns (code, model)."""
    seed_everything(0)
    model = ToyMSRN()
    engine = make_engine(save_dir=str(save_dir), epochs=epochs, epoch_step=[2],
                         resume=resumed(model, resume) if resume else None)
    code = guarded(engine.learning, model, nn.MultiLabelSoftMarginLoss(), ToyDataset(30, seed=1),
                       ToyDataset(10, seed=2), make_optimizer(model))
    return code, model


def fail_second_save(monkeypatch):
    """torch.save writes half a file and fails as a full disk does, from its second call on."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < 3:   # epoch 1: checkpoint.pth.tar and model_best.pth.tar
            return real_save(obj, f, *args, **kwargs)
        f.write(b'half')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', save)


def assert_stopped_cleanly(capsys, folder, code):
    """One error line naming the file and cause, exit code 2, epoch 1 intact, no temporary file."""
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    checkpoint = folder / 'checkpoint.pth.tar'
    assert len(err) == 1 and err[0].startswith(f'error: cannot write {checkpoint}: No space left on device (it '
                                               'needs about ')
    assert err[0].endswith(f'the last complete checkpoint, {checkpoint} (epoch 1), is intact: free space or choose '
                           'another --save-dir, then --resume it')
    assert torch.load(checkpoint, weights_only=True)['epoch'] == 1
    assert [json.loads(line)['epoch'] for line in open(folder / 'log.jsonl')] == [1]
    assert not [name for name in os.listdir(folder) if '.tmp' in name]


def test_a_full_disk_at_the_second_save_costs_nothing(tmp_path, monkeypatch, capsys):
    code, _ = train(tmp_path / 'run', 2)
    straight = torch.load(tmp_path / 'run' / 'checkpoint.pth.tar', weights_only=True)['state_dict']
    capsys.readouterr()
    with monkeypatch.context() as patch:
        fail_second_save(patch)
        code, _ = train(tmp_path / 'full', 2)
    assert_stopped_cleanly(capsys, tmp_path / 'full', code)
    code, resumed = train(tmp_path / 'full', 2, resume=tmp_path / 'full' / 'checkpoint.pth.tar')
    assert code == 0
    assert all(torch.equal(straight[k], v) for k, v in resumed.state_dict().items())


def test_every_file_of_the_folder_reports_a_failed_write(tmp_path):
    folder = run_folder.RunFolder(str(tmp_path / 'ro'))
    os.makedirs(folder.path)
    os.chmod(folder.path, 0o500)
    try:
        if os.access(folder.path, os.W_OK):
            pytest.skip('running as root: permissions do not stop writes')
        for write in (lambda: folder.log_epoch({'epoch': 1}), lambda: folder.write_json('eval.json', {}),
                      lambda: folder.save_checkpoint({'epoch': 1})):
            with pytest.raises(SaveError, match=r'^cannot write .*: Permission denied.*no checkpoint was written yet'):
                write()
    finally:
        os.chmod(folder.path, 0o700)


def mount_tmpfs(path, size):
    return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                          capture_output=True).returncode == 0


def blocks_used(path):
    return sum(os.stat(os.path.join(path, name)).st_blocks * 512 for name in os.listdir(path))


def test_a_real_full_disk(tmp_path, capsys):
    """On a tmpfs that holds epoch 1's files but not a second checkpoint beside the first (root only)."""
    probe = tmp_path / 'probe'
    train(probe, 1)
    checkpoint_size = os.path.getsize(probe / 'checkpoint.pth.tar')
    disk = tmp_path / 'disk'
    disk.mkdir()
    size = (blocks_used(probe) + checkpoint_size // 2) // 4096 * 4096
    if os.geteuid() != 0 or not mount_tmpfs(disk, size):
        pytest.skip('needs root to mount a tmpfs')
    try:
        capsys.readouterr()
        code, _ = train(disk / 'run', 2)
        assert_stopped_cleanly(capsys, disk / 'run', code)
        subprocess.run(['mount', '-o', f'remount,size={4 * size}', str(disk)], check=True)  # space freed
        code, resumed = train(disk / 'run', 2, resume=disk / 'run' / 'checkpoint.pth.tar')
        assert code == 0 and torch.load(disk / 'run' / 'checkpoint.pth.tar', weights_only=True)['epoch'] == 2
        shutil.copytree(disk / 'run', tmp_path / 'copy')
    finally:
        subprocess.run(['umount', str(disk)])
    train(tmp_path / 'straight', 2)
    straight = torch.load(tmp_path / 'straight' / 'checkpoint.pth.tar', weights_only=True)['state_dict']
    assert all(torch.equal(straight[k], v) for k, v in resumed.state_dict().items())

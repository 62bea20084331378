"""A run stopped by a signal, Ctrl-C, or killed, goes on with the same command and ends where an
uninterrupted run ends, bit for bit: mid-epoch checkpoints, --resume auto, --checkpoint-interval,
SLURM's requeue (through a fake scontrol), partial files of killed processes. Several processes
under torchrun: tests/test_elastic.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DistributedSampler

import demo_custom_gcn
import engine as engine_module
import preemption
import run_folder
from errors import Stopped
from loader import EpochSampler
from tests.helpers import REPO, custom_argv, run_demo
from tests.toy import ToyDataset, ToyMSRN, make_engine, make_optimizer, toy_run
from util import seed_everything

STEPS = 4   # training steps per epoch: 16 images, batches of 4


def argv(info, save, *extra):
    return custom_argv(info['root'], save, '-b', '4', '--epochs', '2', '--no-tensorboard', '--print-freq', '1',
                       *extra)


def weights(save):
    return torch.load(save / 'checkpoint.pth.tar', weights_only=True)['state_dict']


def log(save):
    """log.jsonl without its times (which no two runs share)."""
    return [{k: v for k, v in json.loads(line).items() if 'time' not in k} for line in open(save / 'log.jsonl')]


def assert_same_run(save, reference):
    got, want = weights(save), weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert log(save) == log(reference)


@pytest.fixture(scope='module')
def data(synthetic):
    return synthetic('custom', n_train=16, n_val=8)


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
    """Uninterrupted runs of two epochs with -j 0 and -j 2: {workers: save folder}."""
    runs = {}
    for workers in ('0', '2'):
        save = tmp_path_factory.mktemp(f'reference_j{workers}')
        code, out = run_demo(demo_custom_gcn, argv(data, save, '-j', workers))
        assert code == 0, out
        runs[workers] = save
    return runs


def signal_at(monkeypatch, when, signum=signal.SIGTERM, times=1):
    """Send this process ``signum`` (``times`` times) after batch ``when`` = (epoch 1-based, training
    batch 1-based, or 'val' and a validation batch) of the run."""
    real = engine_module.GCNMultiLabelMAPEngine.on_end_batch
    seen = {}

    def on_end_batch(self):
        real(self)
        phase = 'train' if self.state['output'].requires_grad else 'val'
        key = (self.state['epoch'] + 1, phase)
        seen[key] = seen.get(key, 0) + 1
        if key == (when[0], 'train' if isinstance(when[1], int) else 'val') and seen[key] == (
                when[1] if isinstance(when[1], int) else when[2]):
            for _ in range(times):
                os.kill(os.getpid(), signum)
    monkeypatch.setattr(engine_module.GCNMultiLabelMAPEngine, 'on_end_batch', on_end_batch)


# ---------------------------------------------------------------------------------------------
# A signal from inside, at a chosen step: -j 0 and -j 2

@pytest.mark.slow
@pytest.mark.parametrize('workers', ['0', '2'])
def test_sigterm_mid_epoch_then_the_same_command_ends_bit_for_bit(workers, data, reference, tmp_path, monkeypatch,
                                                                  capsys):
    command = argv(data, tmp_path, '-j', workers, '--resume', 'auto')
    with monkeypatch.context() as patch:
        signal_at(patch, (2, 2))
        code, out = run_demo(demo_custom_gcn, command)
    assert code == preemption.EXIT_STOPPED == 75
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f'stopped by SIGTERM at epoch 2, step 2/{STEPS}: {tmp_path / "checkpoint.pth.tar"} '
                           '(mid-epoch, written now); to continue, run the same command with --resume')
    stopped = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    assert stopped['epoch'] == 1 and stopped['position']['step'] == 2 and stopped['position']['start'] == 8
    assert [r['epoch'] for r in log(tmp_path)] == [1]
    code, out = run_demo(demo_custom_gcn, command)   # the same command line
    assert code == 0, out
    assert f'=> --resume auto: continuing the run in {tmp_path}' in out
    batches = [line.split(']')[0] for line in out.splitlines() if line.startswith('Epoch 2 train [')]
    assert batches == ['Epoch 2 train [2/4', 'Epoch 2 train [3/4']   # counting on from where it stopped
    assert_same_run(tmp_path, reference[workers])


@pytest.mark.slow
def test_a_signal_during_validation_saves_the_trained_epoch(data, reference, tmp_path, monkeypatch, capsys):
    command = argv(data, tmp_path, '--resume', 'auto')
    with monkeypatch.context() as patch:
        signal_at(patch, (2, 'val', 1), signal.SIGUSR1)
        assert run_demo(demo_custom_gcn, command)[0] == 75
    assert 'stopped by SIGUSR1 at epoch 2, after its training, during its validation' in capsys.readouterr().err
    assert torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)['position']['phase'] == 'validate'
    code, out = run_demo(demo_custom_gcn, command)
    assert code == 0 and 'Epoch 2 train [' not in out   # trained before the stop: validated now
    assert_same_run(tmp_path, reference['0'])


# ---------------------------------------------------------------------------------------------
# A signal from outside, and a process killed

def start(command):
    return subprocess.Popen([sys.executable, os.path.join(REPO, 'demo_custom_gcn.py'), *command], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))


def wait_for_line(process, prefix, timeout=240):
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if line.startswith(prefix):
            return line
        assert time.monotonic() < deadline, f'no line {prefix!r}'
    raise AssertionError(f'the run ended before printing {prefix!r}: {process.stderr.read()[-2000:]}')


@pytest.mark.long   # two processes of their own each: about a minute
@pytest.mark.parametrize('how', ['SIGTERM', 'SIGKILL'])
def test_a_process_stopped_or_killed_from_outside_goes_on_with_the_same_command(how, data, reference, tmp_path):
    """SIGTERM: the run stops at the next step with its checkpoint (exit 75). SIGKILL: nothing is
    written then, but with --checkpoint-interval tiny every step wrote one."""
    command = argv(data, tmp_path, '--resume', 'auto', *(['--checkpoint-interval', '1e-6'] if how == 'SIGKILL' else []))
    process = start(command)
    wait_for_line(process, 'Epoch 2 train [1/4]')
    process.send_signal(getattr(signal, how))
    out, err = process.communicate(timeout=240)
    if how == 'SIGTERM':
        assert process.returncode == 75, err
        assert err.strip().splitlines()[-1].startswith('stopped by SIGTERM at epoch 2, step ')
    else:
        assert process.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)['position']['phase'] == 'train'
    result = subprocess.run([sys.executable, os.path.join(REPO, 'demo_custom_gcn.py'), *command], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_same_run(tmp_path, reference['0'])


# ---------------------------------------------------------------------------------------------
# Saves, second signals, Ctrl-C (the toy model: fast)

def toy_training(save_dir, stop, epochs=2, **loop):
    seed_everything(0)
    model = ToyMSRN()
    engine = make_engine(save_dir=save_dir, epochs=epochs, epoch_step=[2], stop=stop, tensorboard=False, **loop)
    return engine, lambda: engine.learning(model, torch.nn.MultiLabelSoftMarginLoss(), ToyDataset(16, seed=1),
                                           ToyDataset(6, seed=2), make_optimizer(model))


def signal_in_save(monkeypatch, signals):
    """Send this process ``signals`` while the first checkpoint is being written."""
    real, calls = run_folder.RunFolder.save_checkpoint, []

    def save_checkpoint(self, state, best=None):
        calls.append(state['epoch'])
        if len(calls) == 1:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return real(self, state, best)
    monkeypatch.setattr(run_folder.RunFolder, 'save_checkpoint', save_checkpoint)
    return calls


def test_signals_while_saving_let_the_save_finish_then_stop(tmp_path, monkeypatch):
    calls = signal_in_save(monkeypatch, [signal.SIGTERM, signal.SIGTERM])   # a second signal while saving
    with preemption.handling() as stop:
        engine, learn = toy_training(tmp_path, stop)
        with pytest.raises(Stopped, match=r'^stopped by SIGTERM at the end of epoch 1: .*checkpoint.pth.tar '
                                          r'\(epoch 1\)') as info:
            learn()
    assert info.value.exit_code == 75 and calls == [1]   # nothing written after the epoch's save
    saved = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    assert saved['epoch'] == 1 and 'position' not in saved
    assert not [name for name in os.listdir(tmp_path) if '.tmp-' in name]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handlers are the process's again


def test_ctrl_c_stops_at_the_next_step_and_a_second_one_at_once(tmp_path, monkeypatch, capsys):
    with preemption.handling() as stop, monkeypatch.context() as patch:
        signal_at(patch, (1, 2), signal.SIGINT)
        _, learn = toy_training(tmp_path / 'once', stop)
        with pytest.raises(Stopped, match='^stopped by SIGINT at epoch 1, step 2/4: ') as info:
            learn()
    assert info.value.exit_code == preemption.EXIT_INTERRUPTED == 130
    assert '=> Ctrl-C: writing a checkpoint, then stopping (Ctrl-C again stops at once)' in capsys.readouterr().out
    assert torch.load(tmp_path / 'once' / 'checkpoint.pth.tar', weights_only=True)['position']['step'] == 2

    def half_a_save(path, obj):   # Ctrl-C twice while the first checkpoint is half written
        with open(path, 'wb') as f:
            f.write(b'half')
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(run_folder, '_torch_save', half_a_save)
    with preemption.handling() as stop:
        _, learn = toy_training(tmp_path / 'twice', stop)
        with pytest.raises(Stopped, match='^interrupted; no checkpoint was written yet') as info:
            learn()
    assert info.value.exit_code == 130
    assert os.listdir(tmp_path / 'twice') == []   # the interrupted save left nothing half written


def test_the_checkpoint_timer_writes_within_epochs(tmp_path, monkeypatch):
    positions = []
    real = run_folder.RunFolder.save_checkpoint
    monkeypatch.setattr(run_folder.RunFolder, 'save_checkpoint',
                        lambda self, state, best=None: positions.append(state.get('position', {}).get('step'))
                        or real(self, state, best))
    engine, learn = toy_training(tmp_path, preemption.StopRequest(), epochs=1, checkpoint_interval=1e-9)
    learn()
    assert positions == [1, 2, 3, 4, None]   # every step, then the epoch's own
    assert 'position' not in torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)


def test_stopped_again_and_again_in_one_epoch_it_still_ends_bit_for_bit(tmp_path, monkeypatch):
    """Epoch 2 (8 training steps, 3 validation batches) stopped after step 2, after step 5 of the
    resumed pass, twice during its validation: each time the same command goes on."""
    straight, _, _, _ = toy_run(tmp_path / 'straight', 3)
    checkpoint = str(tmp_path / 'stopped' / 'checkpoint.pth.tar')
    for n, when in enumerate([(2, 2), (2, 5), (2, 'val', 1), (2, 'val', 2)]):
        with preemption.handling() as stop, monkeypatch.context() as patch:
            signal_at(patch, when)
            with pytest.raises(Stopped):
                toy_run(tmp_path / 'stopped', 3, resume=checkpoint if n else None, init_seed=10 * n, stop=stop)
    resumed, _, _, _ = toy_run(tmp_path / 'stopped', 3, resume=checkpoint, init_seed=99)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert log(tmp_path / 'stopped') == log(tmp_path / 'straight')


# ---------------------------------------------------------------------------------------------
# SLURM: the requeue

@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """An ``scontrol`` first on PATH that records its arguments; returns the record's path."""
    record = tmp_path / 'scontrol.args'
    script = tmp_path / 'bin' / 'scontrol'
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    script.chmod(0o755)
    monkeypatch.setenv('PATH', f'{script.parent}{os.pathsep}{os.environ["PATH"]}')
    for name in ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID'):
        monkeypatch.delenv(name, raising=False)
    return record


@pytest.mark.parametrize('env, expected', [({'SLURM_JOB_ID': '4242'}, 'requeue 4242'),
                                           ({'SLURM_JOB_ID': '4250', 'SLURM_ARRAY_JOB_ID': '4242',
                                             'SLURM_ARRAY_TASK_ID': '7'}, 'requeue 4242_7')])
def test_the_requeue_signal_under_slurm_requeues_the_job(env, expected, fake_scontrol, tmp_path, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with preemption.handling('USR2') as stop, monkeypatch.context() as patch:
        signal_at(patch, (1, 1), signal.SIGUSR2)
        _, learn = toy_training(tmp_path / 'run', stop)
        with pytest.raises(Stopped, match=f'SLURM job {expected.split()[1]} requeued$'):
            learn()
    assert fake_scontrol.read_text() == expected + '\n'


@pytest.mark.parametrize('slurm, signum', [(True, signal.SIGTERM), (False, signal.SIGUSR1)],
                         ids=['sigterm-under-slurm', 'requeue-signal-without-slurm'])
def test_nothing_is_requeued_but_after_the_requeue_signal_under_slurm(slurm, signum, fake_scontrol, tmp_path,
                                                                      monkeypatch):
    if slurm:
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
    with preemption.handling() as stop, monkeypatch.context() as patch:
        signal_at(patch, (1, 1), signum)
        _, learn = toy_training(tmp_path / 'run', stop)
        with pytest.raises(Stopped) as info:
            learn()
    assert 'SLURM job' not in str(info.value) and not fake_scontrol.exists()


# ---------------------------------------------------------------------------------------------
# --resume auto

def test_resume_auto_starts_a_run_in_an_empty_folder(data, reference, tmp_path):
    code, out = run_demo(demo_custom_gcn, argv(data, tmp_path, '--resume', 'auto'))
    assert code == 0 and f'=> --resume auto: no checkpoint in {tmp_path}: a new run' in out
    assert_same_run(tmp_path, reference['0'])


def test_resume_auto_of_a_finished_run_says_so_and_trains_nothing(data, reference, tmp_path, capsys):
    before = {name: os.stat(reference['0'] / name).st_mtime_ns for name in os.listdir(reference['0'])}
    code, out = run_demo(demo_custom_gcn, argv(data, reference['0'], '--resume', 'auto'))
    assert code == 0 and out.splitlines()[-1].startswith(
        f"=> --resume auto: the run in {reference['0']} finished its 2 epochs (best mAP ")
    assert {name: os.stat(reference['0'] / name).st_mtime_ns for name in os.listdir(reference['0'])} == before


def test_resume_auto_refuses_another_datasets_run_and_an_unreadable_checkpoint(data, reference, voc_run, tmp_path,
                                                                              capsys):
    _, voc_save = voc_run
    code, _ = run_demo(demo_custom_gcn, argv(data, voc_save, '--resume', 'auto'))
    assert code == 2 and f'error: {voc_save} holds a run of voc, not custom: choose another --save-dir' in \
        capsys.readouterr().err
    other = data['root'] + '-elsewhere'
    code, _ = run_demo(demo_custom_gcn, [other, *argv(data, reference['0'], '--resume', 'auto')[1:]])
    assert code == 2 and f"holds a run of {data['root']}, not {other} (data)" in capsys.readouterr().err
    (tmp_path / 'checkpoint.pth.tar').write_bytes(b'half a checkpoint')
    code, _ = run_demo(demo_custom_gcn, argv(data, tmp_path, '--resume', 'auto'))
    err = capsys.readouterr().err
    assert code == 2 and f'error: {tmp_path / "checkpoint.pth.tar"}: cannot read checkpoint' in err
    assert (tmp_path / 'checkpoint.pth.tar').read_bytes() == b'half a checkpoint'   # nothing deleted


# ---------------------------------------------------------------------------------------------
# Partial files of killed processes

def test_a_killed_writers_partial_file_is_removed_by_the_next_run_never_a_live_ones(data, tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    live = subprocess.Popen(['sleep', '600'])   # as a process still writing
    host = socket.gethostname()
    names = [f'checkpoint.pth.tar.tmp-{host}-{dead.pid}', f'checkpoint.pth.tar.tmp-{host}-{live.pid}',
             f'checkpoint.pth.tar.tmp-another-host-{dead.pid}']
    for name in names:
        (tmp_path / name).write_bytes(b'partial')
    try:
        code, out = run_demo(demo_custom_gcn, argv(data, tmp_path, '--epochs', '1', '--resume', 'auto'))
    finally:
        live.kill()
    assert code == 0, out
    assert f'=> removed {tmp_path / names[0]}: a partial file of a process that was killed while writing' in out
    assert sorted(name for name in os.listdir(tmp_path) if '.tmp-' in name) == sorted(names[1:])


# ---------------------------------------------------------------------------------------------
# The epoch's order

@pytest.mark.parametrize('size, world_size', [(11, 1), (11, 2), (30, 3), (5, 4)])
def test_the_epoch_order_is_distributed_samplers(size, world_size):
    for rank in range(world_size):
        for shuffle in (True, False):
            theirs = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=3)
            ours = EpochSampler(size, shuffle, 3, rank, world_size)
            for epoch in (0, 5):
                theirs.set_epoch(epoch)
                ours.set_epoch(epoch)
                assert list(ours) == list(theirs)


@pytest.mark.parametrize('new_world_size', [1, 2, 3])
def test_a_resume_with_another_process_count_loads_what_was_not_consumed(new_world_size):
    """Stopped after 2 steps of batches of 2 on 2 processes (8 of the epoch's 11 samples, padded to
    12): the processes of the resume load the 3 others, and only repeats of padding beside them."""
    first = [EpochSampler(11, True, 0, rank, 2) for rank in range(2)]
    for sampler in first:
        sampler.set_epoch(1)
    consumed = [index for sampler in first for index in list(sampler)[:4]]
    resumed = [EpochSampler(11, True, 0, rank, new_world_size) for rank in range(new_world_size)]
    for sampler in resumed:
        sampler.set_epoch(1)
        sampler.resume(first[0].order, 8, first[0].real, 2)
    rest = [index for sampler in resumed for index in sampler]
    left = set(range(11)) - set(consumed)
    assert len(set(consumed)) == 8 and len(left) == 3 == resumed[0].remaining
    assert set(rest) >= left and len(rest) % new_world_size == 0
    padding = set(first[0].order[11:]) if new_world_size == 2 else left   # repeats, up to a multiple of W
    assert len(rest) - 3 < new_world_size and set(rest) - left <= padding
    if new_world_size == 2:   # the same count: the very positions the interrupted epoch had left
        assert [list(s) for s in resumed] == [list(s)[4:] for s in first]

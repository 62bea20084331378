"""Training under torchrun survives what a cluster does to it (docs/training.md, "Clusters"): a stop
signal (from inside one worker, or sent to the torchrun agent) then the same command with --resume
auto; a worker killed with SIGKILL and restarted by torchrun's elastic agent (the restarted workers
used to hang 15 minutes in gloo's connectFullMesh); two agents meeting at a c10d rendezvous as two
nodes would. Each ends bit for bit where one uninterrupted run of two processes ends.

Two CPU processes (gloo) of demo_voc2007_gcn.py, run by tests/elastic_worker.py, which sends a
signal to its own process after a chosen step. Every epoch writes ~1 GB (checkpoint and
model_best: fc1 is big even on ResNet-18), so the runs are two epochs of two steps."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

from tests.helpers import QUICK, REPO

WORKER = os.path.join(REPO, 'tests', 'elastic_worker.py')
EPOCHS = 2
# One run takes 25-50 s on 2 CPU cores; a hang, as in the report (15 minutes), fails the test instead.
TIMEOUT = 300
STANDALONE = ['--standalone', '--nproc_per_node', '2']

pytestmark = pytest.mark.long


def train_argv(info, save_dir, *extra):
    """16 training images in batches of 4 on each of 2 processes: 2 steps an epoch; the lr decays
    at epoch 2. --print-freq 1 prints every batch line (``Epoch 2 train [0/2]``)."""
    return [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], *QUICK, '-b', '4',
            '--seed', '0', '--epochs', str(EPOCHS), '--epoch_step', '1', '--print-freq', '1', '--no-tensorboard',
            '--connect-timeout', '60', '--save-dir', str(save_dir), *extra]


def descendants(pid):
    """Every process below ``pid`` (torchrun's workers run in sessions of their own, so a process
    group does not reach them)."""
    found = []
    for task in os.listdir(f'/proc/{pid}/task') if os.path.isdir(f'/proc/{pid}/task') else []:
        try:
            children = open(f'/proc/{pid}/task/{task}/children').read().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


class Torchrun:
    """``python -m torch.distributed.run LAUNCHER elastic_worker.py ARGV`` in a process of its own;
    its output (stdout and stderr of the agent and its workers, merged) read line by line as it
    comes, each line also handed to ``on_line(line, process)``. ``signal_spec``: MSRN_TEST_SIGNAL
    (tests/elastic_worker.py)."""

    def __init__(self, launcher, argv, signal_spec=None, on_line=None):
        env = {k: v for k, v in os.environ.items() if k != 'MSRN_TEST_SIGNAL' and not k.startswith('TORCHELASTIC')}
        env.update(OMP_NUM_THREADS='1', **({'MSRN_TEST_SIGNAL': signal_spec} if signal_spec else {}))
        self.command = [sys.executable, '-m', 'torch.distributed.run', *launcher, WORKER, *map(str, argv)]
        self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, args=(on_line,), daemon=True)
        self.reader.start()

    def _read(self, on_line):
        for line in self.process.stdout:
            self.lines.append(line)
            if on_line is not None:
                on_line(line, self.process)

    def wait(self, deadline):
        """(exit code, output) once it ended; still running at ``deadline`` (time.monotonic()):
        killed with its workers, and the test fails."""
        try:
            code = self.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            for pid in [*descendants(self.process.pid), self.process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait()
            self.reader.join(10)
            pytest.fail(f'{" ".join(self.command)}\nstill running after {TIMEOUT} s (hung?); its output ended with:\n'
                        + ''.join(self.lines[-60:]))
        self.reader.join(30)   # the workers may hold the pipe a moment longer
        return code, ''.join(self.lines)


def torchrun(launcher, argv, signal_spec=None, on_line=None):
    return Torchrun(launcher, argv, signal_spec, on_line).wait(time.monotonic() + TIMEOUT)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load(save_dir):
    return torch.load(os.path.join(save_dir, 'checkpoint.pth.tar'), weights_only=True, mmap=True)


def log(save_dir):
    return [json.loads(line) for line in open(os.path.join(save_dir, 'log.jsonl'))]


def assert_same_run(save_dir, reference_dir):
    """The run in ``save_dir`` finished where the reference run did: the same weights and momentum
    bit for bit, the same per-epoch losses and mAPs."""
    got, want = load(save_dir), load(reference_dir)
    assert got['epoch'] == want['epoch'] == EPOCHS and 'position' not in got
    assert got['state_dict'].keys() == want['state_dict'].keys()
    for key, value in want['state_dict'].items():
        assert torch.equal(got['state_dict'][key], value), key
    momentum = [[s['momentum_buffer'] for s in c['optimizer']['state'].values()] for c in (got, want)]
    assert len(momentum[0]) == len(momentum[1]) and all(torch.equal(a, b) for a, b in zip(*momentum))
    fields = ('epoch', 'lr', 'train_loss', 'train_mAP', 'val_loss', 'val_mAP', 'best_mAP')
    assert [[r[k] for k in fields] for r in log(save_dir)] == [[r[k] for k in fields] for r in log(reference_dir)]


def stop_places(output):
    """(who stopped it, where) of each stop line. Lines are searched, not split: torchrun runs its
    workers unbuffered, and two workers' lines on one pipe may run together (print writes the
    newline apart)."""
    return re.findall(r'stopped by (SIGTERM|another process) at ([^:]*): ', output)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A folder for this module's run folders, deleted afterwards (~1 GB per run)."""
    folder = tmp_path_factory.mktemp('elastic')
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='module')
def data(synthetic):
    return synthetic('voc', n_trainval=16, n_test=8, image_size=64)


@pytest.fixture(scope='module')
def reference(data, runs):
    """The uninterrupted run: 2 processes, --standalone, no signal. Its save folder."""
    save = runs / 'reference'
    code, out = torchrun(STANDALONE, train_argv(data, save))
    assert code == 0, out[-5000:]
    assert len(log(save)) == EPOCHS and 'stopped by' not in out
    return save


def test_sigterm_in_one_worker_stops_both_at_the_step_and_the_same_command_finishes_the_run(data, runs, reference):
    save = runs / 'sigterm'
    code, out = torchrun(STANDALONE, train_argv(data, save), 'SIGTERM@rank0:epoch2:step1')
    # a worker that fails (75 here) makes torchrun exit with 1; its report names the worker's code
    assert code == 1 and re.search(r'exitcode\s*:\s*75\b', out), out[-5000:]
    assert stop_places(out).count(('SIGTERM', 'epoch 2, step 1/2')) == 1, out[-5000:]
    assert f'stopped by SIGTERM at epoch 2, step 1/2: {save}/checkpoint.pth.tar (mid-epoch, written now); to ' \
           f'continue, run the same command with --resume {save}/checkpoint.pth.tar (or --resume auto)' in out
    assert {who for who, _ in stop_places(out)} <= {'SIGTERM', 'another process'}
    assert out.count('Traceback (most recent call last)') == 1   # torchrun's ChildFailedError, none of a worker
    position = load(save)['position']
    assert (position['epoch'], position['phase'], position['step'], position['start'], position['world_size']) == \
        (1, 'train', 1, 8, 2)
    assert [r['epoch'] for r in log(save)] == [1]

    code, out = torchrun(STANDALONE, train_argv(data, save, '--resume', 'auto'))
    assert code == 0, out[-5000:]
    assert f'=> --resume auto: continuing the run in {save}' in out
    # the consumed step is skipped, and the batch lines count on
    assert re.findall(r'Epoch \d[^ ]* (?:train \[\d/\d\])?', out) == ['Epoch 2 train [1/2]', 'Epoch 2/2 '], out[-5000:]
    assert_same_run(save, reference)


def test_sigterm_to_the_torchrun_agent_reaches_every_worker_and_the_run_resumes(data, runs, reference):
    save = runs / 'agent_sigterm'

    def on_line(line, process):   # rank 0 trained the first step of epoch 2
        if 'Epoch 2 train [0/2]' in line:
            process.send_signal(signal.SIGTERM)
    code, out = torchrun(STANDALONE, train_argv(data, save), on_line=on_line)
    assert code == 1, out[-5000:]
    # each worker got the signal from the agent, and said where they stopped (the same place)
    stopped = stop_places(out)
    assert len(stopped) == 2 and stopped[0] == stopped[1] and stopped[0][0] == 'SIGTERM', out[-5000:]
    assert re.fullmatch(r'epoch 2, (step [12]/2|after its training, during its validation)|the end of epoch 2',
                        stopped[0][1]), stopped

    code, out = torchrun(STANDALONE, train_argv(data, save, '--resume', 'auto'))
    assert code == 0, out[-5000:]
    assert_same_run(save, reference)


def test_a_worker_killed_mid_epoch_is_restarted_by_torchrun_and_the_run_ends_as_if_never_killed(data, runs, reference):
    save = runs / 'sigkill'
    code, out = torchrun([*STANDALONE, '--max-restarts', '1'], train_argv(data, save, '--resume', 'auto'),
                         'SIGKILL@rank1:epoch2:step1:restart0')
    assert code == 0, out[-5000:]
    assert out.count('elastic_worker: rank 1 sends itself SIGKILL after step 1 of epoch 2') == 1, out[-5000:]
    # the second generation read epoch 1's checkpoint (rank 0 prints) and trained epoch 2 again
    assert out.count('=> --resume auto: continuing the run in') == 1, out[-5000:]
    assert f'=> --resume auto: continuing the run in {save}' in out
    assert out.count('Epoch 1/2 ') == out.count('Epoch 2/2 ') == 1
    assert_same_run(save, reference)


def test_two_agents_meeting_at_a_c10d_rendezvous_train_like_one_standalone_agent(data, runs, reference):
    save = runs / 'two_nodes'
    launcher = ['--nnodes', '2', '--nproc_per_node', '1', '--rdzv_backend', 'c10d', '--rdzv_endpoint',
                f'127.0.0.1:{free_port()}', '--rdzv_id', f'msrn-test-{uuid.uuid4().hex[:12]}']
    nodes = [Torchrun(launcher, train_argv(data, save)) for _ in range(2)]
    deadline = time.monotonic() + TIMEOUT
    results = [node.wait(deadline) for node in nodes]
    for code, out in results:
        assert code == 0, out[-5000:]
    # the node whose worker got rank 0 printed the run, the other nothing of it
    printed = [out for _, out in results if 'git commit:' in out]
    assert len(printed) == 1 and 'processes: 2  device: cpu' in printed[0]
    assert sorted(os.listdir(save)) == sorted(os.listdir(reference))   # one writer: no stray partial files
    assert_same_run(save, reference)

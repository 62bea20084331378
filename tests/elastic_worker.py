"""Run by test_elastic.py under torchrun: demo_voc2007_gcn.py (its command line, its exit code), with
a signal that this process sends itself after a chosen training step, as a cluster would send it.

MSRN_TEST_SIGNAL='SIGTERM@rank0:epoch2:step1' sends SIGTERM to the process of global rank 0 right
after step 1 of epoch 2 (both counted from 1, as the stop line counts them), before the step
boundary where the processes agree on stopping. A ':restart0' at the end limits it to the
generation of that TORCHELASTIC_RESTART_COUNT (a SIGKILL that torchrun's restart must survive).
Usage: MSRN_TEST_SIGNAL=... torchrun ... elastic_worker.py ARGS OF demo_voc2007_gcn.py"""
import os
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
import run  # noqa: E402
import voc  # noqa: E402

SPEC = re.compile(r'(?P<signal>SIG\w+)@rank(?P<rank>\d+):epoch(?P<epoch>\d+):step(?P<step>\d+)'
                  r'(?::restart(?P<restart>\d+))?')


def arm(spec):
    """Make GCNMultiLabelMAPEngine send the signal of ``spec`` (the format above) to this process."""
    match = SPEC.fullmatch(spec)
    if match is None:
        raise SystemExit(f'MSRN_TEST_SIGNAL: {spec!r} is not SIG...@rankR:epochE:stepK[:restartN]')
    if int(os.environ['RANK']) != int(match['rank']):
        return
    if match['restart'] is not None and os.environ['TORCHELASTIC_RESTART_COUNT'] != match['restart']:
        return
    signum, epoch, step = signal.Signals[match['signal']], int(match['epoch']), int(match['step'])
    real = engine.GCNMultiLabelMAPEngine.step_boundary

    def step_boundary(self, training, step_done, steps_of_pass):
        if training and self.state['epoch'] + 1 == epoch and step_done == step:
            sys.stderr.write(f"elastic_worker: rank {os.environ['RANK']} sends itself {signum.name} after step {step} "
                             f"of epoch {epoch}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signum)
        return real(self, training, step_done, steps_of_pass)
    engine.GCNMultiLabelMAPEngine.step_boundary = step_boundary


if __name__ == '__main__':
    if os.environ.get('MSRN_TEST_SIGNAL'):
        arm(os.environ['MSRN_TEST_SIGNAL'])
    sys.exit(run.main(voc.DATASET, sys.argv[1:]))

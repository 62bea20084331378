"""Stopping a training run cleanly when a cluster takes the machine, or a person at a terminal
presses Ctrl-C (docs/training.md, "Clusters").

Within ``handling``, SIGTERM, the requeue signal (SLURM's ``--signal=USR1@120``: SIGUSR1 unless
``--requeue-signal`` says another) and the first SIGINT only set a flag; the engine looks at it at
the next step boundary, where every process agrees, rank 0 writes a checkpoint, and each process
stops with ``errors.Stopped``. A second SIGINT stops at once (KeyboardInterrupt). Under SLURM,
after the requeue signal, rank 0 asks SLURM to queue the job again (``requeue_job``).
"""
import contextlib
import os
import signal
import subprocess
import threading

EXIT_STOPPED = 75      # EX_TEMPFAIL: stopped by a signal with its checkpoint written; run the command again
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


class StopRequest:
    """What the signal handlers noted: ``signal_name`` of the first signal (None: none yet), and
    whether it was the requeue signal."""

    def __init__(self):
        self.signal_name, self.requeue = None, False

    @property
    def requested(self):
        return self.signal_name is not None

    @property
    def exit_code(self):
        return EXIT_INTERRUPTED if self.signal_name == 'SIGINT' else EXIT_STOPPED


@contextlib.contextmanager
def handling(requeue_signal='USR1'):
    """Yield a ``StopRequest`` that SIGTERM, SIG``requeue_signal`` and SIGINT set instead of
    stopping the process; a second SIGINT raises KeyboardInterrupt. Outside the main thread
    (where Python cannot handle signals) the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    requeue = signal.Signals[f'SIG{requeue_signal}']

    def note(signum, _frame):
        if signum == signal.SIGINT and request.signal_name == 'SIGINT':
            raise KeyboardInterrupt   # the second Ctrl-C: at once
        if request.signal_name is None:   # printing here could re-enter a write to stderr: the engine says it
            request.signal_name, request.requeue = signal.Signals(signum).name, signum == requeue
    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, requeue, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def slurm_job(environ=os.environ):
    """The SLURM job this process runs in (``array-job_task`` for an array task), or None."""
    if 'SLURM_JOB_ID' not in environ:
        return None
    if environ.get('SLURM_ARRAY_JOB_ID') and environ.get('SLURM_ARRAY_TASK_ID'):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ['SLURM_JOB_ID']


def requeue_job():
    """``scontrol requeue`` this SLURM job; returns what happened, in words (None outside SLURM)."""
    job = slurm_job()
    if job is None:
        return None
    try:
        result = subprocess.run(['scontrol', 'requeue', job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f'scontrol requeue {job} failed ({e}): resubmit the job'
    if result.returncode:
        why = (result.stderr.strip().splitlines() or [f'exit code {result.returncode}'])[-1]
        return f'scontrol requeue {job} failed ({why}): resubmit the job'
    return f'SLURM job {job} requeued'

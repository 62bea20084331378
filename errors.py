"""The project's own errors: bad input that the user can fix, reported as one line without a traceback.

Every error here derives from ``MSRNError``; the entry scripts (``guarded``) print ``e.line``
after ``error:`` and exit with code 2. Anything else is a bug or a library fault and keeps its
full traceback.
"""
import re
import sys
import traceback

import torch


class MSRNError(Exception):
    """Bad input the user can fix: the message is one line that says what is wrong and what to do."""

    @property
    def line(self):
        """The one-line message, also after a DataLoader worker re-raised this error: PyTorch then
        builds a new one whose message holds the worker's traceback, ending with our line."""
        text = str(self).strip()
        if '\n' not in text:
            return text or type(self).__name__
        return re.sub(r'^[\w.]+Error: ', '', text.splitlines()[-1])


class DatasetError(MSRNError, ValueError):
    """A dataset, label file or download is missing, malformed or fails verification."""


class CheckpointError(MSRNError, ValueError):
    """A checkpoint or weight file cannot be read or does not fit the model."""


class UsageError(MSRNError, ValueError):
    """Command-line settings that cannot work together (or on this machine)."""


class SaveError(MSRNError, RuntimeError):
    """A file of the save folder cannot be written (no space left, no permission, a read-only file system)."""


class DistributedError(MSRNError, RuntimeError):
    """The processes of a torchrun job cannot join one another."""


class Stopped(MSRNError):
    """Training stopped early on request (a signal, Ctrl-C), its checkpoint written: ``exit_code``
    says how (preemption.EXIT_STOPPED, EXIT_INTERRUPTED)."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLossError(MSRNError, RuntimeError):
    """The training loss became NaN or infinite; training stops."""


class NonFiniteOutputError(MSRNError, RuntimeError):
    """The model gave NaN or infinite scores on evaluation images."""


def guarded(action, *args):
    """Run ``action(*args)`` for an entry script; returns its exit code. Bad input (the project's own
    errors) becomes one line on stderr and exit code 2; anything else is a bug and keeps its
    traceback (exit code 1)."""
    try:
        action(*args)
        return 0
    except Stopped as e:   # one write: the lines of processes sharing a terminal stay whole
        print(f'{e.line}\n', end='', file=sys.stderr, flush=True)
        return e.exit_code
    except MSRNError as e:
        print(f'error: {e.line}\n', end='', file=sys.stderr, flush=True)
        return 2
    except torch.cuda.OutOfMemoryError:
        traceback.print_exc()
        print('hint: the GPU ran out of memory; try a smaller --batch-size (-b) or --image-size', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130

"""Writing checkpoint files atomically (reading them: ``models.load_checkpoint``).

A checkpoint is a dict with the official keys, which the official code reads too:
``epoch`` (completed epochs), ``arch``, ``state_dict`` (bare model, no ``module.`` prefix),
``best_score`` (best mAP in percent); plus ours, absent from released checkpoints:
``optimizer``, ``scaler`` (GradScaler), ``rng`` (:func:`util.get_rng_state`), ``args`` (a dict).
Everything is tensors and plain containers, so ``torch.load(weights_only=True)`` reads it.
"""
import os
import shutil

import torch

CHECKPOINT_NAME = 'checkpoint.pth.tar'
BEST_NAME = 'model_best.pth.tar'


def atomic_write(path, write):
    """Call ``write(tmp_path)``, then rename onto ``path``: a crash leaves the old file intact."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state, is_best, save_dir):
    """Write ``save_dir/checkpoint.pth.tar`` and, when ``is_best``, ``model_best.pth.tar``; return the path."""
    path = os.path.join(save_dir, CHECKPOINT_NAME)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    if is_best:
        atomic_write(os.path.join(save_dir, BEST_NAME), lambda tmp: shutil.copyfile(path, tmp))
    return path

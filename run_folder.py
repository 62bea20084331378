"""The save folder of a run (``--save-dir``) and everything written into it: checkpoints, eval JSONs,
``log.jsonl``, ``curves.png``, TensorBoard events (the list, for users: docs/training.md, "The save folder").

Every file is written to a temporary name and renamed, so a crash or a full disk leaves the
previous version whole; a write that fails (no space left, no permission, a read-only file
system) stops the run with a ``SaveError`` that names the file and what is still intact. A new run
never writes over another run's files (:func:`held_run`, :func:`remove_run`).
"""
import contextlib
import fnmatch
import json
import os
import shutil
import socket

import numpy as np
import torch

from checkpoint import TEMPORARY, atomic_write
from errors import SaveError, UsageError
from report import class_names_or_indices

CHECKPOINT_NAME = 'checkpoint.pth.tar'
BEST_NAME = 'model_best.pth.tar'
LOG_NAME = 'log.jsonl'
CURVES_NAME = 'curves.png'
GRAPH_NAME = 'label_graph.npz'  # your own data: the label graph built from the training labels
# A folder holds a run when it holds one of these; --overwrite removes every file a run writes.
RUN_MARKERS = (CHECKPOINT_NAME, BEST_NAME, LOG_NAME, 'eval_epoch*.json')
RUN_FILES = (CHECKPOINT_NAME, BEST_NAME, LOG_NAME, CURVES_NAME, GRAPH_NAME, 'eval_*.json', 'eval_*.html',
             'thresholds*.json', 'events.out.tfevents.*', '*.tmp-*')


class RunFolder:
    """Writes a run's files into ``path``; ``path`` None writes nothing (tests, other ranks)."""

    def __init__(self, path):
        self.path = path
        self.saved_epoch = None  # the epoch of the last checkpoint this process wrote
        self.tensorboard = None  # the SummaryWriter, once open_tensorboard is called

    def __bool__(self):
        return self.path is not None

    def file(self, name):
        return os.path.join(self.path, name)

    def save_checkpoint(self, state, best=None):
        """``state`` to ``checkpoint.pth.tar`` and, when given, ``best`` to ``model_best.pth.tar``."""
        self.write(CHECKPOINT_NAME, lambda tmp: _torch_save(tmp, state), size=_nbytes(state))
        self.saved_epoch = state['epoch']
        if best is not None:
            self.write(BEST_NAME, lambda tmp: _torch_save(tmp, best), size=_nbytes(best))

    def write_epoch(self, record, state, best, evaluation, scalars):
        """Everything an epoch leaves behind: the checkpoint ``state`` (and ``best``, when the epoch
        scored best: ``checkpoint.training_checkpoint``, ``best_checkpoint``), its eval JSON
        ``evaluation`` (:func:`eval_record`), its line of the log ``record`` and the curves, and the
        TensorBoard ``scalars`` (:func:`tensorboard_scalars`) when TensorBoard is open."""
        self.save_checkpoint(state, best)
        self.write_json(f"eval_epoch{record['epoch']:03d}.json", evaluation)
        self.log_epoch(record)
        if self.tensorboard is not None:
            self.write_tensorboard(record['epoch'], scalars)

    def write_json(self, name, obj):
        text = json.dumps(obj, indent=1, allow_nan=True, ensure_ascii=False)
        self.write(name, lambda tmp: _write_text(tmp, text), size=len(text))

    def write_graph(self, graph):
        """The label graph {adj, nums} as ``label_graph.npz``; returns its path."""
        def write(tmp):
            with open(tmp, 'wb') as f:  # a file object: np.savez would add .npz to a temporary name
                np.savez(f, **graph)
        self.write(GRAPH_NAME, write)
        return self.file(GRAPH_NAME)

    def write(self, name, write, size=None):
        """``write(tmp_path)``, then rename onto ``name``; an OSError becomes a SaveError that names the
        file, the cause, the size needed (``size`` in bytes, when known) and what is intact."""
        path = self.file(name)
        try:
            atomic_write(path, write)
        except (OSError, RuntimeError) as error:
            e = error if isinstance(error, OSError) else error.__context__  # torch.save wraps the OSError
            if not isinstance(e, OSError):
                raise
            needed = ''
            if size:
                free = shutil.disk_usage(self.path).free if os.path.isdir(self.path) else None
                needed = f' (it needs about {_megabytes(size)}' + (f', {_megabytes(free)} free)' if free is not None
                                                                   else ')')
            raise SaveError(f'cannot write {path}: {e.strerror or e}{needed}; {self._intact()}') from e

    def _intact(self):
        checkpoint = self.file(CHECKPOINT_NAME)
        if self.saved_epoch is not None:
            return (f'the last complete checkpoint, {checkpoint} (epoch {self.saved_epoch}), is intact: free space '
                    'or choose another --save-dir, then --resume it')
        if os.path.isfile(checkpoint):
            return (f'{checkpoint} is intact as it was: free space or choose another --save-dir, then --resume it')
        return 'no checkpoint was written yet: free space or choose another --save-dir, then start again'

    def log(self):
        """The log's records, oldest first."""
        path = self.file(LOG_NAME)
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_log(self, epochs_done):
        """Keep the log's first ``epochs_done`` epochs (a resumed run rewrites the later ones)."""
        kept = [r for r in self.log() if r['epoch'] <= epochs_done]
        if kept or os.path.exists(self.file(LOG_NAME)):
            self._write_log(kept)

    def log_epoch(self, record):
        """Add one epoch's line to ``log.jsonl`` and redraw ``curves.png``. The log is rewritten, not
        appended to, so that a crash or a full disk half-way leaves the previous log whole (it holds
        one short line per epoch)."""
        records = self.log() + [record]
        self._write_log(records)
        self.plot_curves(records)

    def _write_log(self, records):
        text = ''.join(json.dumps(r) + '\n' for r in records)
        self.write(LOG_NAME, lambda tmp: _write_text(tmp, text), size=len(text))

    def plot_curves(self, log):
        """Loss and mAP per epoch, train and validation (and the EMA's), from the log's records."""
        import matplotlib
        matplotlib.use('Agg')  # files only, no display (servers, CI)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        epochs = [r['epoch'] for r in log]
        fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
        for split in ('train', 'val', 'ema_val'):
            if all(f'{split}_mAP' in r for r in log):  # 'ema_val': runs with --ema-decay
                ax_loss.plot(epochs, [r[f'{split}_loss'] for r in log], 'o-', label=split.replace('_', ' '))
                ax_map.plot(epochs, [r[f'{split}_mAP'] for r in log], 'o-', label=split.replace('_', ' '))
        ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
        ax_map.set(xlabel='epoch', ylabel='mAP (%)', title='mAP')
        for ax in (ax_loss, ax_map):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
        fig.tight_layout()
        try:
            self.write(CURVES_NAME, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
        finally:
            plt.close(fig)

    def open_tensorboard(self, settings=None, purge_step=1):
        """Start writing TensorBoard events into the folder (the folder is one run). ``purge_step``:
        the first epoch this run writes; TensorBoard hides the events an earlier run wrote at that
        step and later ones, which this run writes anew (a resume). ``settings``: shown as text.
        Unlike the other files, event files are appended to: a crash loses the epoch not yet flushed."""
        try:
            from torch.utils.tensorboard import SummaryWriter  # only runs that write events need the package
        except ImportError as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f'cannot import TensorBoard ({first_line}): pip install tensorboard, '
                             'or pass --no-tensorboard') from e
        with self._tensorboard_errors():
            self.tensorboard = SummaryWriter(self.path, purge_step=purge_step)
            if settings:
                self.tensorboard.add_text('settings', settings_table(settings), purge_step)

    def write_tensorboard(self, step, scalars):
        """Add ``scalars`` ({tag: value}, :func:`tensorboard_scalars`) at ``step`` and flush, so that
        TensorBoard shows each epoch as it ends."""
        with self._tensorboard_errors():
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step)
            self.tensorboard.flush()

    def close_tensorboard(self):
        if self.tensorboard is not None:
            with self._tensorboard_errors():
                self.tensorboard.close()
            self.tensorboard = None

    @contextlib.contextmanager
    def _tensorboard_errors(self):
        """An OSError of TensorBoard's writer (a full disk) becomes a SaveError. The writer is then
        dropped unclosed: closing it would only raise the same error again."""
        try:
            yield
        except OSError as e:
            self.tensorboard = None
            raise SaveError(f'cannot write TensorBoard events in {self.path}: {e.strerror or e}; '
                            f'{self._intact()}') from e


def tensorboard_scalars(record, lr_names, val=None, ema_val=None, class_names=None):
    """An epoch's TensorBoard scalars {tag: value}. From its log record: ``train/loss``, ``train/mAP``,
    ``val/loss``, ``val/mAP`` (``val_ema/...`` for the weight average), ``lr/<group>`` (``lr_names``),
    ``time/epoch_s``, ``time/train_s``. From the validations' :func:`metrics.evaluate` dicts, when
    given: ``val/OP`` ... ``val/CF1`` (logit >= 0), ``val_sweep/OP`` ... (the official sweep) and its
    ``val_sweep/threshold``, ``val_ap/<class>`` (a class without positive has none), the same under
    ``val_ema``. Percent, as printed."""
    scalars = {'train/loss': record['train_loss'], 'train/mAP': record['train_mAP'],
               'val/loss': record['val_loss'], 'val/mAP': record['val_mAP']}
    if 'ema_val_mAP' in record:
        scalars.update({'val_ema/loss': record['ema_val_loss'], 'val_ema/mAP': record['ema_val_mAP']})
    scalars.update({f'lr/{name}': lr for name, lr in zip(lr_names, record['lr'])})
    scalars.update({'time/epoch_s': record['time_s'], 'time/train_s': record['train_time_s']})
    for split, result in (('val', val), ('val_ema', ema_val)):
        if result is None:
            continue
        sweep = result['official_sweep']
        scalars.update({f'{split}/{k}': v for k, v in result['fixed'].items()})
        scalars.update({f'{split}_sweep/{k}': v for k, v in sweep.items() if v is not None})
        names = class_names_or_indices(class_names, len(result['ap']))
        scalars.update({f'{split}_ap/{name}': 100 * ap for name, ap in zip(names, result['ap']) if ap is not None})
    return scalars


def settings_table(settings):
    """A run's settings ({name: value}) as a Markdown table, which TensorBoard's text tab renders."""
    rows = ['| setting | value |', '|---|---|']
    for name, value in sorted(settings.items()):
        cell = str(value).replace('|', r'\|')  # a bare '|' would end the cell
        rows.append(f'| {name} | {cell} |')
    return '\n'.join(rows)


def _torch_save(path, obj):
    with open(path, 'wb') as f:  # through Python's file: a failed write leaves its OSError in the context
        torch.save(obj, f)


def _write_text(path, text):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def _nbytes(obj):
    """Bytes of the tensors in a (nested) checkpoint dict: about its size on disk."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _megabytes(size):
    return f'{size / 1e6:.1f} MB' if size < 1e9 else f'{size / 1e9:.2f} GB'


def _matching(path, patterns):
    names = os.listdir(path) if os.path.isdir(path) else []
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def held_run(path):
    """What ``path`` holds of a run ('epoch 5, best mAP 69.7', or its files), or None when no run."""
    if not _matching(path, RUN_MARKERS):
        return None
    try:
        last = RunFolder(path).log()[-1]
        return f"epoch {last['epoch']}, best mAP {last['best_mAP']:.1f}"
    except (IndexError, KeyError, ValueError, TypeError):  # no log, or not one of ours
        return ', '.join(_matching(path, RUN_MARKERS))


def remove_stale_temporaries(path):
    """Delete the partial files (``atomic_write``'s temporaries) that processes of this machine left
    in ``path`` when they were killed while writing; never one of a live process, nor of another
    machine. Returns their names."""
    host, removed = socket.gethostname(), []
    for name in _matching(path, ('*.tmp-*',)):
        match = TEMPORARY.search(name)
        if match and match['host'] == host and not _alive(int(match['pid'])):
            os.remove(os.path.join(path, name))
            removed.append(name)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def remove_run(path):
    """Delete every file that a run writes into ``path`` (nothing else); returns their names."""
    removed = _matching(path, RUN_FILES)
    for name in removed:
        os.remove(os.path.join(path, name))
    return removed


def eval_record(result, class_names, **extra):
    """The eval JSON of :func:`metrics.evaluate`'s dict: every figure, plus the per-class AP table
    (percent, None without positive). ``class_names`` None: the class indices."""
    names = class_names_or_indices(class_names, len(result['ap']))
    per_class = [{'class': name, 'ap': None if ap is None else 100 * ap} for name, ap in zip(names, result['ap'])]
    record = {k: v for k, v in result.items() if k != 'ap'}
    return dict(extra, **record, per_class_ap=per_class,
                classes_without_positive=[r['class'] for r in per_class if r['ap'] is None])

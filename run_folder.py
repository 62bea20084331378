"""The save folder of a run (``--save-dir``) and everything written into it: checkpoints, eval JSONs,
``log.jsonl``, ``curves.png``, TensorBoard events (the list, for users: docs/training.md, "The save folder").

Every file is written to a temporary name and renamed, so a crash or a full disk leaves the
previous version whole.
"""
import json
import os

import matplotlib

matplotlib.use('Agg')  # files only, no display (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from checkpoint import atomic_write  # noqa: E402
from errors import UsageError  # noqa: E402

CHECKPOINT_NAME = 'checkpoint.pth.tar'
BEST_NAME = 'model_best.pth.tar'
LOG_NAME = 'log.jsonl'
CURVES_NAME = 'curves.png'


class RunFolder:
    """Writes a run's files into ``path``; ``path`` None writes nothing (tests, other ranks)."""

    def __init__(self, path):
        self.path = path
        self.tensorboard = None  # the SummaryWriter, once open_tensorboard is called

    def __bool__(self):
        return self.path is not None

    def file(self, name):
        return os.path.join(self.path, name)

    def save_checkpoint(self, state, best=None):
        """``state`` to ``checkpoint.pth.tar`` and, when given, ``best`` to ``model_best.pth.tar``."""
        atomic_write(self.file(CHECKPOINT_NAME), lambda tmp: torch.save(state, tmp))
        if best is not None:
            atomic_write(self.file(BEST_NAME), lambda tmp: torch.save(best, tmp))

    def write_eval(self, name, record):
        """An eval JSON (:func:`eval_record`)."""
        write_json(self.file(name), record)

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
        self._write_log(self.log() + [record])
        self.plot_curves()

    def _write_log(self, records):
        def write(tmp):
            with open(tmp, 'w') as f:
                f.writelines(json.dumps(r) + '\n' for r in records)
        atomic_write(self.file(LOG_NAME), write)

    def plot_curves(self):
        """Loss and mAP per epoch, train and validation (and the EMA's), from the log."""
        log = self.log()
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
        atomic_write(self.file(CURVES_NAME), lambda tmp: fig.savefig(tmp, format='png', dpi=100))
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
        self.tensorboard = SummaryWriter(self.path, purge_step=purge_step)
        if settings:
            self.tensorboard.add_text('settings', settings_table(settings), purge_step)

    def write_tensorboard(self, step, scalars):
        """Add ``scalars`` ({tag: value}, :func:`tensorboard_scalars`) at ``step`` and flush, so that
        TensorBoard shows each epoch as it ends."""
        for tag, value in scalars.items():
            self.tensorboard.add_scalar(tag, value, step)
        self.tensorboard.flush()

    def close_tensorboard(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


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
        names = class_names or [str(i) for i in range(len(result['ap']))]
        scalars.update({f'{split}_ap/{name}': 100 * ap for name, ap in zip(names, result['ap']) if ap is not None})
    return scalars


def settings_table(settings):
    """A run's settings ({name: value}) as a Markdown table, which TensorBoard's text tab renders."""
    rows = ['| setting | value |', '|---|---|']
    for name, value in sorted(settings.items()):
        cell = str(value).replace('|', r'\|')  # a bare '|' would end the cell
        rows.append(f'| {name} | {cell} |')
    return '\n'.join(rows)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, allow_nan=True)
    atomic_write(path, write)


def eval_record(result, class_names, **extra):
    """The eval JSON of :func:`metrics.evaluate`'s dict: every figure, plus the per-class AP table
    (percent, None without positive). ``class_names`` None: the class indices."""
    class_names = class_names or [str(i) for i in range(len(result['ap']))]
    per_class = [{'class': name, 'ap': None if ap is None else 100 * ap}
                 for name, ap in zip(class_names, result['ap'])]
    record = {k: v for k, v in result.items() if k != 'ap'}
    return dict(extra, **record, per_class_ap=per_class,
                classes_without_positive=[r['class'] for r in per_class if r['ap'] is None])

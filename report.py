"""What a run leaves for people: the printed eval summary, the eval JSON, the per-epoch log
(JSON lines) and the training-curve PNG. Files are written atomically."""
import json
import os

import matplotlib

matplotlib.use('Agg')  # files only, no display (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from checkpoint import atomic_write  # noqa: E402

LOG_NAME = 'log.jsonl'
CURVES_NAME = 'curves.png'


def _prf(m):
    return '  '.join(f'{k} {m[k]:6.2f}' for k in ('OP', 'OR', 'OF1', 'CP', 'CR', 'CF1'))


def format_summary(result, loss=None, label='Test'):
    """The eval summary printed after each evaluation, from :func:`metrics.evaluate`'s dict."""
    sweep, sweep3 = result['official_sweep'], result['official_sweep_top3']
    head = f"{label}: {result['num_samples']} images  mAP {result['mAP']:.3f}"
    if loss is not None:
        head += f'  loss {loss:.4f}'

    def t(v):  # the exact float is in the JSON; -0.7000000000000001 prints as -0.7
        return '  (threshold none)' if v is None else f'  (threshold {v:.1f})'
    return '\n'.join([
        head,
        f"  logit >= 0            {_prf(result['fixed'])}",
        f"  logit >= 0, top-3     {_prf(result['fixed_top3'])}",
        f"  official sweep        {_prf(sweep)}{t(sweep['threshold'])}",
        f"  official sweep, top-3 {_prf(sweep3)}{t(sweep3['threshold'])}",
        f"  coverage error {result['coverage_error']:.4f}  LRAP {result['lrap']:.4f}  "
        f"ranking loss {result['ranking_loss']:.4f}",
    ])


def write_json(path, obj):
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, allow_nan=True)
    atomic_write(path, write)


def eval_record(result, class_names, **extra):
    """The eval JSON: every figure, plus the per-class AP table (percent, None without positive).
    ``class_names`` None: the class indices."""
    class_names = class_names or [str(i) for i in range(len(result['ap']))]
    per_class = [{'class': name, 'ap': None if ap is None else 100 * ap}
                 for name, ap in zip(class_names, result['ap'])]
    record = {k: v for k, v in result.items() if k != 'ap'}
    return dict(extra, **record, per_class_ap=per_class,
                classes_without_positive=[r['class'] for r in per_class if r['ap'] is None])


def read_log(save_dir):
    path = os.path.join(save_dir, LOG_NAME)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_log(save_dir, records):
    def write(tmp):
        with open(tmp, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in records)
    atomic_write(os.path.join(save_dir, LOG_NAME), write)


def truncate_log(save_dir, epochs_done):
    """Keep the log's first ``epochs_done`` epochs (a resumed run rewrites the later ones)."""
    kept = [r for r in read_log(save_dir) if r['epoch'] <= epochs_done]
    if kept or os.path.exists(os.path.join(save_dir, LOG_NAME)):
        _write_log(save_dir, kept)


def append_log(save_dir, record):
    """Add one epoch's line. The file is rewritten, not appended to, so that a crash or a full
    disk half-way leaves the previous log whole (it holds one short line per epoch)."""
    _write_log(save_dir, read_log(save_dir) + [record])


def plot_curves(save_dir):
    """Loss and mAP per epoch, train and validation (and the EMA's), from the log, to ``curves.png``."""
    log = read_log(save_dir)
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
    atomic_write(os.path.join(save_dir, CURVES_NAME), lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)

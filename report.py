"""What a run prints: the evaluation summary, the per-class AP table and the line that ends each epoch.
Its words are the names of the log and TensorBoard (docs/training.md, "What the printed names are")."""

MAX_NAMES = 20  # classes named in the summary's no-positive line; the per-class table lists them all


def _prf(m):
    return '  '.join(f'{k} {m[k]:6.2f}' for k in ('OP', 'OR', 'OF1', 'CP', 'CR', 'CF1'))


def class_names_or_indices(class_names, count):
    """The classes' names: ``class_names``, or when None their indices '0', '1', ... (``count`` classes)."""
    return list(class_names) if class_names is not None else [str(i) for i in range(count)]


def format_summary(result, loss=None, label='val', class_names=None):
    """The eval summary printed after each evaluation, from :func:`metrics.evaluate`'s dict. ``label``:
    the evaluated split's name (and the weights'); ``class_names`` name the classes without positive."""
    sweep, sweep3 = result['official_sweep'], result['official_sweep_top3']
    head = f"{label}: {result['num_samples']} images  mAP {result['mAP']:.3f}"
    if loss is not None:
        head += f'  loss {loss:.4f}'

    def t(v):  # the exact float is in the JSON; -0.7000000000000001 prints as -0.7
        return '  (threshold none)' if v is None else f'  (logit threshold {v:.1f})'
    lines = [
        head,
        f"  logit >= 0            {_prf(result['fixed'])}",
        f"  logit >= 0, top-3     {_prf(result['fixed_top3'])}",
        f"  official sweep        {_prf(sweep)}{t(sweep['threshold'])}",
        f"  official sweep, top-3 {_prf(sweep3)}{t(sweep3['threshold'])}",
        f"  coverage error {result['coverage_error']:.4f}  LRAP {result['lrap']:.4f}  "
        f"ranking loss {result['ranking_loss']:.4f}",
    ]
    names = class_names_or_indices(class_names, len(result['ap']))
    missing = [name for name, ap in zip(names, result['ap']) if ap is None]
    if missing:
        more = f' and {len(missing) - MAX_NAMES} more' if len(missing) > MAX_NAMES else ''
        lines.append(f"  no positive image: {', '.join(missing[:MAX_NAMES])}{more} (left out of mAP, CP and CR)")
    return '\n'.join(lines)


def format_class_ap(ap, class_names=None, title='per-class AP'):
    """The per-class AP table: ``title`` then one line per class, AP in percent (``ap``: fractions,
    None for a class without positive image, as :func:`metrics.evaluate` gives them)."""
    names = class_names_or_indices(class_names, len(ap))
    width = max(map(len, names), default=0)
    rows = [f"  {name:<{width}}  {'     -  no positive image' if value is None else f'{100 * value:6.2f}'}"
            for name, value in zip(names, ap)]
    return '\n'.join([f'{title}:', *rows])


def format_thresholded(figures, source):
    """The summary line of OP ... CF1 with per-class probability thresholds (``source``: where from)."""
    return f'  per-class thresholds  {_prf(figures)}  (probability thresholds {source})'


def format_epoch_line(record, max_epochs, lr_names, loss_name=None, best_from=None):
    """The line that ends an epoch, from its log record (``run_folder``'s log.jsonl fields);
    ``lr_names``: the optimizer groups' names, in the order of ``record['lr']``; ``best_from`` 'ema'
    when the weight average just became the best."""
    lrs = ' '.join(f'{name} {lr:g}' for name, lr in zip(lr_names, record['lr']))
    ema_part = f"  val (EMA) mAP {record['ema_val_mAP']:.3f}" if 'ema_val_mAP' in record else ''
    best_part = ' (EMA weights)' if best_from == 'ema' else ''
    return (f"Epoch {record['epoch']}/{max_epochs}  lr {lrs}  "
            f"train loss{f' ({loss_name})' if loss_name else ''} {record['train_loss']:.4f} "
            f"mAP {record['train_mAP']:.2f}  "
            f"val loss {record['val_loss']:.4f} mAP {record['val_mAP']:.3f}{ema_part}  "
            f"best {record['best_mAP']:.3f}{best_part}  {record['time_s']:.1f}s")

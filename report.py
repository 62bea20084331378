"""What a run prints: the evaluation summary and the line that ends each epoch."""


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


def format_epoch_line(record, max_epochs, loss_name=None, best_from=None):
    """The line that ends an epoch, from its log record (``run_folder``'s log.jsonl fields);
    ``best_from`` 'ema' when the weight average just became the best."""
    ema_part = f" EMA mAP {record['ema_val_mAP']:.3f}" if 'ema_val_mAP' in record else ''
    best_part = ' (EMA weights)' if best_from == 'ema' else ''
    return (f"Epoch {record['epoch']}/{max_epochs}  lr {', '.join(f'{lr:g}' for lr in record['lr'])}  "
            f"train loss{f' ({loss_name})' if loss_name else ''} {record['train_loss']:.4f} "
            f"mAP {record['train_mAP']:.2f}  "
            f"val loss {record['val_loss']:.4f} mAP {record['val_mAP']:.3f}{ema_part}  "
            f"best {record['best_mAP']:.3f}{best_part}  {record['time_s']:.1f}s")

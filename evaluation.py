"""``-e``: evaluate the model once, print the summary and the per-class AP table, measure per-class
thresholds or calibrate new ones, and write the eval JSON (docs/evaluation.md, docs/using.md)."""
import math

import distributed
import metrics
import report
from run_folder import eval_record


def evaluate(engine, model, criterion, dataset, *, epoch, eval_name, thresholds=None, calibrate=None,
             thresholds_name=None, data=None, write_page=None):
    """Validate ``model`` on ``dataset`` with ``engine``; on rank 0 print the per-class AP, write the
    eval JSON ``eval_name`` into the engine's folder; return the mAP. ``epoch``: the checkpoint's, for
    the JSON. ``thresholds``: a thresholds.json to measure OP ... CF1 with. ``calibrate``: 'f1' or
    'precision=P': choose per-class thresholds on this split and write them as ``thresholds_name``.
    ``data``: the dataset folder, named in the thresholds file. ``write_page``:
    ``write_page(results, thresholds, label)`` writes the HTML page of the evaluation and returns
    its path (``run.build_report``)."""
    classes = engine.class_names
    given = metrics.read_thresholds(thresholds, classes)['thresholds'] if thresholds else None  # before the work
    results = engine.evaluate(model, criterion, dataset)
    if results.get('eval'):   # rank 0
        print(report.format_class_ap(results['eval']['ap'], classes, title=f'per-class AP, {engine.val_split}'))
        record = eval_record(results['eval'], classes, loss=results['loss'], epoch=epoch)
        if given is not None:
            record['per_class_thresholds'] = measure_thresholds(results, given, f'from {thresholds}',
                                                                engine.difficult_examples)
        if calibrate is not None:
            where = f"the {engine.val_split} split ({results['eval']['num_samples']} images)" + \
                (f' of {data}' if data else '')
            record['calibrated_thresholds'] = calibrate_thresholds(results, calibrate, engine, thresholds_name, where)
        if engine.folder:
            engine.folder.write_json(eval_name, record)
        if write_page is not None:
            print(f'=> the report page: {write_page(results, given, engine.val_split)}')
    distributed.barrier()  # every process returns once rank 0 has written its files
    return results['mAP']


def _percent_or_none(values):
    return [None if math.isnan(v) else 100 * v for v in values.tolist()]


def measure_thresholds(results, thresholds, source, difficult_examples):
    """OP ... CF1 with per-class probability thresholds, printed and returned for the eval JSON
    with each class's F1 (percent; None without a positive)."""
    scores, targets = results['scores'], results['targets']
    figures = metrics.thresholded_precision_recall(scores, targets, thresholds)
    print(report.format_thresholded(figures, source))
    f1 = metrics.per_class_f1(scores, targets, thresholds, difficult_examples)
    return dict(figures, unit='probability', thresholds=source, per_class_f1=_percent_or_none(f1))


def calibrate_thresholds(results, objective, engine, name, where):
    """Per-class probability thresholds for ``objective`` on this split (``where``, in words), written
    as ``name`` into the engine's folder; prints and returns what they give here (optimistic: chosen
    here)."""
    difficult = engine.difficult_examples
    calibration = metrics.calibrate_thresholds(results['scores'], results['targets'], objective, difficult)
    names = report.class_names_or_indices(engine.class_names, len(calibration.thresholds))
    if engine.folder:
        engine.folder.write_json(name, metrics.thresholds_record(calibration, names, where))
        print(f'=> per-class thresholds (probabilities) for {calibration.objective} on {where}: '
              f'{engine.folder.file(name)}')
    for label, kept in (('no positive image here', calibration.no_positive),
                        (f'{calibration.objective} not reached', calibration.unreachable)):
        if kept:
            print(f"   kept 0.5 ({label}): {', '.join(names[k] for k in kept)}")
    default_f1 = metrics.per_class_f1(results['scores'], results['targets'], metrics.DEFAULT_THRESHOLD, difficult)
    return dict(measure_thresholds(results, calibration.thresholds,
                                   f'calibrated for {calibration.objective} on this split: optimistic', difficult),
                file=name, per_class_f1_at_default=_percent_or_none(default_f1))

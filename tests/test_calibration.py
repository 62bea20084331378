"""Per-class probability thresholds (metrics.calibrate_thresholds and friends) against brute force."""
import csv
import json
import os
import re

import numpy as np
import pytest
import torch

import demo_custom_gcn
import metrics
import predict
from errors import DatasetError


def correlated_case(n=300, c=6, seed=0, difficult=0.1):
    """Logits that rank positives higher on average, ties included; targets in {1, 0, -1};
    class 0 without any positive, class 1 whose positives are all difficult."""
    rng = np.random.default_rng(seed)
    targets = np.where(rng.random((n, c)) < 0.3, 1, -1)
    targets[rng.random((n, c)) < difficult] = 0
    targets[:, 0] = -1
    targets[:, 1] = np.where(targets[:, 1] == 1, 0, targets[:, 1])
    scores = rng.normal(size=(n, c)) + 1.5 * (targets == 1) - 0.5
    scores[:, 2] = np.round(scores[:, 2] * 2) / 2   # many ties
    return torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(targets)


def counted_samples(scores, targets, k, difficult_examples):
    """Probabilities and positives of class k's counted samples, as Python lists."""
    prob = metrics.probabilities(scores)[:, k]
    labels = targets[:, k].numpy()
    keep = [i for i in range(len(labels)) if not (difficult_examples and labels[i] == 0)]
    return [prob[i] for i in keep], [labels[i] == 1 for i in keep]


def brute_force(prob, positive, t):
    """(hits, predicted, positives) of the rule 'probability >= t', one sample at a time."""
    hits = predicted = 0
    for p, pos in zip(prob, positive):
        if p >= t:
            predicted += 1
            hits += pos
    return hits, predicted, sum(positive)


@pytest.mark.parametrize('difficult_examples', [True, False])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_f1_thresholds_are_the_best_and_never_worse_than_half(seed, difficult_examples):
    scores, targets = correlated_case(seed=seed)
    result = metrics.calibrate_thresholds(scores, targets, 'f1', difficult_examples)
    calibrated = metrics.per_class_f1(scores, targets, result.thresholds, difficult_examples)
    default = metrics.per_class_f1(scores, targets, 0.5, difficult_examples)
    has_pos = ~torch.isnan(default)
    assert (calibrated[has_pos] >= default[has_pos]).all()
    assert (calibrated[has_pos] > default[has_pos]).any()   # the rule does change something here
    for k in np.flatnonzero(has_pos.numpy()):
        prob, positive = counted_samples(scores, targets, k, difficult_examples)
        best_f1, best_t = -1.0, None
        for t in sorted(set(prob), reverse=True):   # brute force; the first maximum is the highest t
            hits, predicted, n_pos = brute_force(prob, positive, t)
            f1 = 2 * hits / (predicted + n_pos)
            if f1 > best_f1:
                best_f1, best_t = f1, t
        assert result.thresholds[k] == best_t
        assert calibrated[k].item() == pytest.approx(best_f1, abs=1e-12)


@pytest.mark.parametrize('level', [0.5, 0.8, 0.95])
@pytest.mark.parametrize('difficult_examples', [True, False])
def test_precision_thresholds_are_the_lowest_reaching_the_level(level, difficult_examples):
    scores, targets = correlated_case(seed=3)
    result = metrics.calibrate_thresholds(scores, targets, ('precision', level), difficult_examples)
    assert result.objective == f'precision={level}'
    for k in range(scores.shape[1]):
        prob, positive = counted_samples(scores, targets, k, difficult_examples)
        if not any(positive):
            assert k in result.no_positive and result.thresholds[k] == 0.5
            continue
        reaching = [t for t in set(prob) if brute_force(prob, positive, t)[0] / brute_force(prob, positive, t)[1]
                    >= level]
        if not reaching:
            assert k in result.unreachable and result.thresholds[k] == 0.5
            continue
        assert result.thresholds[k] == min(reaching)
        hits, predicted, _ = brute_force(prob, positive, result.thresholds[k])
        assert hits / predicted >= level


def test_unreachable_precision_keeps_half_and_is_listed():
    # class 1: the best sample is a negative and so is every second one: precision <= 2/3 everywhere
    scores = torch.tensor([[3.0, 3.0], [2.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    targets = torch.tensor([[1, -1], [1, 1], [-1, -1], [1, 1]])
    result = metrics.calibrate_thresholds(scores, targets, 'precision=0.9')
    assert result.unreachable == [1] and result.no_positive == [] and result.kept_default == [1]
    assert result.thresholds[1] == 0.5
    assert result.thresholds[0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())


def test_thresholds_by_hand():
    # probabilities 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (+), 0.2 (-): F1 0.5, 0.4, 0.67, 0.86, 0.75
    p = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2], dtype=torch.float64)
    scores = torch.logit(p).float()[:, None]
    targets = torch.tensor([1, -1, 1, 1, -1])[:, None]
    at = {objective: metrics.calibrate_thresholds(scores, targets, objective).thresholds[0]
          for objective in ('f1', 'precision=0.75', 'precision=0.9', 'precision=0.7')}
    assert at == pytest.approx({'f1': 0.6, 'precision=0.75': 0.6, 'precision=0.9': 0.9, 'precision=0.7': 0.6})
    assert metrics.per_class_f1(scores, targets, [at['f1']]).item() == pytest.approx(6 / 7)


def test_a_class_without_positive_keeps_half():
    scores, targets = correlated_case(seed=4)
    for objective in ('f1', 'precision=0.6'):
        result = metrics.calibrate_thresholds(scores, targets, objective)
        assert result.no_positive == [0, 1]   # never positive; positive only when difficult
        assert list(result.thresholds[:2]) == [0.5, 0.5] and {0, 1} <= set(result.kept_default)
    counted_difficult = metrics.calibrate_thresholds(scores, targets, 'f1', difficult_examples=False)
    assert counted_difficult.no_positive == [0, 1]   # difficult samples are never positives
    assert metrics.calibrate_thresholds(torch.empty(0, 3), torch.empty(0, 3), 'f1').no_positive == [0, 1, 2]


def test_half_everywhere_is_the_fixed_logit_zero_rule_bit_for_bit():
    scores, targets = correlated_case(seed=5)
    scores[:6, 3] = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -1e-17, 100.0])   # sigmoid rounds these to 0.5 or 1
    for difficult_examples in (True, False):
        assert metrics.evaluate(scores, targets, difficult_examples)['fixed'] == \
            metrics.precision_recall(scores >= 0, targets == 1)
    assert torch.equal(metrics.predict(scores, 0.5), scores >= 0)
    assert metrics.thresholded_precision_recall(scores, targets, [0.5] * 6) == \
        metrics.precision_recall(scores >= 0, targets == 1)


def test_leaving_difficult_samples_out_of_the_figures():
    scores = torch.tensor([[2.0], [1.0], [-1.0]])
    targets = torch.tensor([[1], [0], [1]])
    counted = metrics.thresholded_precision_recall(scores, targets, [0.5], difficult_examples=False)
    left_out = metrics.thresholded_precision_recall(scores, targets, [0.5], difficult_examples=True)
    assert (counted['CP'], counted['CR']) == pytest.approx((50.0, 50.0))
    assert (left_out['CP'], left_out['CR']) == pytest.approx((100.0, 50.0))


@pytest.mark.parametrize('text,expected', [('f1', 'f1'), (' F1 ', 'f1'), ('precision=0.9', ('precision', 0.9)),
                                           ('precision = 1', ('precision', 1.0)),
                                           ('precision=5e-1', ('precision', 0.5))])
def test_parse_objective(text, expected):
    assert metrics.parse_objective(text) == expected


@pytest.mark.parametrize('text', ['recall=0.9', 'precision=0', 'precision=1.5', 'precision=abc', 'precision=',
                                  'precision=nan', '', 'f2'])
def test_a_bad_objective_is_a_one_line_value_error(text):
    with pytest.raises(ValueError, match=r"^threshold objective .* not understood: use 'f1' or 'precision=P'") as e:
        metrics.parse_objective(text)
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='not understood'):
        metrics.calibrate_thresholds(torch.zeros(2, 1), torch.ones(2, 1), text)


CLASSES = ['aeroplane', 'café', 'dog', 'traffic light', 'tree', 'umbrella']


def test_thresholds_json_round_trip(tmp_path):
    scores, targets = correlated_case(seed=6)
    result = metrics.calibrate_thresholds(scores, targets, 'precision=0.7')
    path = tmp_path / 'thresholds.json'
    record = metrics.thresholds_record(result, CLASSES, 'synthetic val split, 300 images')
    path.write_text(json.dumps(record, ensure_ascii=False), encoding='utf-8')
    raw = json.loads(path.read_text(encoding='utf-8'))
    assert raw['unit'] == 'probability' and raw['objective'] == 'precision=0.7'
    assert list(raw['thresholds']) == CLASSES and raw['kept_default'] == [CLASSES[k] for k in result.kept_default]
    read = metrics.read_thresholds(path, CLASSES[::-1])   # in the order the caller names the classes
    assert np.array_equal(read['thresholds'], result.thresholds[::-1])   # exact: JSON keeps every bit
    assert read['calibrated_on'] == 'synthetic val split, 300 images' and read['objective'] == 'precision=0.7'
    read_back = metrics.read_thresholds(path, CLASSES)['thresholds']
    torch.testing.assert_close(metrics.per_class_f1(scores, targets, read_back),
                               metrics.per_class_f1(scores, targets, result.thresholds), rtol=0, atol=0, equal_nan=True)


def write_json(path, thresholds, unit='probability'):
    path.write_text(json.dumps({'unit': unit, 'objective': 'f1', 'calibrated_on': '', 'thresholds': thresholds,
                                'kept_default': []}))
    return path


@pytest.mark.parametrize('thresholds,message', [
    ({'a': 0.5}, r"no threshold for 1 of the model's classes \('b'\); calibrate again"),
    ({'a': 0.5, 'b': 0.5, 'c': 0.1}, r"thresholds for 1 classes the model does not have \('c'\)"),
    ({'a': 0.5, 'b': 1.5}, r"the threshold of 'b' is 1.5; thresholds are probabilities in \[0, 1\]"),
    ({'a': -0.1, 'b': 0.5}, r"the threshold of 'a' is -0.1"),
    ({'a': 'high', 'b': 0.5}, r"the threshold of 'a' is 'high'"),
    ({'a': True, 'b': 0.5}, r"the threshold of 'a' is True"),
])
def test_reading_bad_thresholds_is_a_one_line_dataset_error(tmp_path, thresholds, message):
    path = write_json(tmp_path / 't.json', thresholds)
    with pytest.raises(DatasetError, match=message) as e:
        metrics.read_thresholds(path, ['a', 'b'])
    assert '\n' not in str(e.value) and str(path) in str(e.value)


def test_reading_a_file_that_is_not_thresholds(tmp_path):
    with pytest.raises(DatasetError, match='cannot read the thresholds file'):
        metrics.read_thresholds(tmp_path / 'missing.json', ['a'])
    (tmp_path / 'bad.json').write_text('{"unit": ')
    with pytest.raises(DatasetError, match='cannot read the thresholds file'):
        metrics.read_thresholds(tmp_path / 'bad.json', ['a'])
    with pytest.raises(DatasetError, match='not a thresholds file'):
        metrics.read_thresholds(write_json(tmp_path / 'logit.json', {'a': 0.0}, unit='logit'), ['a'])
    assert metrics.read_thresholds(write_json(tmp_path / 'ok.json', {'a': 0, 'b': 1}), ['a', 'b'])['thresholds'] \
        .tolist() == [0.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Through the command line: calibrate on one split, measure on another, predict with the file

def test_calibrate_on_val_measure_on_test_and_predict_with_the_thresholds(custom_run, tmp_path, capsys):
    info, save, _ = custom_run
    best = str(save / 'model_best.pth.tar')
    flags = ['-j', '0', '--device', 'cpu', '--save-dir', str(tmp_path)]
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, ['-e', '--resume', best, '--calibrate', 'f1', *flags]) == 0
    out = capsys.readouterr().out
    thresholds = json.loads((tmp_path / 'thresholds.json').read_text(encoding='utf-8'))
    assert thresholds['unit'] == 'probability' and thresholds['objective'] == 'f1'
    assert thresholds['calibrated_on'].startswith('the val split (12 images)')
    assert sorted(thresholds['thresholds']) == sorted(info['classes'])
    assert '=> per-class thresholds (probabilities) for f1 on the val split (12 images)' in out
    assert 'per-class thresholds' in out and 'calibrated for f1 on this split: optimistic' in out
    assert '(logit threshold ' in out   # the official sweep's threshold names its unit
    calibrated = json.loads((tmp_path / 'eval_model_best.json').read_text())['calibrated_thresholds']
    for tuned, default in zip(calibrated['per_class_f1'], calibrated['per_class_f1_at_default']):
        assert (tuned is None) == (default is None) and (tuned is None or tuned >= default)   # by construction
    assert calibrated['file'] == 'thresholds.json' and calibrated['unit'] == 'probability'

    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, ['-e', '--resume', best, '--split', 'test', '--thresholds',
                                                          str(tmp_path / 'thresholds.json'), *flags]) == 0
    out = capsys.readouterr().out
    measured = json.loads((tmp_path / 'eval_model_best_test.json').read_text())
    assert measured['num_samples'] == 12 and 'calibrated_thresholds' not in measured
    assert measured['per_class_thresholds']['thresholds'] == f"from {tmp_path / 'thresholds.json'}"
    assert re.search(r'^test: 12 images  mAP', out, re.M) and 'per-class thresholds ' in out

    images = [os.path.join(info['root'], 'images', 'test', f'{i:04d}.jpg') for i in range(12)]
    assert predict.main([*images, '--resume', best, '--thresholds', str(tmp_path / 'thresholds.json'), '--out',
                         str(tmp_path / 'labels.csv'), '-j', '0', '--device', 'cpu']) == 0
    with open(tmp_path / 'labels.csv', newline='', encoding='utf-8') as f:
        header, *rows = list(csv.reader(f))
    assert len(rows) == 12
    for row in rows:
        labels = set(filter(None, row[1].split('|')))
        for name, p in zip(header[2:], map(float, row[2:])):
            t = thresholds['thresholds'][name]
            if abs(p - t) > 1e-6:   # the CSV rounds to 6 digits
                assert (name in labels) == (p >= t), (row[0], name, p, t)


def test_calibration_flags_go_with_evaluation(custom_run, capsys):
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, [custom_run[0]['root'], '--calibrate', 'f1']) == 2
    assert capsys.readouterr().err == 'error: --calibrate goes with -e (an evaluation); add -e, or leave ' \
                                      '--calibrate out\n'
    with pytest.raises(SystemExit):
        demo_custom_gcn.main(demo_custom_gcn.DATASET, ['-e', '--calibrate', 'recall=0.9'])
    assert "threshold objective 'recall=0.9' not understood" in capsys.readouterr().err

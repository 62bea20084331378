import json
import math

import numpy as np
import pytest
import sklearn.metrics
import torch

import metrics
from tests.reference import average_precision_loop
from util import AveragePrecisionMeter, AverageValueMeter


def random_case(n, c, seed, ties=True):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randint(-3, 4, (n, c), generator=g).float() * 0.5 if ties
              else torch.randn(n, c, generator=g))
    scores[scores == 0] = -0.0 if seed % 2 else 0.0  # signed zeros tie with each other
    targets = torch.randint(-1, 2, (n, c), generator=g)
    if n:
        targets[:, 0] = -1  # a class without positive
        targets[:, -1] = torch.where(targets[:, -1] == 1, 0, targets[:, -1])  # only difficult and absent
    return scores, targets


def assert_same(a, b):
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)])  # bit for bit


@pytest.mark.parametrize('difficult', [True, False])
@pytest.mark.parametrize('n,c,seed,ties', [(60, 6, 0, True), (301, 9, 1, True), (500, 5, 2, False),
                                           (1, 3, 3, True), (2, 2, 4, True), (0, 3, 5, True)])
def test_vectorised_ap_equals_loop(n, c, seed, ties, difficult):
    scores, targets = random_case(n, c, seed, ties)
    assert_same(metrics.average_precision(scores, targets, difficult),
                average_precision_loop(scores, targets, difficult))


def test_ap_by_hand():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    targets = torch.tensor([[1], [-1], [1], [0]])
    # difficult dropped: +, -, + -> (1/1 + 2/3) / 2; kept as negative: the same (it ranks last)
    assert metrics.average_precision(scores, targets, True).item() == pytest.approx((1 + 2 / 3) / 2)
    targets = torch.tensor([[1], [0], [1], [-1]])
    assert metrics.average_precision(scores, targets, True).item() == pytest.approx(1.0)
    assert metrics.average_precision(scores, targets, False).item() == pytest.approx((1 + 2 / 3) / 2)


def plain_ap(labels, order, difficult_examples=True):
    """AP of one class by walking the images in ``order``: precision at each positive, averaged;
    difficult images (label 0) skipped when ``difficult_examples``. Python floats throughout."""
    hits = seen = 0
    precisions = []
    for i in order:
        if difficult_examples and labels[i] == 0:
            continue
        seen += 1
        if labels[i] == 1:
            hits += 1
            precisions.append(hits / seen)
    total = 0.0
    for p in precisions:
        total += p
    return total / hits if hits else float('nan')


def plain_ap_all(scores, targets, order_of, difficult_examples=True):
    """Per-class ``plain_ap`` [C], each class's images walked in ``order_of(its score column)``."""
    return torch.tensor([plain_ap(targets[:, k].tolist(), order_of(scores[:, k]), difficult_examples)
                         for k in range(scores.shape[1])], dtype=torch.float64)


def official_order(column):
    """Descending as the official meter sorts (torch's default, unstable: ties in any order)."""
    return torch.sort(column, descending=True).indices.tolist()


def image_order_among_ties(column):
    values = column.tolist()
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


@pytest.mark.parametrize('difficult', [True, False])
@pytest.mark.parametrize('n,c,seed', [(500, 5, 2), (1200, 7, 8), (3, 4, 9)])
def test_without_ties_ap_equals_the_official_algorithm_bit_for_bit(n, c, seed, difficult):
    scores, targets = random_case(n, c, seed, ties=False)
    assert all(len(set(scores[:, k].tolist())) == n for k in range(c)), 'the case must be tie-free'
    assert_same(metrics.average_precision(scores, targets, difficult),
                plain_ap_all(scores, targets, official_order, difficult))


@pytest.mark.parametrize('difficult', [True, False])
@pytest.mark.parametrize('n,c,seed', [(60, 6, 0), (301, 9, 1)])
def test_tied_scores_rank_in_image_order(n, c, seed, difficult):
    scores, targets = random_case(n, c, seed, ties=True)  # 7 distinct values, signed zeros
    expected = plain_ap_all(scores, targets, image_order_among_ties, difficult)
    assert_same(metrics.average_precision(scores, targets, difficult), expected)
    # the rule decides the values: the same images in reverse order, ties now broken the other way
    flipped = plain_ap_all(scores.flip(0), targets.flip(0), image_order_among_ties, difficult)
    assert not torch.equal(expected.nan_to_num(), flipped.nan_to_num())
    assert_same(metrics.average_precision(scores.flip(0), targets.flip(0), difficult), flipped)


def test_ties_keep_sample_order():
    scores = torch.zeros(2, 2)
    targets = torch.tensor([[-1, 1], [1, -1]])  # tied scores: the earlier sample ranks first
    assert metrics.average_precision(scores, targets).tolist() == [0.5, 1.0]


def test_class_without_positive_is_nan_and_left_out_of_map():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    targets = torch.tensor([[1, -1], [-1, 0]])
    ap = metrics.average_precision(scores, targets)
    assert ap[0] == 1.0 and math.isnan(ap[1])
    assert metrics.mean_average_precision(ap) == 100.0
    assert math.isnan(metrics.mean_average_precision(torch.tensor([float('nan')])))


def test_precision_recall_by_hand():
    predicted = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    positive = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 1, 0]], dtype=torch.bool)
    m = metrics.precision_recall(predicted, positive)
    # correct per class [1, 2, 0], predicted [2, 2, 0 -> 1], positives [1, 2, 1]
    assert m['OP'] == pytest.approx(100 * 3 / 5) and m['OR'] == pytest.approx(100 * 3 / 4)
    assert m['CP'] == pytest.approx(100 * (0.5 + 1 + 0) / 3) and m['CR'] == pytest.approx(100 * (1 + 1 + 0) / 3)
    assert m['CF1'] == pytest.approx(2 * m['CP'] * m['CR'] / (m['CP'] + m['CR']))
    nothing = metrics.precision_recall(torch.zeros(3, 3, dtype=torch.bool), positive)
    assert nothing['OF1'] == 0.0 and nothing['CF1'] == 0.0


def official_formula_sweep(scores, targets):
    """The official sweep written independently in numpy (every class has a positive here)."""
    gt = (targets == 1).astype(float)
    best, best_sum = None, 0.0
    for t in [x * 0.1 + -1 for x in range(20)]:
        pred = scores >= t
        nc, np_, ng = (gt * pred).sum(0), pred.sum(0).astype(float), gt.sum(0)
        np_[np_ == 0] = 1
        op, orc = nc.sum() / np_.sum(), nc.sum() / ng.sum()
        cp, cr = (nc / np_).mean(), (nc / ng).mean()
        of1, cf1 = 2 * op * orc / (op + orc), 2 * cp * cr / (cp + cr)
        if cf1 + of1 > best_sum:
            best, best_sum = (t, op, orc, of1, cp, cr, cf1), cf1 + of1
    return best


def test_official_sweep_matches_official_formula():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.6, (200, 7)).astype(np.float32)
    targets = np.where(rng.random((200, 7)) < 0.3, 1, -1)
    targets[rng.random((200, 7)) < 0.05] = 0
    got = metrics.official_sweep(torch.from_numpy(scores), torch.from_numpy(targets) == 1)
    t, *figures = official_formula_sweep(scores, targets)
    assert got['threshold'] == t
    assert [got[k] for k in ('OP', 'OR', 'OF1', 'CP', 'CR', 'CF1')] == pytest.approx([100 * f for f in figures])


def test_topk_and_evaluate():
    scores = torch.tensor([[3.0, 2.0, 1.0, -1.0, 0.5], [-2.0, -1.0, -0.5, -3.0, 4.0]])
    targets = torch.tensor([[1, -1, -1, 1, 1], [-1, 0, -1, -1, 1]])
    assert metrics.topk_mask(scores, 3).tolist() == [[True, True, True, False, False],
                                                     [False, True, True, False, True]]
    result = metrics.evaluate(scores, targets)
    json.dumps(result)  # JSON-ready
    # top-3 and logit >= 0: image 0 predicts classes 0, 1, 2; image 1 predicts class 4 only
    assert result['fixed_top3'] == metrics.precision_recall(
        torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool), targets == 1)
    y = (targets == 1).int().numpy()
    assert result['coverage_error'] == sklearn.metrics.coverage_error(y, scores.numpy())
    assert result['lrap'] == sklearn.metrics.label_ranking_average_precision_score(y, scores.numpy())
    assert result['ranking_loss'] == sklearn.metrics.label_ranking_loss(y, scores.numpy())
    assert result['ap'][1] is None and result['num_samples'] == 2


def test_average_value_meter():
    meter = AverageValueMeter()
    assert all(math.isnan(v) for v in meter.value())
    meter.add(2.0)
    assert meter.value() == (2.0, math.inf)
    for v in (4.0, 9.0):
        meter.add(v)
    mean, std = meter.value()
    assert mean == pytest.approx(5.0) and std == pytest.approx(np.std([2, 4, 9], ddof=1))
    meter.reset()
    assert meter.n == 0


def test_average_precision_meter_accumulates_batches():
    scores, targets = random_case(40, 4, 7, ties=False)
    meter = AveragePrecisionMeter(difficult_examples=True)
    for i in range(0, 40, 16):
        meter.add(scores[i:i + 16], targets[i:i + 16])
    assert_same(meter.value(), metrics.average_precision(scores, targets, True))
    with pytest.raises(ValueError):
        meter.add(torch.zeros(2, 3), torch.zeros(2, 3))
    meter.reset()
    assert meter.scores.numel() == 0

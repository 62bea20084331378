"""Multi-label metrics as pure, vectorised functions (definitions: docs/metrics.md).

Inputs everywhere: ``scores`` [N, C] raw logits (higher = more likely present) and ``targets``
[N, C] in {1, 0, -1} as the datasets give them: 1 present, -1 absent, 0 'difficult' (VOC).

- AP/mAP follow the official meter: per class, sort by score (descending; ties keep the order
  of a stable sort, i.e. sample order), drop difficult samples when ``difficult_examples``,
  average the precision at each positive. Without tied scores the values are the official ones
  bit for bit; with ties they may differ, since the official unstable sort ordered ties by
  chance. A class with no positive has no AP: it is NaN and left out of the mean (the official
  meter divided by zero there).
- OP/OR/OF1/CP/CR/CF1 count only label 1 as positive ({0, -1} negative), with the official
  formula (a class with no prediction counts one, giving it precision 0). ``fixed`` uses
  logit >= 0 (ML-GCN's rule); ``official_sweep`` reproduces the official MSRN quirk of picking,
  on the evaluated set itself, the threshold in -1.0, -0.9, ..., 0.9 that maximises CF1 + OF1.
- Per-class thresholds (:func:`calibrate_thresholds`) are probabilities, sigmoid of the logit:
  a class is predicted iff its probability >= its threshold, so 0.5 everywhere is the logit-0 rule.
- Percentages: mAP and OP..CF1 are in percent; coverage error, LRAP and ranking loss are
  scikit-learn's values; per-class F1 and AP are in [0, 1].
"""
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import sklearn.metrics
import torch

from errors import DatasetError, UsageError

# Built exactly as the official code builds them, so the float values (e.g. -0.7000000000000001) match.
OFFICIAL_THRESHOLDS = [x * 0.1 + -1 for x in range(20)]


def _as_tensors(scores, targets):
    return torch.as_tensor(scores).float(), torch.as_tensor(targets).long()


def _descending_order(scores):
    """Per-class sample order [C, N]: scores descending, ties by sample index (a stable sort).

    Sorts unique int64 keys (high half: an order-reversing integer image of the float32 score;
    low half: the index) with numpy's unstable SIMD sort, ~10x faster than a stable float sort.
    """
    s = np.ascontiguousarray(scores.T, dtype=np.float32)
    s += np.float32(0)  # -0.0 -> +0.0: a tie, as in a float sort
    bits = s.view(np.int32)
    # x >= 0 -> ~x and x < 0 -> x ^ INT32_MIN: decreasing in the float's value
    flip = bits >> 31
    np.invert(flip, out=flip)
    flip |= np.int32(-2 ** 31)
    flip ^= bits
    keys = flip.astype(np.int64) << 32
    keys |= np.arange(s.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    keys &= 0xFFFFFFFF
    return keys


def average_precision(scores, targets, difficult_examples=True):
    """Per-class AP (float64 [C], in [0, 1], NaN for a class without positive), all classes at once.

    Equal bit for bit to the official meter's plain loop (``tests/reference.py``,
    ``average_precision_loop``): same order, float64 divisions of the same counts, and the same
    sequential sum of the precisions at the positives.
    """
    scores, targets = _as_tensors(scores, targets)
    n, c = scores.shape
    ap = np.full(c, np.nan)
    if n == 0:
        return torch.from_numpy(ap)
    order = _descending_order(scores.numpy())  # (C, N)
    labels = np.take_along_axis(targets.numpy().T.astype(np.int8, order='C'), order, axis=1)
    positive = labels == 1  # (C, N), in score order
    counted = labels != 0 if difficult_examples else np.ones_like(positive)
    true_pos = positive.cumsum(1, dtype=np.int32)  # (C, N) positives seen so far
    seen = counted.cumsum(1, dtype=np.int32)  # (C, N) counted samples seen so far
    precisions = true_pos[positive] / seen[positive]  # (P,) float64, class-major
    n_pos = positive.sum(1)
    ends = np.cumsum(n_pos)
    for k in np.flatnonzero(n_pos):
        # accumulate, not sum: numpy's sum is pairwise, the loop's is sequential
        ap[k] = np.add.accumulate(precisions[ends[k] - n_pos[k]:ends[k]])[-1] / n_pos[k]
    return torch.from_numpy(ap)


def mean_average_precision(ap):
    """mAP in percent over the classes that have an AP (NaN when none has)."""
    ap = torch.as_tensor(ap, dtype=torch.float64)
    valid = ~torch.isnan(ap)
    return 100.0 * ap[valid].mean().item() if valid.any() else float('nan')


def _f1(p, r):
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def precision_recall(predicted, positive):
    """OP, OR, OF1, CP, CR, CF1 in percent from boolean [N, C] predictions and ground truth.

    Classes without a positive are left out of CP/CR (as from mAP); a class without prediction
    has precision 0 (official: its prediction count is taken as 1).
    """
    n_correct = (predicted & positive).sum(0).double()  # (C,)
    n_predicted = predicted.sum(0).double().clamp(min=1)  # (C,)
    n_positive = positive.sum(0).double()  # (C,)
    has_pos = n_positive > 0
    op = n_correct.sum().item() / n_predicted.sum().item()
    orc = n_correct.sum().item() / max(n_positive.sum().item(), 1.0)
    if has_pos.any():
        cp = (n_correct / n_predicted)[has_pos].mean().item()
        cr = (n_correct / n_positive.clamp(min=1))[has_pos].mean().item()
    else:
        cp = cr = 0.0
    return {'OP': 100 * op, 'OR': 100 * orc, 'OF1': 100 * _f1(op, orc),
            'CP': 100 * cp, 'CR': 100 * cr, 'CF1': 100 * _f1(cp, cr)}


def topk_mask(scores, k=3):
    """Boolean [N, C]: True at each image's k highest scores."""
    scores = torch.as_tensor(scores)
    idx = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return torch.zeros(scores.shape, dtype=torch.bool).scatter_(1, idx, True)


def official_sweep(scores, positive):
    """The official best-threshold search: the t in OFFICIAL_THRESHOLDS maximising CF1 + OF1
    (first maximum wins, as the official strict ``>``). Returns the figures plus 'threshold'
    (None if no threshold beats all-zero figures)."""
    best = {'OP': 0.0, 'OR': 0.0, 'OF1': 0.0, 'CP': 0.0, 'CR': 0.0, 'CF1': 0.0, 'threshold': None}
    for t in OFFICIAL_THRESHOLDS:
        m = precision_recall(scores >= t, positive)
        if m['CF1'] + m['OF1'] > best['CF1'] + best['OF1']:
            best = dict(m, threshold=t)
    return best


def evaluate(scores, targets, difficult_examples=True, k=3):
    """Every figure of the eval summary as a JSON-ready dict (see the module docstring)."""
    scores, targets = _as_tensors(scores, targets)
    ap = average_precision(scores, targets, difficult_examples)
    positive = targets == 1
    top = topk_mask(scores, k)
    # The official top-k sweep runs on a matrix of -1 everywhere and +-1 at the top k (sign of the logit).
    top_signed = torch.where(top, torch.where(scores >= 0, 1.0, -1.0), -1.0)
    y_true, y_score = positive.int().numpy(), scores.numpy()
    return {
        'num_samples': scores.shape[0],
        'mAP': mean_average_precision(ap),
        'ap': [None if np.isnan(a) else a for a in ap.tolist()],
        'fixed': thresholded_precision_recall(scores, targets, 0.5),
        f'fixed_top{k}': precision_recall(top & (scores >= 0), positive),
        'official_sweep': official_sweep(scores, positive),
        f'official_sweep_top{k}': official_sweep(top_signed, positive),
        'coverage_error': float(sklearn.metrics.coverage_error(y_true, y_score)),
        'lrap': float(sklearn.metrics.label_ranking_average_precision_score(y_true, y_score)),
        'ranking_loss': float(sklearn.metrics.label_ranking_loss(y_true, y_score)),
    }


# ---- per-class thresholds -------------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.5
_BELOW_HALF = float(np.nextafter(0.5, 0.0))


def probabilities(scores):
    """sigmoid of the logits [N, C] (taken as float32, as everywhere here), in float64.

    A negative logit stays below 0.5 (float64 rounds sigmoid(x) to 0.5 for |x| < 1e-16), so that
    the threshold 0.5 is exactly the logit-0 rule of the 'fixed' figures.
    """
    x = torch.as_tensor(scores).float().double()
    p = torch.sigmoid(x)
    return torch.where(x < 0, p.clamp(max=_BELOW_HALF), p).numpy()


def predict(scores, thresholds):
    """Boolean [N, C]: probability >= the class's threshold (``thresholds``: one number or [C])."""
    return torch.from_numpy(probabilities(scores) >= np.asarray(thresholds, dtype=np.float64))


def counted_predictions(scores, targets, thresholds, difficult_examples):
    """(predicted, positive) boolean [N, C]; a difficult sample left out is neither hit nor false alarm."""
    scores, targets = _as_tensors(scores, targets)
    predicted = predict(scores, thresholds)
    if difficult_examples:
        predicted &= targets != 0
    return predicted, targets == 1


def thresholded_precision_recall(scores, targets, thresholds, difficult_examples=False):
    """OP, OR, OF1, CP, CR, CF1 in percent (:func:`precision_recall`) with per-class probability
    thresholds. Threshold 0.5 everywhere gives the 'fixed' figures; by default difficult samples
    count as negatives, as there; ``difficult_examples`` leaves them out, as calibration does."""
    return precision_recall(*counted_predictions(scores, targets, thresholds, difficult_examples))


def per_class_f1(scores, targets, thresholds, difficult_examples=True):
    """F1 of each class (float64 [C], in [0, 1], NaN without a positive) with per-class probability
    thresholds; difficult samples left out when ``difficult_examples``, as in calibration."""
    predicted, positive = (t.numpy() for t in counted_predictions(scores, targets, thresholds, difficult_examples))
    hits, n_predicted, n_positive = (predicted & positive).sum(0), predicted.sum(0), positive.sum(0)
    f1 = np.full(positive.shape[1], np.nan)
    has_pos = n_positive > 0
    f1[has_pos] = 2 * hits[has_pos] / (n_predicted[has_pos] + n_positive[has_pos])
    return torch.from_numpy(f1)


def parse_objective(text):
    """'f1' -> 'f1'; 'precision=P' -> ('precision', P) with P in (0, 1]; anything else: UsageError (a ValueError)."""
    text = str(text).strip().lower()
    if text == 'f1':
        return 'f1'
    match = re.fullmatch(r'precision\s*=\s*([0-9.eE+-]+)', text)
    try:
        level = float(match.group(1)) if match else math.nan
    except ValueError:
        level = math.nan
    if not 0 < level <= 1:
        raise UsageError(f"threshold objective {text!r} not understood: use 'f1' or 'precision=P' with P in (0, 1], "
                         'e.g. precision=0.9')
    return 'precision', level


def _as_objective(objective):
    """'f1' or ('precision', P), checked, from either form or its text."""
    return parse_objective(objective if isinstance(objective, str) else '='.join(map(str, objective)))


def objective_text(objective):
    """The written form of an objective: 'f1' or 'precision=P'."""
    objective = _as_objective(objective)
    return 'f1' if objective == 'f1' else f'precision={objective[1]}'


@dataclass
class Calibration:
    """Per-class thresholds of :func:`calibrate_thresholds`, and the classes that kept 0.5 and why."""
    thresholds: np.ndarray      # float64 [C], probabilities
    objective: str              # 'f1' or 'precision=P'
    no_positive: list = field(default_factory=list)    # class indices without a positive sample
    unreachable: list = field(default_factory=list)    # class indices where no threshold reaches P

    @property
    def kept_default(self):
        return sorted(self.no_positive + self.unreachable)


def _cumulative_counts(prob, positive):
    """The distinct probabilities (M,) descending, and at each the positives and the samples at or above it."""
    order = np.argsort(-prob, kind='stable')
    prob, positive = prob[order], positive[order]
    last = np.append(prob[1:] != prob[:-1], True)   # the last sample of each run of equal probabilities
    return prob[last], np.cumsum(positive)[last], np.arange(1, len(prob) + 1)[last]


def calibrate_thresholds(scores, targets, objective, difficult_examples=True):
    """Per class, the probability threshold that is best for ``objective`` on these scores.

    Calibrate on a held-out split, not the one you report. ``objective``: 'f1', ('precision', P)
    or its text 'precision=P' (:func:`parse_objective`). Candidates are the distinct probabilities
    of the class's samples (difficult ones left out when ``difficult_examples``); the threshold is
    the chosen candidate itself, so on this split exactly its samples and those above it are
    predicted (the midpoint to the next lower one would make the result depend on that sample too).

    - 'f1': the candidate of highest F1; among equal F1, the highest candidate (fewest predictions).
      F1 is then >= that of any other threshold, 0.5 included.
    - precision P: the lowest candidate whose precision is >= P, i.e. the most recall at that
      precision; a class where none reaches P keeps 0.5 and is listed in ``unreachable``.

    A class without a positive keeps 0.5 and is listed in ``no_positive``. Returns a Calibration.
    """
    objective = _as_objective(objective)
    scores, targets = _as_tensors(scores, targets)
    prob, labels = probabilities(scores), targets.numpy()
    if np.isnan(prob).any():
        raise ValueError('scores contain NaN: calibrate on the outputs of a model that gives finite logits')
    result = Calibration(np.full(prob.shape[1], DEFAULT_THRESHOLD), objective_text(objective))
    for k in range(prob.shape[1]):
        counted = labels[:, k] != 0 if difficult_examples else np.ones(len(labels), dtype=bool)
        positive = labels[counted, k] == 1
        if not positive.any():
            result.no_positive.append(k)
            continue
        candidates, hits, predicted = _cumulative_counts(prob[counted, k], positive)
        n_positive = hits[-1]
        if objective == 'f1':
            best = np.argmax(2 * hits / (predicted + n_positive))    # the first maximum: the highest candidate
        else:
            reaching = np.flatnonzero(hits / predicted >= objective[1])
            if not len(reaching):
                result.unreachable.append(k)
                continue
            best = reaching[-1]
        result.thresholds[k] = candidates[best]
    return result


def _listing(names, limit=5):
    more = f' and {len(names) - limit} more' if len(names) > limit else ''
    return ', '.join(repr(n) for n in names[:limit]) + more


def thresholds_record(calibration, class_names, calibrated_on):
    """What ``thresholds.json`` holds: {"unit": "probability", "objective", "calibrated_on" (free
    text of the caller, e.g. the split), "thresholds": {class name: t}, "kept_default": [class names]}."""
    if len(class_names) != len(calibration.thresholds) or len(set(class_names)) != len(class_names):
        raise ValueError(f'{len(calibration.thresholds)} thresholds need as many distinct class names, '
                         f'not {len(class_names)} names ({len(set(class_names))} distinct)')
    return {'unit': 'probability', 'objective': calibration.objective, 'calibrated_on': calibrated_on,
            'thresholds': {name: float(t) for name, t in zip(class_names, calibration.thresholds)},
            'kept_default': [class_names[k] for k in calibration.kept_default]}


def read_thresholds(path, class_names):
    """A ``thresholds.json`` as written, with 'thresholds' a float64 [C] array in the order of
    ``class_names``. DatasetError (one line) for an unreadable file, another unit, a class of the
    model without threshold, a class the model does not have, or a threshold outside [0, 1]."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise DatasetError(f'{path}: cannot read the thresholds file ({reason})') from e
    if not isinstance(data, dict) or data.get('unit') != 'probability' or not isinstance(data.get('thresholds'), dict):
        raise DatasetError(f'{path}: not a thresholds file: expected "unit": "probability" and "thresholds": '
                           '{class name: probability}')
    given = data['thresholds']
    missing = [name for name in class_names if name not in given]
    if missing:
        raise DatasetError(f"{path}: no threshold for {len(missing)} of the model's classes ({_listing(missing)}); "
                           "calibrate again on this model's outputs")
    extra = [name for name in given if name not in class_names]
    if extra:
        raise DatasetError(f'{path}: thresholds for {len(extra)} classes the model does not have ({_listing(extra)}); '
                           'is it the file of another model?')
    for name in class_names:
        t = given[name]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise DatasetError(f'{path}: the threshold of {name!r} is {t!r}; thresholds are probabilities in [0, 1]')
    return dict(data, thresholds=np.array([float(given[name]) for name in class_names]))

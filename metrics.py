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
- Percentages: mAP and OP..CF1 are in percent; coverage error, LRAP and ranking loss are
  scikit-learn's values.
"""
import numpy as np
import sklearn.metrics
import torch

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

    Equal to :func:`average_precision_loop` bit for bit: same order, float64 divisions of the
    same counts, and the same sequential sum of the precisions at the positives.
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


def average_precision_loop(scores, targets, difficult_examples=True):
    """Plain-loop reference of :func:`average_precision`, element by element on tensors as the
    official meter does but with a stable sort; for tests and ``bench/metrics.py`` (slow on COCO)."""
    scores, targets = _as_tensors(scores, targets)
    ap = torch.full((scores.shape[1],), float('nan'), dtype=torch.float64)
    for k in range(scores.shape[1]):
        order = torch.sort(scores[:, k], descending=True, stable=True).indices
        positives, counted, total = 0.0, 0.0, 0.0
        for i in order:
            label = targets[i, k]
            if difficult_examples and label == 0:
                continue
            counted += 1
            if label == 1:
                positives += 1
                total += positives / counted
        if positives:
            ap[k] = total / positives
    return ap


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
        'fixed': precision_recall(scores >= 0, positive),
        f'fixed_top{k}': precision_recall(top & (scores >= 0), positive),
        'official_sweep': official_sweep(scores, positive),
        f'official_sweep_top{k}': official_sweep(top_signed, positive),
        'coverage_error': float(sklearn.metrics.coverage_error(y_true, y_score)),
        'lrap': float(sklearn.metrics.label_ranking_average_precision_score(y_true, y_score)),
        'ranking_loss': float(sklearn.metrics.label_ranking_loss(y_true, y_score)),
    }

"""The evaluation report: one self-contained HTML page of what a model learned on one split.

``write_report`` writes it from what an evaluation (``-e``) has at its end: the summary figures,
the scores and targets of every image, the class names, the image files and the label graph,
plus optionally per-class thresholds and a model to draw attention maps with (``ModelAttention``).
The page needs no network: styles, script, plots (SVG) and thumbnails (base64 JPEG) are inline.

What it shows:
- the run (dataset, split, checkpoint, the settings it was trained with) and the summary as ``-e``
  prints it (``report.format_summary``, and ``report.format_thresholded`` with thresholds);
- per class: AP, positives, and precision, recall, F1 at the threshold in use (the per-class
  ones when given, else probability 0.5, the logit-0 rule), counts of false positives and
  negatives; sortable by any column (click its header);
- precision-recall curves: one per class (small multiples) and their average (the mean over the
  classes with a positive image of the interpolated precision: the highest precision at that
  recall or more);
- per class, the most confident false positives and the least confident false negatives
  (``per_class`` of each), as thumbnails with that label's attention overlaid at one level; the
  three levels side by side on hover or click (attention_sheet.py draws them);
- the label graph: P(column | row) of the co-occurrence counts as a heat map, the edges the model
  keeps (P >= models.GRAPH_THRESHOLD) outlined.

Difficult samples (target 0) are left out of AP, of the curves and of the per-class figures, as
in ``metrics`` with ``difficult_examples``; they are never shown as mistakes.
"""
import base64
import html
import io
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import attention_sheet
import metrics
import report
from checkpoint import atomic_write
from dataset_base import IMAGE_ERRORS, open_rgb
from models import GRAPH_THRESHOLD
from util import eval_transform

MAX_BYTES = 20 * 1024 * 1024   # the whole page, for COCO's 80 classes too
THUMB = 160                    # px: the width of a thumbnail (one level of a strip of three)
PER_CLASS = 3                  # false positives shown per class, and as many false negatives
CURVE_POINTS = 200             # at most this many points per precision-recall curve
JPEG_QUALITIES = (75, 55, 35)  # tried in turn until a strip fits its share of MAX_BYTES


# ---- the figures --------------------------------------------------------------------------------

def class_table(scores, targets, thresholds, ap, difficult_examples=True):
    """Per class: {'ap', 'positives', 'threshold', 'precision', 'recall', 'f1', 'false_positives',
    'false_negatives'}; fractions in [0, 1], None where undefined (no positive image, or no
    prediction for precision). ``thresholds``: probabilities (C,); ``ap``: metrics.evaluate's."""
    predicted, _, positive = _outcomes(scores, targets, thresholds, difficult_examples)
    hits = (predicted & positive).sum(0)
    n_predicted, n_positive = predicted.sum(0), positive.sum(0)
    f1 = metrics.per_class_f1(scores, targets, thresholds, difficult_examples).numpy()
    rows = []
    for k in range(len(thresholds)):
        rows.append({
            'ap': ap[k], 'positives': int(n_positive[k]), 'threshold': float(thresholds[k]),
            'precision': float(hits[k] / n_predicted[k]) if n_predicted[k] else None,
            'recall': float(hits[k] / n_positive[k]) if n_positive[k] else None,
            'f1': None if np.isnan(f1[k]) else float(f1[k]),
            'false_positives': int((predicted[:, k] & ~positive[:, k]).sum()),
            'false_negatives': int((~predicted[:, k] & positive[:, k]).sum()),
        })
    return rows


def _outcomes(scores, targets, thresholds, difficult_examples):
    """(predicted, probabilities, positive): numpy [N, C]; a difficult sample left out is never
    predicted (``metrics.counted_predictions``), so never a false positive."""
    predicted, positive = metrics.counted_predictions(scores, targets, thresholds, difficult_examples)
    return predicted.numpy(), metrics.probabilities(scores), positive.numpy()


def worst_images(scores, targets, thresholds, per_class=PER_CLASS, difficult_examples=True):
    """Per class (false positives, false negatives): image indices, the most confident false
    positives first and the least confident false negatives first, ``per_class`` of each at most."""
    predicted, prob, positive = _outcomes(scores, targets, thresholds, difficult_examples)
    worst = []
    for k in range(prob.shape[1]):
        fp = np.flatnonzero(predicted[:, k] & ~positive[:, k])
        fn = np.flatnonzero(~predicted[:, k] & positive[:, k])
        fp = fp[np.argsort(-prob[fp, k], kind='stable')][:per_class]
        fn = fn[np.argsort(prob[fn, k], kind='stable')][:per_class]
        worst.append((fp.tolist(), fn.tolist()))
    return worst


def pr_curve(scores, targets, difficult_examples=True):
    """One class's precision-recall curve: (recall, precision) float64 arrays, one point per counted
    sample in descending score order (ties by index, as metrics.average_precision); empty without
    a positive."""
    scores, targets = np.asarray(scores, dtype=np.float32), np.asarray(targets)
    keep = targets != 0 if difficult_examples else np.ones(len(targets), dtype=bool)
    scores, positive = scores[keep], targets[keep] == 1
    if not positive.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind='stable')
    hits = np.cumsum(positive[order])
    return hits / positive.sum(), hits / np.arange(1, len(order) + 1)


def mean_interpolated_precision(curves, grid=np.linspace(0, 1, 101)):
    """The mean over the curves (those not empty) of the interpolated precision at each recall of
    ``grid``: the highest precision at that recall or more. Returns (grid, mean) or None."""
    values = []
    for recall, precision in curves:
        if len(recall):
            best_after = np.maximum.accumulate(precision[::-1])[::-1]   # max precision at recall >= r_i
            at = np.searchsorted(recall, grid, side='left')              # first point with recall >= r
            values.append(np.where(at < len(recall), best_after[np.minimum(at, len(recall) - 1)], 0.0))
    return (grid, np.mean(values, axis=0)) if values else None


def _thin(recall, precision, points=CURVE_POINTS):
    """At most ``points`` points of a curve, its first and last kept."""
    if len(recall) <= points:
        return recall, precision
    keep = np.unique(np.linspace(0, len(recall) - 1, points).round().astype(int))
    return recall[keep], precision[keep]


# ---- attention maps -----------------------------------------------------------------------------

class ModelAttention:
    """The ``attention`` of write_report from a model: called with image paths and, per image, class
    indices, it returns per image its maps per level, numpy (L, h, w) for its L classes.

    ``model``: an MSRN in eval mode, on ``device`` (the bare model, not a DDP wrapper: call it on
    the main process only); ``words``: its word vectors (C, 300);
    ``image_size``: the side the model was evaluated at. The images go through the evaluation
    transform (util.eval_transform) and the trunk in batches of ``batch_size`` on ``device``;
    each image's maps are computed for its own classes only (memory: L x 512 x positions).
    """

    def __init__(self, model, words, image_size, device, batch_size=16):
        self.model, self.device, self.batch_size = model, torch.device(device), batch_size
        self.words = torch.as_tensor(words).to(self.device)
        self.transform = eval_transform(image_size, model.image_normalization_mean, model.image_normalization_std)

    @torch.no_grad()
    def __call__(self, paths, labels):
        images = torch.stack([self.transform(open_rgb(path)) for path in paths]).to(self.device)
        features = self.model.features(images)
        maps = []
        for i, classes in enumerate(labels):
            levels = self.model.attention_maps([f[i:i + 1].float() for f in features], self.words, classes)
            maps.append([m[0].float().cpu().numpy() for m in levels])    # per level (L, h, w)
        return maps


# ---- the page -----------------------------------------------------------------------------------

def write_report(path, *, run_info, evaluation, scores, targets, classes, image_paths, graph, thresholds=None,
                 attention=None, progress=None, difficult_examples=True, per_class=PER_CLASS, max_bytes=MAX_BYTES):
    """Write the report page to ``path`` (a new file: FileExistsError if it exists; the caller picks
    an unused name beside the eval JSON, e.g. with cli.unused_name) and return ``path``.

    - ``run_info``: {'dataset', 'split', 'checkpoint'} (text), optionally 'settings' (the
      checkpoint's args dict: shown as a table), 'loss' (the summary's), 'label' (the summary's
      name of the split, default 'split'), 'thresholds_source' (where the thresholds came from);
      any other key is shown as one more line of the run.
    - ``evaluation``: ``metrics.evaluate(scores, targets, difficult_examples)``'s dict.
    - ``scores``: logits (N, C); ``targets``: (N, C) in {1, 0, -1}, 0 difficult; ``classes``: the
      C names; ``image_paths``: the N image files, in the rows' order.
    - ``graph``: {'adj': (C, C) co-occurrence counts, 'nums': (C,) counts}.
    - ``thresholds``: per-class probability thresholds (C,), or None for 0.5 everywhere.
    - ``attention``: None (thumbnails without maps), or a callable (paths, [class indices per
      image]) -> per image [(L, h, w) per level], such as ``ModelAttention(model, words,
      image_size, device)``, called with at most its ``batch_size`` (default 16) images at a time.
    - ``progress``: a bar over the thumbnails' images (None: only when stderr is a terminal).
    - ``per_class``: false positives shown per class (and as many false negatives);
      ``max_bytes``: the page's size limit, which the thumbnails' JPEG quality adapts to.
    """
    if os.path.exists(path):
        raise FileExistsError(f'{path} exists: the report never overwrites a file')
    scores = torch.as_tensor(scores).float()
    targets = torch.as_tensor(targets).long()
    n, c = scores.shape
    if targets.shape != scores.shape or len(classes) != c or len(image_paths) != n:
        raise ValueError(f'scores {tuple(scores.shape)}, targets {tuple(targets.shape)}, {len(classes)} classes and '
                         f'{len(image_paths)} image paths do not match')
    given = thresholds is not None
    thresholds = np.asarray(thresholds if given else np.full(c, metrics.DEFAULT_THRESHOLD), dtype=np.float64)
    table = class_table(scores, targets, thresholds, evaluation['ap'], difficult_examples)
    curves = [pr_curve(scores[:, k].numpy(), targets[:, k].numpy(), difficult_examples) for k in range(c)]
    worst = worst_images(scores, targets, thresholds, per_class, difficult_examples)
    summary = report.format_summary(evaluation, loss=run_info.get('loss'), label=run_info.get('label', run_info.get(
        'split', 'split')), class_names=classes)
    if given:
        figures = metrics.thresholded_precision_recall(scores, targets, thresholds)
        summary += '\n' + report.format_thresholded(figures, run_info.get('thresholds_source', 'given'))
    parts = [_run_section(run_info, summary, n, c, given),
             _table_section(classes, table, given),
             _curves_section(classes, curves, evaluation['ap']),
             _graph_section(classes, graph)]
    budget = max_bytes - sum(map(len, parts)) - len(STYLE) - len(SCRIPT) - 64 * 1024
    thumbs = _thumbnails(worst, scores, image_paths, attention, progress, budget)
    parts.insert(3, _mistakes_section(classes, worst, table, thumbs, metrics.probabilities(scores), image_paths,
                                      attention is not None))
    title = f"MSRN evaluation: {run_info.get('dataset', '')} {run_info.get('split', '')}".strip()
    page = PAGE.format(title=html.escape(title), style=STYLE, script=SCRIPT, body='\n'.join(parts))
    atomic_write(path, lambda tmp: _write_text(tmp, page))
    return path


def _write_text(path, text):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def _e(value):
    return html.escape(str(value), quote=True)


def _percent(value):
    return '-' if value is None else f'{100 * value:.1f}'


def _run_section(run_info, summary, n, c, given):
    shown = {'dataset': run_info.get('dataset'), 'split': run_info.get('split'),
             'checkpoint': run_info.get('checkpoint'), 'images': n, 'classes': c,
             'thresholds': run_info.get('thresholds_source', 'per class') if given else
             'probability 0.5 for every class (logit 0)'}
    shown.update((k, v) for k, v in run_info.items()
                 if k not in shown and k not in ('settings', 'loss', 'label', 'thresholds_source'))
    rows = ''.join(f'<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in shown.items() if v is not None)
    settings = run_info.get('settings') or {}
    trained = ''
    if settings:
        cells = ''.join(f'<tr><th>{_e(k)}</th><td>{_e(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>'
                        for k, v in sorted(settings.items()))
        trained = f'<details><summary>settings it was trained with ({len(settings)})</summary>' \
                  f'<table class="kv">{cells}</table></details>'
    return (f'<section id="run"><h2>The run</h2><table class="kv">{rows}</table>{trained}'
            f'<h3>Summary</h3><pre>{_e(summary)}</pre><p class="note">Figures as <code>-e</code> prints them '
            '(docs/metrics.md says what each is).</p></section>')


COLUMNS = [('class', 'text'), ('AP', 'number'), ('positives', 'number'), ('threshold', 'number'),
           ('precision', 'number'), ('recall', 'number'), ('F1', 'number'), ('false positives', 'number'),
           ('false negatives', 'number')]


def _table_section(classes, table, given):
    head = ''.join(f'<th data-type="{kind}" title="sort by {name}">{name}</th>' for name, kind in COLUMNS)
    body = []
    for k, (name, row) in enumerate(zip(classes, table)):
        numbers = [row['ap'], row['positives'], row['threshold'], row['precision'], row['recall'], row['f1'],
                   row['false_positives'], row['false_negatives']]
        shown = [_percent(row['ap']), row['positives'], f"{row['threshold']:.3f}", _percent(row['precision']),
                 _percent(row['recall']), _percent(row['f1']), row['false_positives'], row['false_negatives']]
        cells = ''.join(f'<td data-value="{"" if v is None else v}">{_e(s)}</td>' for v, s in zip(numbers, shown))
        body.append(f'<tr><td><a href="#class-{k}">{_e(name)}</a></td>{cells}</tr>')
    rule = 'its class\'s threshold (probability)' if given else 'probability 0.5 (logit 0)'
    return (f'<section id="classes"><h2>Per class</h2><p class="note">AP, precision, recall and F1 in percent; '
            f'predicted: probability &gt;= {rule}; difficult images left out. Click a header to sort.</p>'
            f'<table id="class-table" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></section>')


def _polyline(recall, precision, size, pad):
    span = size - 2 * pad
    return ' '.join(f'{pad + r * span:.1f},{pad + (1 - p) * span:.1f}' for r, p in zip(recall, precision))


def _curve_svg(recall, precision, size, pad, title, axes_labels=False):
    ticks = ''
    if axes_labels:
        span = size - 2 * pad
        for t in (0, 0.5, 1):
            ticks += (f'<text x="{pad + t * span:.0f}" y="{size - pad + 14}" text-anchor="middle">{t:g}</text>'
                      f'<text x="{pad - 4}" y="{pad + (1 - t) * span + 4:.0f}" text-anchor="end">{t:g}</text>')
        ticks += (f'<text x="{size / 2}" y="{size - 4}" text-anchor="middle">recall</text>'
                  f'<text x="12" y="{size / 2}" transform="rotate(-90 12 {size / 2})" text-anchor="middle">'
                  'precision</text>')
    line = f'<polyline points="{_polyline(recall, precision, size, pad)}"/>' if len(recall) else \
        f'<text x="{size / 2}" y="{size / 2}" text-anchor="middle">no positive image</text>'
    return (f'<svg class="pr" width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img">'
            f'<title>{_e(title)}</title><rect class="frame" x="{pad}" y="{pad}" width="{size - 2 * pad}" '
            f'height="{size - 2 * pad}"/>{line}{ticks}</svg>')


def _curves_section(classes, curves, ap):
    mean = mean_interpolated_precision(curves)
    big = _curve_svg(*mean, 320, 36, 'mean interpolated precision', axes_labels=True) if mean else \
        '<p>No class has a positive image.</p>'
    small = []
    for name, (recall, precision), a in zip(classes, curves, ap):
        caption = f"{name} (AP {_percent(a)})"
        small.append(f'<figure>{_curve_svg(*_thin(recall, precision), 130, 6, caption)}'
                     f'<figcaption>{_e(caption)}</figcaption></figure>')
    count = sum(1 for r, _ in curves if len(r))
    return (f'<section id="curves"><h2>Precision-recall curves</h2><figure class="mean">{big}<figcaption>Averaged '
            f'over the {count} classes with a positive image: the mean of the interpolated precision (the highest '
            f'precision at that recall or more).</figcaption></figure><div class="grid">{"".join(small)}</div>'
            f'</section>')


def _heat_colour(p):
    """White (0) to dark blue (1)."""
    r, g, b = (round(255 + (t - 255) * p) for t in (20, 60, 140))
    return f'#{r:02x}{g:02x}{b:02x}'


def _graph_section(classes, graph):
    adj = np.asarray(graph['adj'], dtype=np.float64)
    nums = np.asarray(graph['nums'], dtype=np.float64)
    cond = np.divide(adj, nums[:, None], out=np.zeros_like(adj), where=nums[:, None] > 0)   # (C, C) P(j | i)
    c = len(classes)
    cell = max(6, min(32, 640 // max(c, 1)))
    font_px = max(6, cell - 3)
    margin = min(220, 12 + font_px * 0.62 * max(map(len, classes), default=1))
    size = margin + c * cell
    cells, names = [], []
    for i in range(c):
        y = margin + i * cell
        names.append(f'<text x="{margin - 3:.0f}" y="{y + cell * 0.75:.1f}" text-anchor="end">{_e(classes[i])}</text>')
        x = margin + i * cell + cell * 0.75
        names.append(f'<text transform="translate({x:.1f} {margin - 3:.0f}) rotate(-90)">{_e(classes[i])}</text>')
        for j in range(c):
            if i == j:
                continue
            kept = ' class="kept"' if cond[i, j] >= GRAPH_THRESHOLD else ''
            cells.append(f'<rect x="{margin + j * cell:.0f}" y="{y:.0f}" width="{cell}" height="{cell}" '
                         f'fill="{_heat_colour(cond[i, j])}"{kept}><title>{_e(classes[j])} given {_e(classes[i])}: '
                         f'{cond[i, j]:.2f} ({int(adj[i, j])} of {int(nums[i])} images)</title></rect>')
    svg = (f'<svg id="graph" width="{size:.0f}" height="{size:.0f}" viewBox="0 0 {size:.0f} {size:.0f}" '
           f'style="font-size:{font_px}px">{"".join(names)}{"".join(cells)}</svg>')
    return (f'<section id="label-graph"><h2>The label graph</h2><p class="note">Row i, column j: P(j | i), the share '
            f'of the training images labelled i that are also labelled j (white 0, dark blue 1; hover a cell for '
            f'the counts). Outlined: the edges the model keeps (P &gt;= {GRAPH_THRESHOLD}).</p>{svg}</section>')


def _encode(image, budget):
    """A JPEG data URL of ``image`` within ``budget`` bytes when a quality (or a half-size copy) allows."""
    for attempt in (image, image.resize((max(1, image.width // 2), max(1, image.height // 2)))):
        for quality in JPEG_QUALITIES:
            buffer = io.BytesIO()
            attempt.save(buffer, 'JPEG', quality=quality)
            data = base64.b64encode(buffer.getvalue()).decode('ascii')
            if len(data) <= budget:
                return f'data:image/jpeg;base64,{data}', attempt is not image
    return None, True


def _thumbnails(worst, scores, image_paths, attention, progress, budget):
    """{(image index, class index): (data URL, [captions], shown level or None, width, height)} of
    every shown mistake, within ``budget`` bytes (a share per thumbnail); missing when unreadable."""
    wanted = {}
    for k, (fp, fn) in enumerate(worst):
        for i in fp + fn:
            wanted.setdefault(i, []).append(k)
    images = sorted(wanted)
    share = budget / max(1, sum(len(v) for v in wanted.values()))
    batch = getattr(attention, 'batch_size', 16)
    progress = sys.stderr.isatty() if progress is None else progress
    out = {}
    with tqdm(total=len(images), desc='report thumbnails', disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch):
            chunk = []
            for i in images[start:start + batch]:
                try:
                    chunk.append((i, open_rgb(image_paths[i])))
                except (FileNotFoundError, *IMAGE_ERRORS):
                    pass
            maps = attention([image_paths[i] for i, _ in chunk], [wanted[i] for i, _ in chunk]) \
                if attention is not None and chunk else [None] * len(chunk)
            for (i, image), image_maps in zip(chunk, maps):
                pic, _ = attention_sheet.picture(image, THUMB)
                for row, k in enumerate(wanted[i]):
                    out[(i, k)] = _thumbnail(pic, None if image_maps is None else [m[row] for m in image_maps],
                                             share)
            bar.update(len(images[start:start + batch]))
    return out


def _thumbnail(pic, label_maps, share):
    """(data URL, captions, shown level index or None, width, height) of one mistake's thumbnail:
    the strip of its levels (the deepest one that is not flat shown), or the bare picture."""
    if label_maps is None:
        url, halved = _encode(pic, share)
        return url, [], None, pic.width // (2 if halved else 1), pic.height // (2 if halved else 1)
    tiles = attention_sheet.level_tiles(pic, label_maps)
    strip = Image.new('RGB', (pic.width * len(tiles), pic.height))
    for column, tile in enumerate(tiles):
        strip.paste(tile.image, (column * pic.width, 0))
    shown = max((t for t, tile in enumerate(tiles) if not tile.flat), default=len(tiles) - 1)
    url, halved = _encode(strip, share)
    scale = 2 if halved else 1
    return url, [tile.caption for tile in tiles], shown, pic.width // scale, pic.height // scale


def _mistakes_section(classes, worst, table, thumbs, prob, image_paths, with_maps):
    blocks = []
    for k, (name, (fp, fn)) in enumerate(zip(classes, worst)):
        rows = []
        for kind, indices, total in (('false positives', fp, table[k]['false_positives']),
                                     ('false negatives', fn, table[k]['false_negatives'])):
            figures = [_figure(thumbs.get((i, k)), prob[i, k], image_paths[i]) for i in indices]
            said = f'{total} {kind}' + (f', the {len(indices)} most wrong shown' if total > len(indices) else '')
            rows.append(f'<div class="kind"><h4>{said}</h4><div class="thumbs">{"".join(figures)}</div></div>')
        blocks.append(f'<div class="class" id="class-{k}"><h3>{_e(name)}</h3><div class="kinds">{"".join(rows)}</div>'
                      '</div>')
    how = ('The attention of that label is overlaid at its deepest informative level; hover or click a '
           'thumbnail for the three levels (attention colours: blue lowest, red highest weight of each map).'
           if with_maps else 'No model was given, so the thumbnails show no attention.')
    return (f'<section id="mistakes"><h2>The images it got most wrong</h2><p class="note">Per class: the most '
            f'confident false positives (probability at or above the threshold, label absent) and the least '
            f'confident false negatives. {how}</p>{"".join(blocks)}</section>')


def _figure(thumb, probability, path):
    name = _e(os.path.basename(path))
    if thumb is None or thumb[0] is None:
        return f'<figure class="missing"><div>not readable</div><figcaption>{name}</figcaption></figure>'
    url, captions, shown, width, height = thumb
    position = '' if shown is None else f' style="object-position:-{shown * width}px 0"'
    data = f' data-captions="{_e("|".join(captions))}"' if captions else ''
    level = f' level {shown + 1}' if shown is not None else ''
    return (f'<figure><img class="thumb" src="{url}" width="{width}" height="{height}" alt="{name}"{position}'
            f'{data} title="{_e(path)}"><figcaption>{probability:.2f}{level} {name}</figcaption></figure>')


PAGE = '''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{title}</title><style>{style}</style></head>
<body><header><h1>{title}</h1><nav><a href="#run">run</a> <a href="#classes">per class</a>
<a href="#curves">precision-recall</a> <a href="#mistakes">mistakes</a> <a href="#label-graph">label graph</a></nav>
</header><main>
{body}
</main><div id="popup" hidden><img alt="the three levels"><div class="captions"></div></div>
<script>{script}</script></body></html>
'''

STYLE = '''
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fff}
header{background:#234;color:#fff;padding:8px 16px;position:sticky;top:0;z-index:2}
header h1{font-size:18px;margin:0}header a{color:#cde;margin-right:12px}
main{padding:0 16px 32px}section{margin-top:24px}h2{border-bottom:1px solid #ccc}
pre{background:#f4f4f4;padding:8px;overflow-x:auto}.note{color:#555}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child,.kv td,.kv th{text-align:left}
.sortable th{cursor:pointer;background:#eef;position:sticky;top:38px}
.sortable th[aria-sort=descending]::after{content:" \\25BC"}.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
.grid,.thumbs{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}
figcaption{font-size:12px;max-width:160px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figure.mean figcaption{max-width:480px;white-space:normal}
svg.pr polyline{fill:none;stroke:#c33;stroke-width:1.5}svg.pr .frame{fill:#fafafa;stroke:#999}
svg.pr text{font-size:11px}svg#graph rect.kept{stroke:#d22;stroke-width:1}
.class h3{margin-bottom:0}.kinds{display:flex;flex-wrap:wrap;column-gap:32px}
.kind h4{margin:6px 0 2px;font-weight:normal;color:#444}
img.thumb{object-fit:none;object-position:0 0;cursor:zoom-in;display:block;background:#eee}
figure.missing div{width:160px;height:100px;background:#eee;display:flex;align-items:center;justify-content:center}
#popup{position:fixed;z-index:3;background:#fff;border:1px solid #888;padding:4px;box-shadow:0 2px 8px #0006}
#popup .captions{display:flex;font-size:12px}#popup .captions span{flex:1;text-align:center}
'''

SCRIPT = '''
"use strict";
// the class table: click a header to sort (numbers largest first, text A-Z; again to reverse); empty cells last
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var numeric = th.dataset.type === "number";
      var descending = th.dataset.order ? th.dataset.order === "asc" : numeric;
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; h.removeAttribute("aria-sort"); });
      th.dataset.order = descending ? "desc" : "asc";
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      var body = table.tBodies[0];
      var key = function (row) {
        var cell = row.cells[column];
        if (!numeric) return cell.textContent;
        return cell.dataset.value === "" ? null : Number(cell.dataset.value);
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        var order = numeric ? x - y : x.localeCompare(y);
        return descending ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
// a thumbnail's three levels side by side: on hover, or pinned by a click (a second click unpins)
var popup = document.getElementById("popup"), pinned = null;
function show(img) {
  var captions = (img.dataset.captions || "").split("|");
  popup.querySelector("img").src = img.src;
  popup.querySelector(".captions").innerHTML = "";
  captions.forEach(function (text) {
    var span = document.createElement("span"); span.textContent = text;
    popup.querySelector(".captions").appendChild(span);
  });
  var box = img.getBoundingClientRect();
  popup.hidden = false;
  var left = Math.min(box.left, window.innerWidth - popup.offsetWidth - 8);
  var below = box.bottom + popup.offsetHeight + 8 < window.innerHeight;
  var top = below ? box.bottom + 4 : box.top - popup.offsetHeight - 4;
  popup.style.left = Math.max(0, left) + "px"; popup.style.top = Math.max(0, top) + "px";
}
document.querySelectorAll("img.thumb[data-captions]").forEach(function (img) {
  img.addEventListener("mouseenter", function () { if (!pinned) show(img); });
  img.addEventListener("mouseleave", function () { if (!pinned) popup.hidden = true; });
  img.addEventListener("click", function () {
    if (pinned === img) { pinned = null; popup.hidden = true; } else { pinned = img; show(img); }
  });
});
'''

"""MSRN on your own images: labels for files, folders or lists of paths, batched, to a CSV file.

    python predict.py PATH [PATH ...] --resume CKPT [--out predictions.csv] [--thresholds thresholds.json]

PATH: an image file, a folder (searched recursively for the image types PIL reads), or ``@LIST``,
a text file with one image path per line (relative paths are relative to the list's folder). A
checkpoint of ours brings everything else (class names, label graph, word vectors, backbone, pool
ratio, image size); a released one gets its dataset's (run.build_trained_model). Scores are
probabilities, the sigmoid of the logits. An image that cannot be read is skipped with one warning
line. Flags: ``get_parser`` (``python predict.py --help``).
"""
import csv
import os
import sys
from contextlib import nullcontext

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import attention_sheet
import checkpoint as ckpt
import cli
import distributed
import metrics
from checkpoint import atomic_write
from dataset_base import IMAGE_ERRORS, one_line, open_rgb
from engine import AMP_DTYPES
from errors import DatasetError, UsageError
from run import build_trained_model, checked_amp, checked_thresholds
from util import eval_transform

IMAGE_SUFFIXES = {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}


# ---- which images -------------------------------------------------------------------------------

def image_paths(paths):
    """The images named by ``paths`` (files, folders searched recursively in sorted order, ``@list``
    files), in that order; a path that does not exist is a UsageError, and so is finding none."""
    found = []
    for path in paths:
        if path.startswith('@'):
            found += _listed(path[1:])
        elif os.path.isdir(path):
            found += sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UsageError(f'{path}: no such image or folder; check the path (a list of paths: @FILE)')
    if not found:
        raise UsageError(f"no image found in {' '.join(paths)} (image types: .jpg, .png, ... as PIL reads them)")
    return found


def _listed(list_file):
    try:
        with open(list_file, encoding='utf-8-sig') as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise UsageError(f'{list_file}: cannot read the list of images ({e.strerror}); check the path') from None
    folder = os.path.dirname(list_file)
    return [line if os.path.isabs(line) else os.path.join(folder, line) for line in lines if line]


class ImageFiles(Dataset):
    """Item i: (i, image tensor or None, why it could not be read or None)."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(open_rgb(self.paths[i])), None
        except IMAGE_ERRORS as e:
            return i, None, one_line(e)


def collate(items):
    """(indices of the readable images, their batch (B, 3, S, S) or None, [(index, why)] of the others)."""
    readable = [(i, image) for i, image, _ in items if image is not None]
    batch = torch.stack([image for _, image in readable]) if readable else None
    return [i for i, _ in readable], batch, [(i, why) for i, _, why in items if why is not None]


# ---- the predictions ----------------------------------------------------------------------------

def predictions(model, words, loader, device, amp, amp_dtype, paths, skipped):
    """Yield (index, probabilities (C,) float32 CPU tensor, features of that image or None) for each
    readable image, in input order; append (path, why) to ``skipped`` for the others, with a warning."""
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp else nullcontext()
    for indices, images, failed in loader:
        for i, why in failed:
            tqdm.write(f'warning: skipped {paths[i]}: {why}', file=sys.stderr)
            skipped.append((paths[i], why))
        if images is None:
            continue
        with torch.no_grad(), autocast:
            features = model.features(images.to(device, non_blocking=True))
            logits, _ = model.head(features, words)
        probabilities = torch.sigmoid(logits.float()).cpu()
        for row, i in enumerate(indices):
            yield i, probabilities[row], [f[row:row + 1] for f in features]


def predicted_labels(probabilities, classes, thresholds):
    """[(name, probability)] of the classes at or above their threshold, most probable first."""
    order = probabilities.argsort(descending=True).tolist()
    return [(classes[k], float(probabilities[k])) for k in order if probabilities[k] >= thresholds[k]]


def csv_row(path, probabilities, classes, thresholds):
    labels = '|'.join(name for name, _ in predicted_labels(probabilities, classes, thresholds))
    return [path, labels, *(f'{p:.6f}' for p in probabilities.tolist())]


def write_csv(path, rows):
    with open(path, 'w', encoding='utf-8', newline='') as f:
        csv.writer(f, lineterminator='\n').writerows(rows)


def print_summary(path, probabilities, classes, thresholds, top_k):
    labels = predicted_labels(probabilities, classes, thresholds)[:top_k]
    print(path)
    for name, probability in labels:
        print(f'  {name:<14} {probability:.3f}')
    if not labels:
        best = int(probabilities.argmax())
        print(f'  (no label reaches its threshold; best: {classes[best]} {probabilities[best]:.3f})')


def attention_png_path(out_dir, path, root):
    """Where the maps of ``path`` go: its path below ``root`` mirrored under ``out_dir``, the file
    name kept whole (``a/x.jpg`` -> ``out_dir/a/x.jpg.attention.png``), so no two images share one."""
    return os.path.join(out_dir, os.path.relpath(os.path.abspath(path), root) + '.attention.png')


def attention_rows(model, words, features, probabilities, classes, thresholds, max_rows=None):
    """(rows, maps) of one image's attention sheet (attention_sheet.py): a row per predicted label,
    most probable first (``max_rows`` of them at most), or when none is predicted one row for the
    most probable label, marked as not predicted; and their maps per level."""
    order = probabilities.argsort(descending=True).tolist()
    shown = [k for k in order if probabilities[k] >= thresholds[k]][:max_rows] or order[:1]
    with torch.no_grad():
        maps = model.attention_maps(features, words, shown)
    rows = [attention_sheet.Row(classes[k], float(probabilities[k]), float(thresholds[k])) for k in shown]
    return rows, [m[0] for m in maps]


def write_attention_maps(model, words, path, features, probabilities, classes, thresholds, out_path):
    """The attention sheet of one image (``attention_rows``) as a PNG at ``out_path``."""
    rows, maps = attention_rows(model, words, features, probabilities, classes, thresholds)
    attention_sheet.save_sheet(out_path, open_rgb(path), rows, maps)


# ---- the command --------------------------------------------------------------------------------

def get_parser():
    """predict.py's flags."""
    parser = cli.ArgumentParser(description='MSRN on your own images: labels for image files, folders or lists of '
                                            'paths, printed or written to a CSV file.')
    parser.add_argument('paths', nargs='+', metavar='PATH',
                        help='an image, a folder (searched recursively), or @LIST: a text file with one image path '
                             'per line (relative to its folder)')
    parser.add_argument('--out', metavar='FILE.csv',
                        help='write filepath,labels,<one probability per class> per image (labels separated by |, '
                             'the format of train.csv) instead of printing the top labels')
    cli.add_threshold_arguments(parser, 'a label is predicted when its probability is >= P', '--threshold')
    parser.add_argument('--top-k', default=5, type=int, metavar='K',
                        help='print at most K labels per image (default: 5; the CSV has them all)')
    parser.add_argument('--attention', metavar='DIR',
                        help='write each image\'s attention maps as a PNG under DIR, mirroring the input paths')
    invocation = cli.add_trained_model_arguments(parser)
    invocation.add_argument('-b', '--batch-size', default=16, type=int, metavar='N',
                            help='images per batch (default: 16)')
    workers = min(4, os.cpu_count() or 1)
    invocation.add_argument('-j', '--workers', default=workers, type=int, metavar='N',
                            help=f'image loading processes (default: {workers})')
    cli.add_amp_arguments(invocation)
    cli.add_progress_argument(invocation)
    return parser


def predict(args, given, recipe):
    checked_thresholds(args, given, 'one for every class')
    paths = image_paths(args.paths)
    device = distributed.init_distributed_mode(args.device)  # one process: just picks the device
    model, words, classes = build_trained_model(args, given, ckpt.read_checkpoint(args.resume), recipe)
    if args.thresholds:
        thresholds = metrics.read_thresholds(args.thresholds, classes)['thresholds'].tolist()
        print(f'=> per-class thresholds (probabilities) from {args.thresholds}')
    else:
        thresholds = [args.threshold] * len(classes)
    model.to(device)
    words = words.to(device)
    amp = checked_amp(args, given, device)
    transform = eval_transform(args.image_size, model.image_normalization_mean, model.image_normalization_std)
    loader = DataLoader(ImageFiles(paths, transform), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate, pin_memory=device.type == 'cuda')
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    skipped, rows = [], [['filepath', 'labels', *classes]]
    results = predictions(model, words, loader, device, amp, AMP_DTYPES[args.amp_dtype], paths, skipped)
    for i, probabilities, features in tqdm(results, total=len(paths), desc='predicting', disable=not progress,
                                           dynamic_ncols=True):
        if args.out:
            rows.append(csv_row(paths[i], probabilities, classes, thresholds))
        else:
            print_summary(paths[i], probabilities, classes, thresholds, args.top_k)
        if args.attention:
            write_attention_maps(model, words, paths[i], features, probabilities, classes, thresholds,
                                 attention_png_path(args.attention, paths[i], root))
    if len(skipped) == len(paths):
        raise DatasetError(f'none of the {len(paths)} images could be read: nothing predicted (see the warnings)')
    if args.out:
        atomic_write(args.out, lambda tmp: write_csv(tmp, rows))
        print(f'=> {len(rows) - 1} images predicted: {args.out}')
    if args.attention:
        print(f'=> attention maps in {args.attention}/, one PNG per image at its path below {root}')
    if skipped:
        print(f'=> {len(skipped)} of {len(paths)} images skipped: they could not be read (see the warnings)')


def main(argv=None):
    return cli.entry(get_parser(), predict, argv)


if __name__ == '__main__':
    sys.exit(main())

"""Which word vectors to give the classes when there is no GloVe file: MSRN trained on synthetic
custom data (tools/synthetic_data.py) with each candidate, validation mAP per training seed.

    OMP_NUM_THREADS=1 python bench/fallback_words.py [--classes 12] [--epochs 8] [--seeds 0 1 2] [--out DIR]

Candidates: (a) a random unit vector per class seeded by its name (label_files.fallback_word_vectors,
what demo_custom_gcn.py uses without -word_file), (b) the same scaled to norm 6.5 (the mean norm of
the official GloVe class vectors), (c) one-hot padded to 300 (needs C <= 300), (d) one vector for
every class, the control: classes the word vectors cannot tell apart. ResNet-18 from scratch,
64 px, CPU, -j 0: a seed repeats bit for bit with the same thread count. A seed gives every
candidate the same initial weights and batches, so compare the columns seed by seed.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import run  # noqa: E402
import label_files  # noqa: E402
from demo_custom_gcn import DATASET  # noqa: E402
from tools.synthetic_data import write_custom  # noqa: E402

GLOVE_NORM = 6.5


def candidates(classes):
    """name -> word vectors [C, 300] (None: the loader's own fallback, no -word_file)."""
    unit = label_files.fallback_word_vectors(classes)
    one_hot = np.zeros((len(classes), 300), np.float32)
    one_hot[np.arange(len(classes)), np.arange(len(classes))] = 1
    return {'(a) name-seeded unit': None,
            f'(b) name-seeded, norm {GLOVE_NORM}': unit * GLOVE_NORM,
            '(c) one-hot padded to 300': one_hot,
            '(d) one vector for all (control)': np.repeat(unit[:1], len(classes), 0)}


def train(data, word_file, seed, args, save_dir):
    """Train once; return (final val mAP, best val mAP) from the run's log."""
    argv = [data, '--backbone', 'resnet18', '--pretrained', '0', '--image-size', str(args.image_size),
            '--epochs', str(args.epochs), '--epoch_step', str(max(1, args.epochs * 3 // 4)), '-b', '16', '-j', '0',
            '--device', 'cpu', '--seed', str(seed), '--save-dir', save_dir]
    if word_file:
        argv += ['-word_file', word_file]
    if run.main(DATASET, argv) != 0:
        raise SystemExit(f'training failed: {argv}')
    with open(os.path.join(save_dir, 'log.jsonl')) as f:
        log = [json.loads(line) for line in f]
    return log[-1]['val_mAP'], max(e['val_mAP'] for e in log)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--classes', type=int, default=12, help='number of classes (default: 12)')
    parser.add_argument('--train-images', type=int, default=160, help='training images (default: 160)')
    parser.add_argument('--val-images', type=int, default=80, help='validation images (default: 80)')
    parser.add_argument('--image-size', type=int, default=64, help='image side (default: 64)')
    parser.add_argument('--epochs', type=int, default=8, help='epochs per run (default: 8)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='training seeds (default: 0 1 2)')
    parser.add_argument('--out', default=None, help='data and runs (default: a temporary folder)')
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix='fallback_words_')
    data = os.path.join(out, 'data')
    classes = [f'class {i:02d}' for i in range(args.classes)]
    write_custom(data, n_train=args.train_images, n_val=args.val_images, image_size=args.image_size, classes=classes)
    rows = []
    for k, (name, vectors) in enumerate(candidates(sorted(classes)).items()):
        word_file = None
        if vectors is not None:
            word_file = os.path.join(out, f'words_{k}.npy')
            np.save(word_file, vectors)
        runs = [train(data, word_file, seed, args, os.path.join(out, f'run_{k}_{seed}')) for seed in args.seeds]
        rows.append((name, runs))
    print(f'\n# {args.classes} classes, {args.train_images} train / {args.val_images} val images, '
          f'{args.image_size} px, {args.epochs} epochs, seeds {" ".join(map(str, args.seeds))}')
    print('| word vectors | final val mAP per seed | mean | best-epoch mAP mean |')
    print('|---|---|---|---|')
    for name, runs in rows:
        finals = [final for final, _ in runs]
        print(f'| {name} | {" / ".join(f"{m:.1f}" for m in finals)} | {statistics.mean(finals):.1f} | '
              f'{statistics.mean(best for _, best in runs):.1f} |')


if __name__ == '__main__':
    main()

"""Build the label word-vector file [C, 300] of a dataset from a GloVe text file.

Each class name is split into words (on spaces, ``_`` and ``-``; VOC's joined names are split by
hand: ``diningtable`` -> dining table, ``pottedplant`` -> potted plant, ``tvmonitor`` -> tv
monitor) and its vector is the mean of its words' GloVe vectors, lower-cased. A word missing
from the GloVe file is an error naming it.

    python tools/build_word2vec.py voc glove.6B.300d.txt data/voc/voc_glove_word2vec.pkl

Writes a float32 array as a pickle (or ``.npy``/``.npz`` by extension), as the official VOC/COCO files.
"""
import argparse
import os
import sys

import numpy as np

if __package__ in (None, ''):  # run as a script: make the repo's modules importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import label_files  # noqa: E402
from errors import DatasetError  # noqa: E402
from tools import TRAIN_SPLIT, dataset_module  # noqa: E402

JOINED_NAMES = {'diningtable': 'dining table', 'pottedplant': 'potted plant', 'tvmonitor': 'tv monitor'}


def class_words(name):
    return JOINED_NAMES.get(name, name).lower().replace('_', ' ').replace('-', ' ').split()


def read_glove(path, words):
    """Return {word: float32 vector} for the ``words`` found in the GloVe text file ``path``."""
    found = {}
    with open(path, encoding='utf8') as f:
        for lineno, line in enumerate(f, 1):
            word, _, rest = line.rstrip('\n').partition(' ')
            if word in words:
                try:
                    found[word] = np.array(rest.split(), np.float32)
                except ValueError:
                    raise DatasetError(f'{path}:{lineno}: expected "<word> <numbers>"') from None
    return found


def build_word_vectors(classes, glove_path, dim=300):
    """Return float32 [len(classes), dim]: each class the mean of its words' vectors."""
    needed = {w for name in classes for w in class_words(name)}
    glove = read_glove(glove_path, needed)
    missing = sorted(needed - set(glove))
    if missing:
        raise DatasetError(f'{glove_path}: no vector for {", ".join(missing)}')
    bad = sorted(w for w, v in glove.items() if v.shape != (dim,))
    if bad:
        raise DatasetError(f'{glove_path}: vector of {bad[0]!r} has {glove[bad[0]].size} numbers, expected {dim}')
    return np.stack([np.mean([glove[w] for w in class_words(name)], axis=0) for name in classes]).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', choices=sorted(TRAIN_SPLIT), help='dataset whose class names to embed')
    parser.add_argument('glove', help='GloVe text file, e.g. glove.6B.300d.txt')
    parser.add_argument('out', help='file to write (.pkl, .npy or .npz)')
    parser.add_argument('--dim', type=int, default=300, help='vector length (MSRN uses 300)')
    args = parser.parse_args(argv)
    vectors = build_word_vectors(dataset_module(args.dataset).CLASSES, args.glove, args.dim)
    label_files.save(args.out, vectors)
    print(f'wrote {args.out}: {vectors.shape[0]} classes x {vectors.shape[1]}')


if __name__ == '__main__':
    try:
        main()
    except DatasetError as e:
        sys.exit(f'error: {e}')

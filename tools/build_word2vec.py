"""Build the label word-vector file [C, 300] of a dataset from a GloVe text file.

Each class name is split into words (on spaces, ``_`` and ``-``; VOC's joined names are split by
hand: ``diningtable`` -> dining table, ``pottedplant`` -> potted plant, ``tvmonitor`` -> tv
monitor), lower-cased, and its vector is the mean of its words' GloVe vectors. Words missing from
the GloVe file are listed; a class none of whose words is found gets its fallback vector
(``label_files.glove_word_vectors``: the same vectors as training with ``-word_file GLOVE``).

    python tools/build_word2vec.py voc glove.6B.300d.txt data/voc/voc_glove_word2vec.pkl
    python tools/build_word2vec.py custom glove.6B.300d.txt mine_words.npy --data /data/mine

Writes a float32 array as a pickle (or ``.npy``/``.npz`` by extension), as the official VOC/COCO files.
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # run as a script: make the repo's modules importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import custom  # noqa: E402
import label_files  # noqa: E402
from errors import DatasetError  # noqa: E402
from tools import DATASETS, dataset_module  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', choices=sorted(DATASETS), help='dataset whose class names to embed')
    parser.add_argument('glove', help='GloVe text file, e.g. glove.6B.300d.txt')
    parser.add_argument('out', help='file to write (.pkl, .npy or .npz)')
    parser.add_argument('--data', metavar='DIR', help='custom only: the dataset folder whose classes to embed')
    parser.add_argument('--dim', type=int, default=300, help='vector length (MSRN uses 300)')
    args = parser.parse_args(argv)
    if (args.dataset == 'custom') != (args.data is not None):
        parser.error('--data DIR is needed for custom, and only there')
    classes = custom.read_classes(args.data)[0] if args.data else dataset_module(args.dataset).CLASSES
    vectors, missing, blind = label_files.glove_word_vectors(classes, args.glove, args.dim)
    if missing:
        print(f'{args.glove}: no vector for {", ".join(missing)}'
              + (f'; fallback vector for {", ".join(blind)}' if blind else ''))
    label_files.save(args.out, vectors)
    print(f'wrote {args.out}: {vectors.shape[0]} classes x {vectors.shape[1]}')


if __name__ == '__main__':
    try:
        main()
    except DatasetError as e:
        sys.exit(f'error: {e}')

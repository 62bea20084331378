"""Rebuild a label-graph file ``{'adj', 'nums'}`` from a dataset's training labels, as ML-GCN did.

``adj[i, j]`` = number of training images in which labels i and j are both present (diagonal 0),
``nums[i]`` = number of training images in which label i is present, both int64
(``label_files.build_adjacency``). Only a 1 counts as present: VOC's 0 (difficult) counts as absent.

    python tools/build_adj.py voc /data/VOC2007 data/voc/voc_adj.pkl [--split trainval]
    python tools/build_adj.py custom /data/mine mine_adj.npz

Writes a pickle (or ``.npz`` when OUT ends so) that ``label_files.load_adjacency`` reads. For
``custom`` the class order is the loader's (``classes.txt``, else the sorted training labels);
``demo_custom_gcn.py`` builds the same graph itself when no ``-graph_file`` is given.
"""
import argparse
import os
import sys

import numpy as np

if __package__ in (None, ''):  # run as a script: make the repo's modules importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import label_files  # noqa: E402
from errors import DatasetError  # noqa: E402
from tools import DATASETS, dataset_module, training_split  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', choices=sorted(DATASETS), help='dataset loader to read the labels with')
    parser.add_argument('root', help='dataset folder, as given to the demo script')
    parser.add_argument('out', help='file to write (.pkl, or .npz)')
    parser.add_argument('--split', help='split to count (default: the training split)')
    parser.add_argument('--image-label', help='apparel only: official image_label.pkl for the one-folder layout')
    args = parser.parse_args(argv)
    options = {'image_label': args.image_label} if args.dataset == 'apparel' else {}
    split = args.split or training_split(args.dataset)
    samples = dataset_module(args.dataset).read_samples(args.root, split, **options)
    graph = label_files.build_adjacency(np.stack([target for _, _, target in samples]))
    label_files.save(args.out, graph)
    print(f'wrote {args.out}: {len(samples)} images, {len(graph["nums"])} classes, '
          f'{int(graph["adj"].sum()) // 2} co-occurring label pairs')


if __name__ == '__main__':
    try:
        main()
    except DatasetError as e:
        sys.exit(f'error: {e}')

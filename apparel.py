"""Apparel (Kaggle "apparel-images-dataset"): 11 labels, a colour and a garment per image.

Two layouts under root:
- the Kaggle folders ``<colour>_<garment>/`` (e.g. ``black_dress/``), labels taken from the folder
  name; the folders and files are read in sorted order, which rebuilds the official
  ``image_label.pkl`` exactly (same order, and, for a file name found in two folders, the same
  position with the later folder's labels);
- the official one: all images in one folder (``<root>/apparel/`` if it exists, else root) and
  the official ``image_label.pkl`` passed as ``image_label`` (0 marks a present label there).

The split is the official one: the image -> label map shuffled by ``random`` seeded with 10,
first half train, second half val. A private ``random.Random(10)`` gives the same order
without reseeding the global generator.
"""
import os
import random

import numpy as np

import label_files
from dataset_base import DatasetSpec, MultiLabelDataset
from errors import DatasetError

COLOURS = ['black', 'blue', 'brown', 'green', 'red', 'white']
GARMENTS = ['dress', 'pants', 'shirt', 'shoes', 'shorts']
CLASSES = COLOURS + GARMENTS
SPLITS = ('train', 'val')
SPLIT_SEED = 10
DOWNLOAD_HINT = 'download https://www.kaggle.com/datasets/trolukovich/apparel-images-dataset and pass its folder'


def read_folders(root):
    """Return the map image file name -> (path, float32 target [11]) from the Kaggle folders."""
    if not os.path.isdir(root):
        raise DatasetError(f'{root}: dataset folder not found; {DOWNLOAD_HINT}')
    image_map = {}
    repeated = 0
    for folder in sorted(os.listdir(root)):
        path = os.path.join(root, folder)
        if folder.startswith('.') or not os.path.isdir(path):
            continue
        colour, _, garment = folder.partition('_')
        if colour not in COLOURS or garment not in GARMENTS:
            raise DatasetError(f'{path}: folder name is not <colour>_<garment> with colour in {", ".join(COLOURS)} '
                               f'and garment in {", ".join(GARMENTS)}; move it out of {root}')
        target = np.full(len(CLASSES), -1, np.float32)
        target[[CLASSES.index(colour), CLASSES.index(garment)]] = 1
        for name in sorted(os.listdir(path)):
            if not name.startswith('.') and os.path.isfile(os.path.join(path, name)):
                repeated += name in image_map
                image_map[name] = (os.path.join(path, name), target)
    if not image_map:
        raise DatasetError(f'{root}: no <colour>_<garment>/ folders with images; {DOWNLOAD_HINT}')
    if repeated:
        print(f'[dataset] {repeated} file name(s) occur in two folders of {root}: each is one image with the '
              f'later folder\'s labels, as in the official image_label.pkl')
    return image_map


def read_image_label(root, image_label, download=True):
    """Return the same map from the official layout: one image folder plus ``image_label.pkl``."""
    folder = os.path.join(root, 'apparel')
    folder = folder if os.path.isdir(folder) else root
    if not os.path.isdir(folder):
        raise DatasetError(f'{root}: dataset folder not found; {DOWNLOAD_HINT}')
    labels = label_files.load_image_labels(image_label, len(CLASSES), download=download)
    return {name: (os.path.join(folder, name), target) for name, target in labels.items()}


def split_dataset(image_map):
    """The official 50/50 split of an image map: (train map, val map)."""
    items = list(image_map.items())
    random.Random(SPLIT_SEED).shuffle(items)
    half = int(len(items) * 0.5)
    return dict(items[:half]), dict(items[half:])


def read_samples(root, split, image_label=None, download=True):
    """Return [(image path, file name, float32 target [11])] of ``split`` ('train' or 'val')."""
    if split not in SPLITS:
        raise DatasetError(f'Apparel split {split!r} unknown; use one of {", ".join(SPLITS)}')
    image_map = read_folders(root) if image_label is None else read_image_label(root, image_label, download)
    part = split_dataset(image_map)[SPLITS.index(split)]
    return [(path, name, target) for name, (path, target) in part.items()]


class ApparelClassification(MultiLabelDataset):
    """Apparel ``set`` ('train' or 'val') under ``root``; items as in ``MultiLabelDataset``.
    Pass ``image_label`` (path of the official pickle) for the official one-folder layout."""

    def __init__(self, root, set, transform=None, target_transform=None, inp_name=None, image_label=None,
                 download=True, skip_corrupt=False):
        self.root = root
        self.set = set
        source = root if image_label is None else image_label
        super().__init__(read_samples(root, set, image_label, download), CLASSES, dataset='apparel', source=source,
                         description=f'Apparel {set}', inp_name=inp_name, transform=transform,
                         target_transform=target_transform, download=download, skip_corrupt=skip_corrupt)


DATASET = DatasetSpec(
    name='apparel',
    title='Apparel (Kaggle apparel-images-dataset)',
    layout='holds the <colour>_<garment>/ folders, or all images with --image-label',
    loader=ApparelClassification,
    classes=CLASSES,
    splits=('train', 'val'),
    pool_ratio=0.2,
    save_dir='checkpoint/apparel',
    loader_flags=('image_label',),
)

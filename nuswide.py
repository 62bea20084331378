"""NUS-WIDE (81 concepts) on the ASL distribution: ``<root>/nus_wid_data.csv`` beside the images.

The csv has three columns, image path relative to root, label list (``"['clouds', 'sky']"``, may
be ``[]``) and split (``train`` or ``val``), after a header row (ASL's says
``filepath,label,split_name``). Every data row counts: the official loader dropped the first
row of each split as if it were a header.
"""
import csv
import os
import re

import numpy as np

from dataset_base import DatasetSpec, MultiLabelDataset
from errors import DatasetError

CLASSES = ['clouds', 'sky', 'person', 'street', 'window', 'tattoo', 'wedding', 'animal', 'cat', 'buildings',
           'tree', 'airport', 'plane', 'water', 'grass', 'cars', 'road', 'snow', 'sunset', 'railroad', 'train',
           'flowers', 'plants', 'house', 'military', 'horses', 'nighttime', 'lake', 'rocks', 'waterfall', 'sun',
           'vehicle', 'sports', 'reflection', 'temple', 'statue', 'ocean', 'town', 'beach', 'tower', 'toy', 'book',
           'bridge', 'fire', 'mountain', 'rainbow', 'garden', 'police', 'coral', 'fox', 'sign', 'dog', 'cityscape',
           'sand', 'dancing', 'leaf', 'tiger', 'moon', 'birds', 'food', 'cow', 'valley', 'fish', 'harbor', 'bear',
           'castle', 'boats', 'running', 'glacier', 'swimmers', 'elk', 'frost', 'protest', 'soccer', 'flags',
           'zebra', 'surf', 'whales', 'computer', 'earthquake', 'map']
SPLITS = ('train', 'val')
CSV_NAME = 'nus_wid_data.csv'
DOWNLOAD_HINT = ('get the ASL distribution of NUS-WIDE (images and nus_wid_data.csv, see docs/datasets.md) '
                 'and pass its folder')

_QUOTED = r"""(?:'[^']*'|"[^"]*")"""
_LABEL_LIST = re.compile(rf'\[\s*(?:{_QUOTED}\s*(?:,\s*{_QUOTED}\s*)*)?\]')
_INDEX = {name: i for i, name in enumerate(CLASSES)}


def parse_label_list(text):
    """``"['clouds', 'sky']"`` -> ['clouds', 'sky']; None if ``text`` is not such a list."""
    if not _LABEL_LIST.fullmatch(text.strip()):
        return None
    return [a or b for a, b in re.findall(r"""'([^']*)'|"([^"]*)\"""", text)]


def read_samples(root, split):
    """Return [(image path, csv path, float32 target [81])] of the rows of ``split``."""
    if split not in SPLITS:
        raise DatasetError(f'NUS-WIDE split {split!r} unknown; use one of {", ".join(SPLITS)}')
    path = os.path.join(root, CSV_NAME)
    if not os.path.isfile(path):
        where = f'{root}: dataset folder not found' if not os.path.isdir(root) else f'{path}: not found'
        raise DatasetError(f'{where}; {DOWNLOAD_HINT}')
    samples = []
    with open(path, newline='') as f:
        rows = csv.reader(f)
        for row in rows:
            if not row:
                continue
            if rows.line_num == 1 and len(row) == 3 and row[2] not in SPLITS:
                continue  # the header
            labels = parse_label_list(row[1]) if len(row) == 3 else None
            if labels is None or row[2] not in SPLITS:
                raise DatasetError(f'{path}:{rows.line_num}: expected "image path,[\'label\', ...],train|val", '
                                   f'found {",".join(row)!r}')
            unknown = [name for name in labels if name not in _INDEX]
            if unknown:
                raise DatasetError(f'{path}:{rows.line_num}: unknown concept {unknown[0]!r}; '
                                   f'expected the 81 NUS-WIDE concepts')
            if row[2] == split:
                target = np.full(len(CLASSES), -1, np.float32)
                target[[_INDEX[name] for name in labels]] = 1
                samples.append((os.path.join(root, row[0]), row[0], target))
    return samples


class NusWideClassification(MultiLabelDataset):
    """NUS-WIDE ``set`` ('train' or 'val') under ``root``; items as in ``MultiLabelDataset``.
    Nothing of NUS-WIDE itself is downloaded; ``download`` concerns the default word file."""

    def __init__(self, root, set, transform=None, target_transform=None, inp_name=None, download=True,
                 skip_corrupt=False):
        self.root = root
        self.set = set
        super().__init__(read_samples(root, set), CLASSES, dataset='nuswide', source=os.path.join(root, CSV_NAME),
                         description=f'NUS-WIDE {set}', inp_name=inp_name, transform=transform,
                         target_transform=target_transform, download=download, skip_corrupt=skip_corrupt)


DATASET = DatasetSpec(
    name='nuswide',
    title='NUS-WIDE (the ASL csv distribution)',
    layout='holds nus_wid_data.csv and the images it lists',
    loader=NusWideClassification,
    classes=CLASSES,
    splits=('train', 'val'),
    pool_ratio=0.05,
    save_dir='checkpoint/nuswide',
)

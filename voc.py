"""PASCAL VOC 2007 classification on the devkit layout (``VOCdevkit/VOC2007/...`` under root).

Labels come from ``ImageSets/Main/<class>_<split>.txt`` (1 present, -1 absent, 0 difficult) and are
cached per split in ``<root>/files/VOC2007/classification_<split>.csv`` as ML-GCN does, and
rebuilt when a label file's content changes. Missing sets are downloaded from the official site
(verified, resumable) and extracted safely.
"""
import csv
import os

import numpy as np

from dataset_base import DatasetSpec, MultiLabelDataset, cache_is_fresh, source_digests, write_cache
from download import Archive, download_and_extract
from errors import DatasetError

CLASSES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
           'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
           'train', 'tvmonitor']
SETS = ('trainval', 'test')

# The official URLs (as ML-GCN) first, then a mirror of the same files; sizes and sha256 of the
# published tars. The devkit tar is not fetched: it only holds MATLAB code, nothing read here.
ARCHIVES = {
    'trainval': Archive(('http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar',
                         'https://pjreddie.com/media/files/VOCtrainval_06-Nov-2007.tar'),
                        460032000, '7d8cd951101b0957ddfd7a530bdc8a94f06121cfc1e511bb5937e973020c7508'),
    'test': Archive(('http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar',
                     'https://pjreddie.com/media/files/VOCtest_06-Nov-2007.tar'),
                    451020800, '6836888e2e01dca84577a849d339fa4f73e1e4f135d312430c4856b5609b4892'),
}


def _voc_dir(root):
    return os.path.join(root, 'VOCdevkit', 'VOC2007')


def _label_file(root, cls, split):
    return os.path.join(_voc_dir(root), 'ImageSets', 'Main', f'{cls}_{split}.txt')


def cache_file(root, split):
    return os.path.join(root, 'files', 'VOC2007', f'classification_{split}.csv')


def _read_class_file(path):
    """Yield (line number, image id, label) from one ``<class>_<split>.txt``."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ('1', '0', '-1'):
                raise DatasetError(f'{path}:{lineno}: expected "<image id> <1|0|-1>", found {line.strip()!r}')
            yield lineno, fields[0], int(fields[1])


def read_object_labels(root, split):
    """Return {image id: int8 labels [20]} from the 20 class files, in the first file's order."""
    labels = {}
    for i, cls in enumerate(CLASSES):
        path = _label_file(root, cls, split)
        seen = set()
        for lineno, name, label in _read_class_file(path):
            if i == 0:
                labels[name] = np.zeros(len(CLASSES), np.int8)
            elif name not in labels:
                raise DatasetError(f'{path}:{lineno}: image {name} is not listed in '
                                   f'{_label_file(root, CLASSES[0], split)}')
            labels[name][i] = label
            seen.add(name)
        if len(seen) != len(labels):
            absent = next(name for name in labels if name not in seen)
            raise DatasetError(f'{path}: image {absent} is missing ({len(labels) - len(seen)} images of '
                               f'{_label_file(root, CLASSES[0], split)} are not listed); the file is incomplete')
    return labels


def write_labels_csv(f, labels):
    """Write the cache format: header ``name,<20 classes>``, one row of ints per image."""
    writer = csv.writer(f)
    writer.writerow(['name'] + CLASSES)
    for name, row in labels.items():
        writer.writerow([name] + [int(v) for v in row])


def read_labels_csv(path):
    """Read the cache back into {image id: int8 labels [20]}."""
    fix = 'delete it to rebuild it from the label files'
    with open(path, newline='') as f:
        rows = csv.reader(f)
        if next(rows, None) != ['name'] + CLASSES:
            raise DatasetError(f'{path}:1: header is not "name,{",".join(CLASSES)}"; {fix}')
        labels = {}
        for row in rows:
            try:
                values = np.array([int(v) for v in row[1:]], np.int8)
            except ValueError:
                values = None
            if len(row) != len(CLASSES) + 1 or values is None or not np.isin(values, (1, 0, -1)).all():
                raise DatasetError(f'{path}:{rows.line_num}: expected an image id and {len(CLASSES)} labels '
                                   f'in 1/0/-1; {fix}')
            labels[row[0]] = values
    return labels


def read_samples(root, split, download=False):
    """Return [(image path, image id, float32 target [20])] of ``split``, downloading it if allowed."""
    if split not in SETS:
        raise DatasetError(f'VOC 2007 split {split!r} unknown; use one of {", ".join(SETS)}')
    sources = [_label_file(root, cls, split) for cls in CLASSES]
    missing = [p for p in sources if not os.path.isfile(p)]
    if missing and any(os.path.isdir(os.path.join(root, inner, 'ImageSets')) for inner in ('', 'VOC2007')):
        raise DatasetError(f'{root}: this is a folder inside VOCdevkit/; pass the folder that holds VOCdevkit/')
    if missing and download:
        download_and_extract(ARCHIVES[split], root)
        missing = [p for p in sources if not os.path.isfile(p)]
    if missing:
        if not os.path.isdir(root):
            raise DatasetError(f'{root}: dataset folder not found; pass the folder that holds VOCdevkit/, '
                               f'or drop --no-download to let the script download it')
        raise DatasetError(f'{missing[0]}: not found; expected the VOC 2007 devkit layout under {root}: extract '
                           f'{os.path.basename(ARCHIVES[split].urls[0])} there, or drop --no-download to let the '
                           f'script download it')
    cache, digests = cache_file(root, split), source_digests(sources)
    if cache_is_fresh(cache, digests):
        labels = read_labels_csv(cache)
    else:
        labels = read_object_labels(root, split)
        write_cache(cache, lambda f: write_labels_csv(f, labels), digests, newline='')
    images = os.path.join(_voc_dir(root), 'JPEGImages')
    return [(os.path.join(images, name + '.jpg'), name, row.astype(np.float32)) for name, row in labels.items()]


class Voc2007Classification(MultiLabelDataset):
    """VOC 2007 ``set`` ('trainval' or 'test') under ``root``; items as in ``MultiLabelDataset``."""

    def __init__(self, root, set, transform=None, target_transform=None, inp_name=None, download=True,
                 skip_corrupt=False):
        self.root = root
        self.set = set
        super().__init__(read_samples(root, set, download), CLASSES, dataset='voc',
                         source=_label_file(root, CLASSES[0], set), description=f'VOC 2007 {set}',
                         inp_name=inp_name, transform=transform, target_transform=target_transform,
                         download=download, skip_corrupt=skip_corrupt)


DATASET = DatasetSpec(
    name='voc',
    title='PASCAL VOC 2007',
    layout='holds VOCdevkit/VOC2007; downloaded there when missing',
    loader=Voc2007Classification,
    classes=CLASSES,
    splits=('trainval', 'test'),
    pool_ratio=0.2,
    save_dir='checkpoint/voc2007',
)

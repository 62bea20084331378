"""MS-COCO 2014 classification on the layout the official zips unpack to, under root:
``train2014/``, ``val2014/`` and ``annotations/instances_{train,val}2014.json``.

The 80 classes are indexed by sorted category name and images without annotations are left out,
as in the official loader. The parsed labels are cached as ``<root>/cache/<phase>_anno.json``
(the official ``<phase>_anno.json`` format) and rebuilt when the annotation file's content changes.
"""
import collections
import json
import os

import numpy as np

from dataset_base import DatasetSpec, MultiLabelDataset, cache_is_fresh, source_digests, write_cache
from download import Archive, download_and_extract
from errors import DatasetError

CLASSES = sorted([
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush'])
PHASES = ('train', 'val')

ARCHIVES = {  # the official URLs; sizes and sha256 of the published zips
    'train': Archive(('http://images.cocodataset.org/zips/train2014.zip',),
                     13510573713, 'ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775'),
    'val': Archive(('http://images.cocodataset.org/zips/val2014.zip',),
                   6645013297, 'fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0'),
    'annotations': Archive(('http://images.cocodataset.org/annotations/annotations_trainval2014.zip',),
                           252872794, '031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009'),
}


def annotation_file(root, phase):
    return os.path.join(root, 'annotations', f'instances_{phase}2014.json')


def cache_file(root, phase):
    return os.path.join(root, 'cache', f'{phase}_anno.json')


def _load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f'{path}:{e.lineno}: not valid JSON ({e.msg}); {what}') from None


def _one_key(e):
    return repr(e.args[0]) if isinstance(e, KeyError) else f'({e})'


def parse_annotations(path):
    """Return the official ``<phase>_anno.json`` list: [{'file_name', 'labels'}] for each image
    with at least one annotation, in the order of ``images``; labels sorted class indices."""
    fix = 'expected a COCO instances_*.json file; download it again'
    ann = _load_json(path, fix)
    try:
        names = {c['id']: c['name'] for c in ann['categories']}
        if sorted(names.values()) != CLASSES:
            unknown = sorted(set(names.values()) ^ set(CLASSES))
            raise DatasetError(f'{path}: categories differ from the 80 COCO classes ({", ".join(unknown[:5])}); {fix}')
        index = {cat_id: CLASSES.index(name) for cat_id, name in names.items()}
        labels = collections.defaultdict(set)
        for a in ann['annotations']:
            if a['category_id'] not in index:
                raise DatasetError(f'{path}: annotation {a.get("id")} has unknown category_id '
                                   f'{a["category_id"]}; {fix}')
            labels[a['image_id']].add(index[a['category_id']])
        files = {}
        for img in ann['images']:
            if img['id'] in labels:
                files.setdefault(img['id'], img['file_name'])
    except (KeyError, TypeError) as e:
        raise DatasetError(f'{path}: missing or malformed field {_one_key(e)}; {fix}') from None
    return [{'file_name': name, 'labels': sorted(labels[image_id])} for image_id, name in files.items()]


def read_cache(path):
    """Read and check a ``<phase>_anno.json`` list."""
    fix = 'delete it to rebuild it from the annotation file'
    entries = _load_json(path, fix)
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get('file_name'), str) and isinstance(e.get('labels'), list)
        and all(isinstance(i, int) and 0 <= i < len(CLASSES) for i in e['labels']) for e in entries)
    if not ok:
        raise DatasetError(f'{path}: not a list of {{"file_name", "labels"}} with labels in '
                           f'0..{len(CLASSES) - 1}; {fix}')
    return entries


def _missing(root, path, part):
    return DatasetError(f'{path}: not found; extract {os.path.basename(ARCHIVES[part].urls[0])} into {root}, '
                        f'or drop --no-download to let the script download it')


def read_samples(root, phase, download=False):
    """Return [(image path, file name, float32 target [80])] of ``phase``, downloading if allowed."""
    if phase not in PHASES:
        raise DatasetError(f'COCO 2014 phase {phase!r} unknown; use one of {", ".join(PHASES)}')
    images = os.path.join(root, f'{phase}2014')
    ann, cache = annotation_file(root, phase), cache_file(root, phase)
    if not os.path.isdir(images) and download:
        download_and_extract(ARCHIVES[phase], root)
    digests = source_digests([ann]) if os.path.isfile(ann) else None
    cached = os.path.isfile(cache) and (digests is None or cache_is_fresh(cache, digests))
    if not cached and not os.path.isfile(ann) and download:
        download_and_extract(ARCHIVES['annotations'], root)
    if not os.path.isdir(root):
        raise DatasetError(f'{root}: dataset folder not found; drop --no-download to let the script download '
                           f'it, or pass the folder that holds {phase}2014/ and annotations/')
    if not os.path.isdir(images):
        raise _missing(root, images, phase)
    if cached:
        entries = read_cache(cache)
    elif not os.path.isfile(ann):
        raise _missing(root, ann, 'annotations')
    else:
        entries = parse_annotations(ann)
        write_cache(cache, lambda f: json.dump(entries, f), digests)
    samples = []
    for e in entries:
        target = np.full(len(CLASSES), -1, np.float32)
        target[e['labels']] = 1
        samples.append((os.path.join(images, e['file_name']), e['file_name'], target))
    return samples


class COCO2014(MultiLabelDataset):
    """COCO 2014 ``phase`` ('train' or 'val') under ``root``; items as in ``MultiLabelDataset``."""

    def __init__(self, root, transform=None, phase='train', inp_name=None, target_transform=None, download=True,
                 skip_corrupt=False):
        self.root = root
        self.phase = phase
        super().__init__(read_samples(root, phase, download), CLASSES, dataset='coco',
                         source=annotation_file(root, phase), description=f'COCO 2014 {phase}',
                         inp_name=inp_name, transform=transform, target_transform=target_transform,
                         download=download, skip_corrupt=skip_corrupt)


DATASET = DatasetSpec(
    name='coco',
    title='MS-COCO 2014',
    layout='holds train2014/, val2014/, annotations/; downloaded there when missing',
    loader=lambda root, split, **options: COCO2014(root, phase=split, **options),
    classes=CLASSES,
    splits=('train', 'val'),
    pool_ratio=0.05,
    image_size=448,  # the official COCO script's defaults
    workers=24,
    save_dir='checkpoint/coco',
)

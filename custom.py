"""Your own multi-label data: a folder with ``train.csv`` and ``val.csv`` (docs/datasets.md, "Your own data").

- ``<split>.csv``: header ``filepath,labels``; ``filepath`` relative to the folder, ``labels`` the
  image's labels separated by ``|`` (an empty field: no label). UTF-8; a BOM is fine.
- ``classes.txt`` (optional): one class name per line, fixing the class order; without it the
  classes are the training labels in sorted (code point) order.
- Or, instead of the split files, one CSV with header ``filepath,label,split_name`` (the ASL
  form of NUS-WIDE), labels as ``['a', 'b']`` or ``a|b``.

Names are compared after stripping surrounding spaces and Unicode NFC normalisation, so ``café``
typed with a combining accent is the same class. Without ``-graph_file`` the demo script builds
the label graph with :func:`build_label_graph`; without ``-word_file`` the classes get
:func:`label_files.fallback_word_vectors`.
"""
import csv
import io
import os
import unicodedata

import numpy as np

import distributed
import label_files
import nuswide
from dataset_base import MultiLabelDataset, missing_paths
from errors import DatasetError

HEADER = ['filepath', 'labels']
SINGLE_HEADER = ['filepath', 'label', 'split_name']
TRAIN = 'train'
CLASSES_NAME = 'classes.txt'
GRAPH_NAME = 'label_graph.npz'
SEPARATOR = '|'
HINT = 'see docs/datasets.md, "Your own data"'


def _name(text):
    return unicodedata.normalize('NFC', text.strip())


def _read_text(path):
    """The text of a UTF-8 file, or DatasetError naming the line of the first undecodable byte."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise DatasetError(f'{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8 '
                           f'(spreadsheets: "CSV UTF-8")') from None


def _csv_path(root, split):
    """(path, header) of the CSV that holds ``split``: ``<split>.csv``, else the folder's only CSV
    in the single-file form."""
    if not os.path.isdir(root):
        raise DatasetError(f'{root}: dataset folder not found; pass the folder that holds train.csv and val.csv')
    path = os.path.join(root, f'{split}.csv')
    if os.path.isfile(path):
        return path, HEADER
    if not os.path.isfile(os.path.join(root, f'{TRAIN}.csv')):
        found = sorted(name for name in os.listdir(root) if name.lower().endswith('.csv'))
        if len(found) == 1:
            return os.path.join(root, found[0]), SINGLE_HEADER
    raise DatasetError(f'{path}: not found; expected {split}.csv with header "{",".join(HEADER)}" in {root} ({HINT})')


def _labels(field, path, lineno, lists):
    """The label names of one CSV field: ``a|b``, ``''`` (none), or with ``lists`` (the ASL form)
    also ``['a', 'b']``."""
    if lists and field.lstrip().startswith('['):
        names = nuswide.parse_label_list(field)
        if names is None:
            raise DatasetError(f'{path}:{lineno}: labels {field!r} are not a list like [\'a\', \'b\'] nor a|b')
    else:
        names = field.split(SEPARATOR) if field.strip() else []
    names = [_name(n) for n in names]
    if '' in names:
        raise DatasetError(f'{path}:{lineno}: empty label name in {field!r}; separate labels with a single "|"')
    return names


def read_rows(root, split):
    """Return (csv path, [(line number, filepath, [label names])]) of ``split``, checking the header,
    the fields and that no image is listed twice."""
    path, header = _csv_path(root, split)
    rows = csv.reader(io.StringIO(_read_text(path), newline=''))
    found = next(rows, None)
    if found is None or [field.strip().lower() for field in found] != header:
        shown = ','.join(found) if found else 'nothing'
        raise DatasetError(f'{path}:1: header is {shown!r}, expected "{",".join(header)}" ({HINT})')
    entries, seen = [], {}
    for row in rows:
        lineno = rows.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(f'{path}:{lineno}: expected {len(header)} fields ({",".join(header)}), found '
                               f'{len(row)}; quote a field that holds a comma')
        if not row[0].strip():
            raise DatasetError(f'{path}:{lineno}: empty filepath')
        key = os.path.normpath(row[0].strip())
        if key in seen:
            raise DatasetError(f'{path}:{lineno}: image {row[0]} is already listed on line {seen[key]}; '
                               f'give each image one row with all its labels')
        seen[key] = lineno
        if header == HEADER or row[2].strip() == split:
            entries.append((lineno, row[0].strip(), _labels(row[1], path, lineno, header == SINGLE_HEADER)))
    return path, entries


def read_classes(root, classes=None):
    """Return (class names, why another label is not a class): ``classes`` if given (e.g. a
    checkpoint's), else ``classes.txt``, else the sorted set of the training labels."""
    if classes is not None:
        return [_name(c) for c in classes], f'it is not among the {len(classes)} classes given (the checkpoint\'s)'
    path = os.path.join(root, CLASSES_NAME)
    if os.path.isfile(path):
        names, seen = [], {}
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            name = _name(line)
            if not name:
                continue
            if name in seen:
                raise DatasetError(f'{path}:{lineno}: class {name!r} is already listed on line {seen[name]}')
            if SEPARATOR in name:
                raise DatasetError(f'{path}:{lineno}: class {name!r} holds "{SEPARATOR}", the label separator')
            seen[name] = lineno
            names.append(name)
        if not names:
            raise DatasetError(f'{path}: no class names; list one per line, or delete the file to use the '
                               f'training labels')
        return names, f'it is not in {path}'
    train_path, entries = read_rows(root, TRAIN)
    if not entries:
        raise DatasetError(f'{train_path}: no images in {TRAIN}; list them below the header ({HINT})')
    names = sorted({n for _, _, labels in entries for n in labels})
    if not names:
        raise DatasetError(f'{train_path}: no image has a label, so there are no classes; label the images '
                           f'or list the classes in {CLASSES_NAME}')
    where = os.path.basename(train_path)
    return names, f'it never occurs in {where if where == f"{TRAIN}.csv" else f"the {TRAIN} rows of {where}"}'


def read_samples(root, split, classes=None):
    """Return [(image path, filepath as listed, float32 target [C] of 1/-1)] of ``split``, the
    classes as :func:`read_classes`; every label must be a class and every image present."""
    return _samples(root, split, *read_classes(root, classes))


def _samples(root, split, classes, not_a_class):
    index = {name: i for i, name in enumerate(classes)}
    path, entries = read_rows(root, split)
    samples = []
    for lineno, filepath, labels in entries:
        unknown = [n for n in labels if n not in index]
        if unknown:
            shown = ', '.join(map(repr, classes[:6])) + (', ...' if len(classes) > 6 else '')
            raise DatasetError(f'{path}:{lineno}: label {unknown[0]!r} is not a class: {not_a_class} '
                               f'(the {len(classes)} classes: {shown})')
        target = np.full(len(classes), -1, np.float32)
        target[[index[n] for n in labels]] = 1
        samples.append((os.path.join(root, filepath), filepath, target))
    missing = missing_paths([image for image, _, _ in samples])
    if missing:
        lineno, filepath, _ = entries[missing[0]]
        raise DatasetError(f'{path}:{lineno}: image {filepath} not found in {root} ({len(missing)} of '
                           f'{len(samples)} listed images are missing); filepath is relative to the dataset folder')
    return samples


class CustomClassification(MultiLabelDataset):
    """``split`` ('train', 'val', ...) of your own data under ``root``; items as in
    ``MultiLabelDataset``. ``classes`` (e.g. restored from a checkpoint) overrides ``classes.txt``
    and the training labels. ``download`` only concerns an official word file passed as ``inp_name``."""

    def __init__(self, root, split, transform=None, target_transform=None, inp_name=None, download=True,
                 skip_corrupt=False, classes=None):
        self.root = root
        self.split = split
        classes, not_a_class = read_classes(root, classes)
        self.source, _ = _csv_path(root, split)
        super().__init__(_samples(root, split, classes, not_a_class), classes, dataset=None, source=self.source,
                         description=f'{os.path.basename(os.path.normpath(root))} {split}', inp_name=inp_name,
                         transform=transform, target_transform=target_transform, download=download,
                         skip_corrupt=skip_corrupt)


def build_label_graph(train_set, save_dir):
    """The co-occurrence graph of ``train_set``'s labels (as tools/build_adj.py), saved to
    ``<save_dir>/label_graph.npz`` so that it can be passed as -graph_file later."""
    graph = label_files.build_adjacency(train_set.targets.numpy())
    path = os.path.join(save_dir, GRAPH_NAME)
    if distributed.is_main_process():
        label_files.save(path, graph)
    print(f'[graph] no -graph_file: built the label graph from the {len(train_set)} images of {train_set.source} '
          f'({int(graph["adj"].sum()) // 2} co-occurring label pairs), saved to {path}')
    return graph

"""Your own multi-label data: a folder with ``train.csv`` and ``val.csv`` (docs/datasets.md, "Your own data").

- ``<split>.csv``: header ``filepath,labels``; ``filepath`` relative to the folder, ``labels`` the
  image's labels separated by ``|`` (an empty field: no label). UTF-8; a BOM is fine. More columns
  after these two (the probabilities of a ``predict.py --out`` CSV) are ignored, with one line
  saying so.
- ``classes.txt`` (optional): one class name per line, fixing the class order; without it the
  classes are the training labels in sorted (code point) order.
- Or, instead of the split files, one CSV with header ``filepath,label,split_name`` (the ASL
  form of NUS-WIDE), labels as ``['a', 'b']`` or ``a|b``.

Names are compared after stripping surrounding spaces and Unicode NFC normalisation, so ``café``
typed with a combining accent is the same class. Class names from ``classes.txt`` or the training
labels may not differ from one another only in case (``Tree``, ``tree``) nor hold a comma (``sun,tree``
quoted is one field, not two labels): both are errors. A ``filepath`` not found as written is
looked up again with ``\\`` read as a folder separator (Windows paths). An image listed in
``train.csv`` and in another split is a warning. Without ``-graph_file`` the demo script builds
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
from dataset_base import DatasetSpec, MultiLabelDataset, missing_paths
from errors import DatasetError
from run_folder import GRAPH_NAME, RunFolder

HEADER = ['filepath', 'labels']
SINGLE_HEADER = ['filepath', 'label', 'split_name']
TRAIN = 'train'
CLASSES_NAME = 'classes.txt'
SEPARATOR = '|'
OTHER_FIELD_SEPARATORS = {';': "';'", '\t': 'tabs'}  # what spreadsheets write instead of commas
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


def _image_key(filepath):
    """What identifies a listed image: its path with either folder separator, normalised."""
    return os.path.normpath(filepath.strip().replace('\\', '/'))


def _rows_of(path, split):
    """``train.csv``, or ``the train rows of data.csv`` in the one-CSV form: where ``split`` is listed."""
    name = os.path.basename(path)
    return name if name == f'{split}.csv' else f'the {split} rows of {name}'


def _wrong_separator(fields):
    """How the single field of a row split by the wrong separator is separated (e.g. "';'"), or None."""
    if len(fields) == 1:
        return next((said for sep, said in OTHER_FIELD_SEPARATORS.items() if sep in fields[0]), None)
    return None


def _separator_fix(separator):
    return (f'fields are separated by {separator}, but the separator must be a comma; save the file as '
            f'comma-separated CSV (spreadsheets: "CSV UTF-8")')


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
    separator = _wrong_separator(found or [])
    if separator:
        raise DatasetError(f'{path}:1: header is {found[0]!r}: {_separator_fix(separator)}')
    names = [field.strip().lower() for field in found or []]
    extra = header == HEADER and len(names) > len(header)   # e.g. predict.py's probability columns
    if names[:len(header)] != header or (len(names) > len(header) and not extra):
        shown = ','.join(found) if found else 'nothing'
        raise DatasetError(f'{path}:1: header is {shown!r}, expected "{",".join(header)}" ({HINT})')
    if extra:
        _note_extra_columns(path, found[len(header):])
    expected = ','.join(header) + (',...' if extra else '')
    entries, seen = [], {}
    for row in rows:
        lineno = rows.line_num
        if not row:
            continue
        if len(row) != len(found):
            separator = _wrong_separator(row)
            if separator:
                fix = _separator_fix(separator)
            elif len(row) > len(found):
                fix = f'separate labels with "{SEPARATOR}", and quote a filepath that holds a comma'
            else:
                fix = f'write each row as "{expected}"'
            raise DatasetError(f'{path}:{lineno}: expected {len(found)} fields ({expected}), found '
                               f'{len(row)}; {fix}')
        if not row[0].strip():
            raise DatasetError(f'{path}:{lineno}: empty filepath')
        key = (split if header == HEADER else row[2].strip(), _image_key(row[0]))  # across splits: a warning
        if key in seen:
            raise DatasetError(f'{path}:{lineno}: image {row[0]} is already listed on line {seen[key]}; '
                               f'give each image one row with all its labels')
        seen[key] = lineno
        if header == HEADER or row[2].strip() == split:
            entries.append((lineno, row[0].strip(), _labels(row[1], path, lineno, header == SINGLE_HEADER)))
    return path, entries


_noted = set()   # the CSV files whose extra columns were announced, once per process


def _note_extra_columns(path, columns):
    """Say once per file that columns after ``filepath,labels`` (predict.py's probabilities) are not read."""
    key = os.path.abspath(path)
    if key not in _noted:
        _noted.add(key)
        shown = ','.join(columns[:3]) + (',...' if len(columns) > 3 else '')
        print(f'[dataset] {path}: reading filepath,labels; the {len(columns)} other columns ({shown}) are ignored')


def _labels_fix(name):
    """What to write instead of a label that holds commas: 'separate labels with "|" (a|b)'."""
    return f'separate labels with "{SEPARATOR}" ({SEPARATOR.join(part.strip() for part in name.split(","))})'


def _check_class_name(name, path, lineno, folded, kind):
    """Raise DatasetError if ``name``, a ``kind`` ('class' or 'label') on line ``lineno`` of ``path``,
    holds a comma or differs only in case from a name of ``folded`` ({case-folded name: (name, line)});
    else add it there."""
    if ',' in name:
        fix = 'list one class per line' if kind == 'class' else _labels_fix(name)
        raise DatasetError(f'{path}:{lineno}: {kind} {name!r} holds a comma; {fix}: a class name cannot hold a comma')
    other, line = folded.setdefault(name.casefold(), (name, lineno))
    if other != name:
        raise DatasetError(f'{path}:{lineno}: {kind} {name!r} differs only in case from {other!r} on line {line}, '
                           f'which would make them two classes; unify the spelling')


def read_classes(root, classes=None):
    """Return (class names, why another label is not a class): ``classes`` if given (e.g. a
    checkpoint's: taken as they are), else ``classes.txt``, else the sorted set of the training labels."""
    if classes is not None:
        return [_name(c) for c in classes], f'it is not among the {len(classes)} classes given (the checkpoint\'s)'
    path = os.path.join(root, CLASSES_NAME)
    folded = {}
    if os.path.isfile(path):
        names, seen = [], {}
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            name = _name(line)
            if not name:
                continue
            if name in seen:
                raise DatasetError(f'{path}:{lineno}: class {name!r} is already listed on line {seen[name]}')
            if SEPARATOR in name:
                raise DatasetError(f'{path}:{lineno}: class {name!r} holds "{SEPARATOR}", the label separator; '
                                   f'list one class per line')
            _check_class_name(name, path, lineno, folded, 'class')
            seen[name] = lineno
            names.append(name)
        if not names:
            raise DatasetError(f'{path}: no class names; list one per line, or delete the file to use the '
                               f'training labels')
        return names, f'it is not in {path}'
    train_path, entries = read_rows(root, TRAIN)
    if not entries:
        raise DatasetError(f'{train_path}: no images in {TRAIN}; list them below the header ({HINT})')
    for lineno, _, labels in entries:
        for name in labels:
            _check_class_name(name, train_path, lineno, folded, 'label')
    names = sorted({name for name, _ in folded.values()})
    if not names:
        raise DatasetError(f'{train_path}: no image has a label, so there are no classes; label the images '
                           f'or list the classes in {CLASSES_NAME}')
    return names, f'it never occurs in {_rows_of(train_path, TRAIN)}'


def read_samples(root, split, classes=None):
    """Return [(image path, filepath as listed, float32 target [C] of 1/-1)] of ``split``, the
    classes as :func:`read_classes`; every label must be a class and every image present."""
    return _samples(root, split, *read_classes(root, classes))


def _not_a_class(name, classes, not_a_class):
    """Why label ``name`` is not one of ``classes`` and what to change."""
    if ',' in name:
        return f'{not_a_class}; {_labels_fix(name)}: a class name cannot hold a comma'
    same = [c for c in classes if c.casefold() == name.casefold()]
    if same:
        return f'{not_a_class}; class {same[0]!r} differs only in case: unify the spelling'
    shown = ', '.join(map(repr, classes[:6])) + (', ...' if len(classes) > 6 else '')
    return f'{not_a_class} (the {len(classes)} classes: {shown})'


def _image_paths(root, filepaths):
    """The paths of the listed ``filepaths``, with ``\\`` read as a folder separator (Windows) for
    those not found as written; and the indices of those not found either way."""
    paths = [os.path.join(root, filepath) for filepath in filepaths]
    retry = [i for i in missing_paths(paths) if '\\' in filepaths[i]]
    retried = [os.path.join(root, filepaths[i].replace('\\', '/')) for i in retry]
    not_found = set(missing_paths(retried))
    for j, i in enumerate(retry):
        if j not in not_found:
            paths[i] = retried[j]
    return paths, missing_paths(paths)


def _samples(root, split, classes, not_a_class):
    index = {name: i for i, name in enumerate(classes)}
    path, entries = read_rows(root, split)
    targets = []
    for lineno, _, labels in entries:
        unknown = [n for n in labels if n not in index]
        if unknown:
            raise DatasetError(f'{path}:{lineno}: label {unknown[0]!r} is not a class: '
                               f'{_not_a_class(unknown[0], classes, not_a_class)}')
        target = np.full(len(classes), -1, np.float32)
        target[[index[n] for n in labels]] = 1
        targets.append(target)
    filepaths = [filepath for _, filepath, _ in entries]
    paths, missing = _image_paths(root, filepaths)
    if missing:
        lineno, filepath, _ = entries[missing[0]]
        raise DatasetError(f'{path}:{lineno}: image {filepath} not found in {root} ({len(missing)} of '
                           f'{len(entries)} listed images are missing); filepath is relative to the dataset folder, '
                           f'with "/" or "\\" between folders')
    return list(zip(paths, filepaths, targets))


def shared_with_training(root, split, filepaths):
    """The ``filepaths`` of ``split`` that the training split lists too (none for the training split,
    or with no readable training split, as when evaluating a checkpoint on val.csv alone)."""
    if split == TRAIN:
        return []
    try:
        _, entries = read_rows(root, TRAIN)
    except DatasetError:
        return []
    listed = {_image_key(filepath) for _, filepath, _ in entries}
    return [filepath for filepath in filepaths if _image_key(filepath) in listed]


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
        shared = shared_with_training(root, split, self.names)
        if shared:  # often a mistake, sometimes wanted: said, not refused
            shown = ', '.join(shared[:3]) + (', ...' if len(shared) > 3 else '')
            print(f'[dataset] warning: {len(shared)} of the {len(self)} images of {_rows_of(self.source, split)} '
                  f'are also in {_rows_of(_csv_path(root, TRAIN)[0], TRAIN)} ({shown}); scores on them do not '
                  f'measure generalisation: list each image in one split only')


def build_label_graph(train_set, save_dir):
    """The co-occurrence graph of ``train_set``'s labels (as tools/build_adj.py), saved to
    ``<save_dir>/label_graph.npz`` so that it can be passed as -graph_file later."""
    graph = label_files.build_adjacency(train_set.targets.numpy())
    folder = RunFolder(save_dir)
    path = folder.write_graph(graph) if distributed.is_main_process() else folder.file(GRAPH_NAME)
    print(f'[graph] no -graph_file: built the label graph from the {len(train_set)} images of {train_set.source} '
          f'({int(graph["adj"].sum()) // 2} co-occurring label pairs), saved to {path}')
    return graph


DATASET = DatasetSpec(
    name='custom',
    title='your own data (train.csv and val.csv, see docs/datasets.md)',
    layout='holds train.csv and val.csv (header filepath,labels; labels separated by |), optionally classes.txt',
    loader=CustomClassification,
    splits=('train', 'val'),
    pool_ratio=0.2,
    save_dir='checkpoint/custom',
    build_graph=build_label_graph,  # no official label files: the graph is built from train.csv
)

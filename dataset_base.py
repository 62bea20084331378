"""What the dataset loaders share: the description a demo script runs (``DatasetSpec``), the item
format, word vectors and image checks.

A loader parses its annotation format into samples ``(image path, name, target)`` with targets
in {1, 0, -1} (0 = difficult, VOC only) and hands them to ``MultiLabelDataset``, which serves
``((image, name, word_vectors), target)`` as the official loaders do.
"""
import concurrent.futures
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.utils.data as data
from PIL import Image
from tqdm import tqdm

import label_files
from checkpoint import atomic_write
from download import sha256sum
from errors import DatasetError


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the demo scripts run it: each loader module defines its ``DATASET``."""
    name: str              # short name: official files under data/<name>/, messages
    title: str             # the dataset's name in --help
    layout: str            # what the DIR argument holds, for --help
    loader: Callable       # loader(root, split, inp_name=, download=, skip_corrupt=[, classes=][, loader flags])
    splits: tuple          # (training split, evaluated split), as the loader names them
    pool_ratio: float      # default --pool_ratio (label groups K = int(pool_ratio x classes))
    save_dir: str          # default --save-dir, relative to the repository
    classes: Optional[Sequence[str]] = None  # the fixed class names; None: they come from the data
    image_size: Optional[int] = None  # default --image-size when the official script's differs from the loop's
    workers: Optional[int] = None     # default -j when the official script's differs from the loop's
    loader_flags: tuple = ()  # the extra loader flags this dataset takes (keys of cli.LOADER_FLAGS)
    # a dataset without official label files: builds the label graph from its training split,
    # build_graph(train_set, save_dir) -> {'adj', 'nums'}, and its word vectors fall back
    build_graph: Optional[Callable] = None


def one_line(e):
    return ' '.join(str(e).split())


# what PIL raises for a file that is not an image it can decode (truncated, corrupt, another type)
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_rgb(path):
    """``path`` as an RGB PIL image; raises one of IMAGE_ERRORS when it cannot be decoded."""
    with Image.open(path) as im:
        return im.convert('RGB')


def read_image(path):
    """Open ``path`` as an RGB PIL image, or raise DatasetError naming the file."""
    try:
        return open_rgb(path)
    except FileNotFoundError:
        # neutral: predict.py reads images of no dataset; a dataset's are checked by check_present first
        raise DatasetError(f'{path}: image not found; check the path') from None
    except IMAGE_ERRORS as e:
        raise DatasetError(f'{path}: cannot read image ({one_line(e)}); replace the file, or leave unreadable '
                           f'images out with --skip-corrupt') from e


def _unreadable(path):
    """Return why ``path`` cannot be decoded, or None. JPEGs are decoded at 1/8 scale: the whole
    file is still read, so truncation shows, at a fraction of the cost."""
    try:
        with Image.open(path) as im:
            im.draft('RGB', (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except IMAGE_ERRORS as e:
        return one_line(e)
    return None


def source_digests(paths):
    """{file name: sha256} of the files a cache is built from (their content, not their times:
    an edit within the file system's time resolution keeps size and modification time)."""
    return {os.path.basename(path): sha256sum(path) for path in paths}


def _sources_file(cache):
    return cache + '.sources.json'


def cache_is_fresh(cache, digests):
    """True if ``cache`` exists and ``write_cache`` wrote it from sources with these ``digests``."""
    try:
        with open(_sources_file(cache)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    return recorded == digests and os.path.isfile(cache)


def write_cache(path, write, digests, **open_kwargs):
    """Write a cache file with ``write(f)``, atomically (write, then rename), then record the
    ``digests`` of its sources beside it, in ``<path>.sources.json``. A read-only dataset folder
    still works: the cache is skipped and the labels are parsed again next time."""
    def write_file(tmp):
        with open(tmp, 'w', **open_kwargs) as f:
            write(f)

    def write_digests(tmp):
        with open(tmp, 'w') as f:
            json.dump(digests, f, indent=1)
    try:
        if os.path.exists(_sources_file(path)):  # until both are written, the old record must not vouch
            os.remove(_sources_file(path))
        atomic_write(path, write_file)
        atomic_write(_sources_file(path), write_digests)
    except OSError as e:
        print(f'[dataset] cannot write the cache {path} ({e}); the labels will be parsed again next time')


def missing_paths(paths):
    """The indices of ``paths`` that do not exist; one listing per folder, not one stat per file."""
    listed = {}
    missing = []
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listed:
            listed[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if name not in listed[folder]:
            missing.append(i)
    return missing


def check_present(paths, source):
    """Raise DatasetError naming the first of ``paths`` that does not exist."""
    missing = [paths[i] for i in missing_paths(paths)]
    if missing:
        raise DatasetError(f'{missing[0]}: image listed in {source} not found ({len(missing)} of {len(paths)} '
                           f'listed images are missing); check the dataset root, or download/extract the images again')


class MultiLabelDataset(data.Dataset):
    """Serves ``((image, name, word_vectors), target)``: image after ``transform`` (PIL if None),
    name a string, word_vectors the float32 tensor [C, 300] shared by every item, target a float32
    tensor [C] (1 positive, -1 negative, 0 difficult) after ``target_transform``.

    The word vectors come from ``inp_name``: the vectors [C, 300] themselves (e.g. a checkpoint's),
    or a word-vector or GloVe text file (see :func:`label_files.class_word_vectors`), by default
    the official file of ``dataset``; a dataset without official files (``dataset=None``) falls
    back to vectors made from the class names.

    ``transform`` and ``target_transform`` are public: the engine sets them after construction.
    With ``skip_corrupt`` every image is decoded once here and unreadable ones are left out and
    reported; without it an unreadable image raises DatasetError when it is loaded.
    """

    def __init__(self, samples, classes, *, dataset, source, description, inp_name=None, transform=None,
                 target_transform=None, download=True, skip_corrupt=False):
        if not samples:
            raise DatasetError(f'{source}: no images in {description}; check the split name and the file')
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        if isinstance(inp_name, np.ndarray):
            self.inp_name, self.inp = None, torch.from_numpy(self._check_word_vectors(inp_name))
        else:  # the file read, if any
            self.inp_name = inp_name or (label_files.default_file(dataset, 'word') if dataset else None)
            self.inp = torch.from_numpy(label_files.class_word_vectors(self.inp_name, self.classes, download=download))
        check_present([path for path, _, _ in samples], source)
        self.skipped = self._unreadable_samples(samples, source) if skip_corrupt else []
        if self.skipped:
            bad = {path for path, _ in self.skipped}
            samples = [s for s in samples if s[0] not in bad]
            if not samples:
                raise DatasetError(f'{source}: every image of {description} is unreadable')
        self.transform = transform
        self.target_transform = target_transform
        self.paths = [path for path, _, _ in samples]
        self.names = [name for _, name, _ in samples]
        self.targets = torch.from_numpy(np.stack([target for _, _, target in samples]).astype(np.float32))
        print(f'[dataset] {description}: {len(self)} images, {self.num_classes} classes')

    def _check_word_vectors(self, vectors):
        """Word vectors given as an array (e.g. from a checkpoint): float32 [C, 300] or DatasetError."""
        if vectors.shape != (self.num_classes, label_files.WORD_DIM):
            raise DatasetError(f'word vectors have shape {list(vectors.shape)}, expected '
                               f'[{self.num_classes}, {label_files.WORD_DIM}] for the dataset\'s classes')
        return vectors.astype(np.float32)

    @staticmethod
    def _unreadable_samples(samples, source):
        """Return [(path, reason)] for the images that cannot be decoded, and print the count."""
        paths = [path for path, _, _ in samples]
        workers = min(8, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
            reasons = list(tqdm(pool.map(_unreadable, paths), total=len(paths), desc='checking images',
                                disable=len(paths) < 1000))
        skipped = [(path, why) for path, why in zip(paths, reasons) if why is not None]
        if skipped:
            shown = '; '.join(f'{path} ({why})' for path, why in skipped[:3])
            more = f'; and {len(skipped) - 3} more' if len(skipped) > 3 else ''
            print(f'[dataset] skipped {len(skipped)} of {len(paths)} unreadable images listed in {source}: '
                  f'{shown}{more}')
        return skipped

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        img = read_image(self.paths[index])
        if self.transform is not None:
            img = self.transform(img)
        target = self.targets[index].clone()
        if self.target_transform is not None:
            target = self.target_transform(target)
        return (img, self.names[index], self.inp), target

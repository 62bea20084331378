"""Read, check and make the label-graph, word-vector and image-label files that MSRN needs.

Formats (the official ones, see docs/datasets.md):
- graph file: pickle of ``{'adj': C×C co-occurrence counts, 'nums': C per-class counts}``,
  or ``.npz`` with arrays ``adj`` and ``nums``; :func:`build_adjacency` makes one from labels.
- word file: pickle of a C×300 array (or a list of C lists), or ``.npy`` / ``.npz`` (one array);
  or a GloVe text file (``word v1 ... v300`` per line), from which :func:`class_word_vectors`
  takes the class names' words. Without a word file, :func:`fallback_word_vectors`.
- Apparel ``image_label.pkl``: dict image file name -> C ints, 0 = present, -1 = absent.

Pickles are read with an unpickler that only admits plain containers and numpy arrays, so a
tampered file cannot run code; still, only use files from sources you trust.

The official files live under ``data/<dataset>/``; when one of them is missing it is downloaded
from the official repository and checked against the sha256 pinned below.
"""
import functools
import hashlib
import io
import os
import pickle

import numpy as np

from download import download_file
from errors import DatasetError


class LabelFileError(DatasetError):
    """A graph, word-vector or image-label file is missing, unreadable or has the wrong shape."""


WORD_DIM = 300  # GloVe vectors of the class names
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
# Module constants, read at call time, so tests can point them at a local server and folder.
BASE_URL = 'https://raw.githubusercontent.com/chehao2628/MSRN/main/data'
OFFICIAL_SHA256 = {
    'voc/voc_adj.pkl': 'e5ce7a18b115603acae0983ed85d94a38d2456d6796ea15f65dbeed2b0d996b0',
    'voc/voc_glove_word2vec.pkl': '0ca7081ae4d373e9c174c1ce25ed5d416e43c9d25b2f51462e9b6dbd6ffc3970',
    'coco/coco_adj.pkl': '351765f9684a6aa9a6025d0c76c2c5488cd54183a4601a91dc39cf62dffe4c08',
    'coco/coco_glove_word2vec.pkl': 'a1215dd18e1e5f9560a4b25be4df5cbc83f02461f03774602492640a6c58ddf8',
    'nuswide/nuswide_adj.pkl': '53c86543c29d617ecbf5d722cfa1702ca7815016139572d8bcd2caa03d7b7598',
    'nuswide/nuswide_glove_word2vec.pkl': '5ac6bd3f3263f03e669bf998ecd03f11c2f07e549290c7922cdcf5f433243605',
    'apparel/apparel_adj.pkl': 'ba5dad3929e7beb506828bdb39bfd657de937aa5b4a15ff8e7d4545afe8553cf',
    'apparel/apparel_glove_word2vec.pkl': '5e0c5d236715a2ef93d8c57402ce3ae97bfeee40e4b402922eba51758dad4c7c',
    'apparel/image_label.pkl': 'd59ce818815f2d6ba292e7f797949bd8a3b47dc5e50a1a340846d8e67ea52545',
}


def default_file(dataset, kind):
    """Path of the official ``kind`` file ('graph', 'word' or, for apparel, 'image_label')."""
    name = {'graph': f'{dataset}_adj.pkl', 'word': f'{dataset}_glove_word2vec.pkl',
            'image_label': 'image_label.pkl'}[kind]
    return os.path.join(DATA_DIR, dataset, name)


def ensure_file(path, download=True):
    """Return ``path``; if it is a missing official file under ``DATA_DIR``, download it first."""
    if os.path.isfile(path):
        return path
    rel = os.path.relpath(os.path.abspath(path), DATA_DIR).replace(os.sep, '/')
    if rel not in OFFICIAL_SHA256:
        raise LabelFileError(f'{path}: file not found')
    url = f'{BASE_URL.rstrip("/")}/{rel}'
    if not download:
        raise LabelFileError(f'{path}: file not found; download {url} and save it as {os.path.abspath(path)}')
    return download_file(url, path, sha256=OFFICIAL_SHA256[rel])


# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
        return super().find_class(module, name)


def _read_pickle(path):
    with open(path, 'rb') as f:
        return _ArrayUnpickler(io.BytesIO(f.read())).load()


def _read(path, download):
    """Load a .pkl/.npy/.npz file into Python objects, or raise LabelFileError."""
    path = ensure_file(os.fspath(path), download)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == '.npy':
            return np.load(path, allow_pickle=False)
        if ext == '.npz':
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        return _read_pickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError, ImportError) as e:
        raise LabelFileError(f'{path}: cannot read ({e}); expected the official pickle, .npy or .npz format') from e


def save(path, obj):
    """Write a graph dict or word-vector array as ``.npz`` / ``.npy`` / pickle, by extension."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith('.npz') and isinstance(obj, dict):
        np.savez(path, **obj)
    elif path.endswith('.npz'):
        np.savez(path, obj)
    elif path.endswith('.npy'):
        np.save(path, obj)
    else:
        with open(path, 'wb') as f:
            # protocol 5 would store arrays through numpy's _frombuffer, which the reader above refuses
            pickle.dump(obj, f, protocol=4)


def load_adjacency(path, num_classes=None, download=True):
    """Return ``{'adj': float64 [C, C], 'nums': float64 [C]}`` from a graph file."""
    obj = _read(path, download)
    if not isinstance(obj, dict) or 'adj' not in obj or 'nums' not in obj:
        raise LabelFileError(f"{path}: expected a dict with keys 'adj' and 'nums' (co-occurrence and per-class counts)")
    adj = np.asarray(obj['adj'], dtype=np.float64)
    nums = np.asarray(obj['nums'], dtype=np.float64).reshape(-1)
    c = nums.shape[0]
    if adj.shape != (c, c):
        raise LabelFileError(f"{path}: 'adj' has shape {list(adj.shape)} but 'nums' has {c} classes; expected adj [{c}, {c}]")
    if num_classes is not None and c != num_classes:
        raise LabelFileError(f'{path}: graph has {c} classes but the dataset has {num_classes}; '
                             f'pass the graph file of this dataset (-graph_file)')
    if not (np.isfinite(adj).all() and np.isfinite(nums).all()) or (adj < 0).any() or (nums < 0).any():
        raise LabelFileError(f'{path}: counts must be finite and non-negative')
    return {'adj': adj, 'nums': nums}


def load_word_vectors(path, num_classes=None, dim=WORD_DIM, download=True):
    """Return the label word vectors as a float32 array [C, dim]."""
    obj = _read(path, download)
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise LabelFileError(f'{path}: expected one array of word vectors, found keys {sorted(obj)}')
        obj = next(iter(obj.values()))
    try:
        vectors = np.asarray(obj, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise LabelFileError(f'{path}: word vectors are not a numeric [classes, {dim}] array ({e})') from e
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise LabelFileError(f'{path}: word vectors have shape {list(vectors.shape)}, expected [classes, {dim}]')
    if num_classes is not None and vectors.shape[0] != num_classes:
        raise LabelFileError(f'{path}: {vectors.shape[0]} word vectors but the dataset has {num_classes} classes; '
                             f'pass the word file of this dataset (-word_file)')
    if not np.isfinite(vectors).all():
        raise LabelFileError(f'{path}: word vectors contain NaN or infinity')
    return vectors


def load_image_labels(path, num_classes, download=True):
    """Return the Apparel map image file name -> float32 target [C] (1 present, -1 absent), in file order.

    The official ``image_label.pkl`` marks a present label with 0 (and the official loader maps
    0 to 1); a file that uses 1 for present is refused rather than read as all-absent.
    """
    obj = _read(path, download)
    if not isinstance(obj, dict) or not obj:
        raise LabelFileError(f'{path}: expected a non-empty dict image file name -> list of {num_classes} labels')
    labels = {}
    for name, values in obj.items():
        target = np.asarray(values) if isinstance(values, (list, tuple, np.ndarray)) else None
        if not isinstance(name, str) or target is None or target.shape != (num_classes,) \
                or not np.isin(target, (0, -1)).all():
            raise LabelFileError(f'{path}: entry {name!r}: {values!r} is not {num_classes} labels of 0 (present) '
                                 f'or -1 (absent) as in the official image_label.pkl')
        labels[name] = np.where(target == 0, 1, -1).astype(np.float32)
    return labels


def build_adjacency(targets):
    """targets [N, C] in {1, 0, -1} -> {'adj': int64 [C, C], 'nums': int64 [C]}, as ML-GCN counted:
    adj[i, j] = images with labels i and j both present (diagonal 0), nums[i] = images with label i.
    Only 1 counts as present: VOC's 0 (difficult) counts as absent."""
    present = (np.asarray(targets) == 1).astype(np.int64)  # (N, C)
    adj = present.T @ present  # (C, C)
    np.fill_diagonal(adj, 0)
    return {'adj': adj, 'nums': present.sum(0)}


# VOC writes these class names as one word; GloVe knows their words apart
JOINED_NAMES = {'diningtable': 'dining table', 'pottedplant': 'potted plant', 'tvmonitor': 'tv monitor'}


def class_words(name):
    """The GloVe words of a class name: split on spaces, ``_`` and ``-``, lower-cased (GloVe 6B's
    vocabulary is lower case; ``lower`` rather than ``casefold``, which would turn ß into ss)."""
    return JOINED_NAMES.get(name, name).lower().replace('_', ' ').replace('-', ' ').split()


def read_glove(path, words, dim=300):
    """Return {word: float32 [dim]} for those of ``words`` found in the GloVe text file ``path``."""
    found = {}
    with open(path, 'rb') as f:
        for lineno, line in enumerate(f, 1):
            word, _, rest = line.partition(b' ')
            try:
                word = word.decode('utf-8')
            except UnicodeDecodeError as e:
                raise LabelFileError(f'{path}:{lineno}: not UTF-8 text ({e.reason}); expected a GloVe text file '
                                     f'("<word> <{dim} numbers>" per line)') from None
            if word in words and word not in found:  # GloVe lists a word once; keep the first anyway
                try:
                    vector = np.array(rest.split(), np.float32)
                except ValueError:
                    vector = None
                if vector is None or vector.shape != (dim,):
                    raise LabelFileError(f'{path}:{lineno}: expected "<word> <{dim} numbers>" for {word!r}, found '
                                         f'{"non-numbers" if vector is None else f"{vector.size} numbers"}')
                found[word] = vector
    return found


def fallback_word_vectors(classes, dim=300):
    """float32 [C, dim]: a fixed random unit vector per class, seeded by the sha256 of its name, so
    a class keeps its vector whatever the other classes and their order (bench/fallback_words.py
    measured the choice, see bench/RESULTS.md)."""
    vectors = []
    for name in classes:
        seed = int.from_bytes(hashlib.sha256(name.encode('utf-8')).digest()[:8], 'little')
        v = np.random.default_rng(seed).standard_normal(dim)
        vectors.append(v / np.linalg.norm(v))
    return np.array(vectors, np.float32).reshape(len(classes), dim)


def glove_word_vectors(classes, path, dim=300):
    """Return (float32 [C, dim], missing words, classes without vectors): each class the mean of
    the vectors of its words found in the GloVe text file ``path``; a class none of whose words is
    found gets its fallback vector, scaled to the others' mean norm so that it does not stand out."""
    words = [class_words(name) for name in classes]
    glove = read_glove(path, {w for ws in words for w in ws}, dim)
    vectors = fallback_word_vectors(classes, dim)
    known = [i for i, ws in enumerate(words) if any(w in glove for w in ws)]
    for i in known:
        vectors[i] = np.mean([glove[w] for w in words[i] if w in glove], axis=0)
    blind = [i for i in range(len(classes)) if i not in known]
    if known and blind:
        vectors[blind] *= np.linalg.norm(vectors[known], axis=1).mean()
    missing = sorted({w for ws in words for w in ws} - set(glove))
    return vectors, missing, [classes[i] for i in blind]


def is_glove_text(path):
    """Whether ``path`` is a text file rather than a pickle (protocol >= 2, as the official
    files), .npy or .npz."""
    if os.path.splitext(path)[1].lower() in ('.npy', '.npz', '.pkl', '.pickle'):
        return False
    with open(path, 'rb') as f:
        return f.read(1) not in (b'\x80', b'')


@functools.lru_cache(maxsize=4)
def _text_or_fallback_vectors(path, stamp, classes, dim):
    """Cached by file stamp: a loader's two splits read a GloVe file (1 GB for 6B.300d) and say
    what is missing once."""
    if path is None:
        print('[words] no word file: each class gets a fixed random unit vector seeded by its name '
              '(docs/datasets.md, "Word vectors"); pass -word_file glove.6B.300d.txt for GloVe vectors')
        return fallback_word_vectors(classes, dim)
    vectors, missing, blind = glove_word_vectors(classes, path, dim)
    print(f'[words] {len(classes)} class vectors from the GloVe text file {path}'
          + (f'; no vector for {", ".join(map(repr, missing))}' if missing else '')
          + (f'; {", ".join(map(repr, blind))} got the fallback vector (no word found)' if blind else ''))
    return vectors


def class_word_vectors(path, classes, dim=300, download=True):
    """Word vectors float32 [C, dim] of ``classes`` from ``path``: a word-vector file, a GloVe text
    file (:func:`glove_word_vectors`), or None for :func:`fallback_word_vectors`. Prints one line
    saying which, unless it is a word-vector file."""
    classes = tuple(classes)
    if path is not None:
        path = ensure_file(os.fspath(path), download)
        if not is_glove_text(path):
            return load_word_vectors(path, len(classes), dim, download)
        stat = os.stat(path)
        return _text_or_fallback_vectors(path, (stat.st_mtime_ns, stat.st_size), classes, dim).copy()
    return _text_or_fallback_vectors(None, None, classes, dim).copy()

"""Read and check the label-graph and word-vector files that MSRN needs.

Formats (the official ones, see README "Datasets"):
- graph file: pickle of ``{'adj': C×C co-occurrence counts, 'nums': C per-class counts}``,
  or ``.npz`` with arrays ``adj`` and ``nums``.
- word file: pickle of a C×300 array (or a list of C lists), or ``.npy`` / ``.npz`` (one array).

Pickles are read with an unpickler that only admits plain containers and numpy arrays, so a
tampered file cannot run code; still, only use files from sources you trust.
"""
import io
import os
import pickle

import numpy as np


class LabelFileError(ValueError):
    """A graph or word-vector file is missing, unreadable or has the wrong shape."""


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


def _read(path):
    """Load a .pkl/.npy/.npz file into Python objects, or raise LabelFileError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LabelFileError(f'{path}: file not found')
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


def load_adjacency(path, num_classes=None):
    """Return ``{'adj': float64 [C, C], 'nums': float64 [C]}`` from a graph file."""
    obj = _read(path)
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


def load_word_vectors(path, num_classes=None, dim=300):
    """Return the label word vectors as a float32 array [C, dim]."""
    obj = _read(path)
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

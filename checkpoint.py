"""Checkpoint files: their contents (written and read back here), reading them strictly, writing
them atomically, and ImageNet trunk weights.

A checkpoint is a dict with the official keys, which the official code reads too: ``epoch``
(completed epochs), ``arch``, ``state_dict`` (bare model, no ``module.`` prefix), ``best_score``
(best mAP in percent). Ours add the run's settings, so that evaluation, resume and prediction
need nothing else (``RunSettings``): ``dataset`` (its name), ``args`` (the recipe's flags),
``classes`` (class names), ``adj`` and ``nums`` (the label graph's counts), ``word_vectors`` [C, 300]. ``checkpoint.pth.tar`` also holds
what an exact resume needs: ``optimizer``, ``scaler`` (GradScaler), ``rng`` (Python, numpy, torch
and CUDA generators of every process), ``ema`` (the weight average, when on), ``loader_seed``
(the augmentation seed of loader processes) and, when written within an epoch, ``position``
(where: the epoch's order and how far it got, the epoch's meters and scores so far).
``model_best.pth.tar`` holds the weights that scored best, without that training state, and
``best_weights`` (``'model'`` or ``'ema'``: which weights they are). Everything is tensors and
plain containers, so ``torch.load(weights_only=True)`` reads it.
"""
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import download
from download import DownloadError
from errors import CheckpointError

# The official repository's first release had an unused Linear ProjectMs and no W, B; its
# checkpoints differ from the later layout in these dead parameters only.
FIRST_RELEASE_EXTRA = {'ProjectMs.weight': (512, 512), 'ProjectMs.bias': (512,)}
FIRST_RELEASE_MISSING = ('W', 'B')
GRAPH_KEYS = ('adj', 'nums')  # the label graph, under the keys of the official label files

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
IMAGENET_URLS = {  # the files the official code was trained from
    'resnet18': 'https://download.pytorch.org/models/resnet18-5c106cde.pth',
    'resnet34': 'https://download.pytorch.org/models/resnet34-333f7ec4.pth',
    'resnet50': 'https://download.pytorch.org/models/resnet50-19c8e357.pth',
    'resnet101': 'https://download.pytorch.org/models/resnet101-5d3b4d8f.pth',
    'resnet152': 'https://download.pytorch.org/models/resnet152-b121ed2d.pth',
}


# ---- reading ------------------------------------------------------------------------------------

def read_checkpoint(path):
    """torch.load a checkpoint safely (weights_only) onto the CPU, or raise CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: checkpoint not found; check the --resume path')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{path}: cannot read checkpoint ({first_line})') from e


def _read(source):
    """(checkpoint dict, 'path: ' prefix for messages) from a path or an already read dict."""
    if isinstance(source, (str, os.PathLike)):
        return read_checkpoint(source), f'{source}: '
    return source, ''


def bare_state_dict(checkpoint, where=''):
    """The model weights of a checkpoint dict (ours, official, or a raw state_dict), ``module.`` removed."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{where}expected a dict with a 'state_dict' of tensors, or a raw state_dict")
    if state and all(k.startswith('module.') for k in state):   # saved from DataParallel / DDP
        state = {k[len('module.'):]: v for k, v in state.items()}
    return dict(state)


def _listing(keys, limit=5):
    keys = sorted(keys)
    more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _mismatch_hint(model, mismatched, state):
    if 'fc2.weight' in mismatched:
        return f' (the checkpoint has {state["fc2.weight"].shape[0]} classes, the model {model.num_classes})'
    if 'fc1.weight' in mismatched and hasattr(model, 'num_node'):
        per_node = model.fc1.in_features // (model.num_classes + model.num_node)
        groups = state['fc1.weight'].shape[1] // per_node - model.num_classes
        return f' (the checkpoint has {groups} label groups, the model {model.num_node}: set --pool_ratio accordingly)'
    return ''


def _first_release_variant(state, expected):
    """Drop the first release's dead ProjectMs; return the names of the dead parameters that differ."""
    extra = [k for k, shape in FIRST_RELEASE_EXTRA.items()
             if k in state and k not in expected and tuple(state[k].shape) == shape]
    absent = [k for k in FIRST_RELEASE_MISSING if k in expected and k not in state]
    for k in extra:
        del state[k]
    return extra + absent


def load_checkpoint(model, source):
    """Load weights strictly from a checkpoint path or dict (ours, official, or a raw state_dict).

    Accepts a ``module.`` prefix and the first official release's layout (an unused ``ProjectMs``,
    no ``W``/``B``: those never reach the forward pass; ``W``/``B`` keep their initial values).
    Any other missing or unexpected key or shape mismatch raises CheckpointError naming them.
    Returns the checkpoint dict.
    """
    checkpoint, where = _read(source)
    state = bare_state_dict(checkpoint, where)
    expected = model.state_dict()
    dead = _first_release_variant(state, expected)
    missing = expected.keys() - state.keys() - set(dead)
    unexpected = state.keys() - expected.keys()
    mismatched = {k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape}
    if missing or unexpected or mismatched:
        parts = [f'{label} [{_listing(keys)}]' for label, keys in
                 (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)) if keys]
        raise CheckpointError(f'{where}checkpoint does not fit the model: {"; ".join(parts)}'
                              f'{_mismatch_hint(model, mismatched, state)}')
    if dead:
        print(f'=> first-release checkpoint layout: unused parameters {", ".join(dead)} differ and are '
              'ignored (never used by the forward pass)')
    model.load_state_dict(state, strict=not dead)
    return checkpoint


def load_matching(model, source):
    """Load every weight whose name and shape fit (``--finetune``); return (loaded, fresh) key lists."""
    checkpoint, where = _read(source)
    state = bare_state_dict(checkpoint, where)
    expected = model.state_dict()
    loaded = [k for k in expected if k in state and state[k].shape == expected[k].shape]
    if not loaded:
        raise CheckpointError(f'{where}no weight of the checkpoint fits the model (another backbone? --backbone)')
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, [k for k in expected if k not in loaded]


@dataclass
class RunSettings:
    """What our checkpoints carry beside the weights, so that evaluation, resume and prediction need
    nothing else; released checkpoints carry none of it (every field None). ``entries`` writes
    them and ``read`` reads them back, under the same keys."""
    dataset: Optional[str] = None    # 'dataset': the name of its DatasetSpec
    args: Optional[dict] = None      # 'args': the recipe's flags {name: value}
    classes: Optional[list] = None   # 'classes': the class names
    graph: Optional[dict] = None     # 'adj', 'nums': the label graph's counts, under the label files' keys
    word_vectors: Optional[np.ndarray] = None  # 'word_vectors': float32 (C, 300)

    def entries(self):
        """The checkpoint entries (those that are set)."""
        entries = {}
        if self.dataset is not None:
            entries['dataset'] = self.dataset
        if self.args is not None:
            entries['args'] = _plain(self.args)
        if self.classes is not None:
            entries['classes'] = list(self.classes)
        if self.graph is not None:
            entries.update({k: torch.as_tensor(np.asarray(self.graph[k], np.float64)) for k in GRAPH_KEYS})
        if self.word_vectors is not None:
            entries['word_vectors'] = torch.as_tensor(np.asarray(self.word_vectors, np.float32))
        return entries

    @classmethod
    def read(cls, checkpoint):
        """The settings a checkpoint dict carries (what it lacks stays None)."""
        settings = cls()
        if isinstance(checkpoint.get('dataset'), str):
            settings.dataset = checkpoint['dataset']
        if isinstance(checkpoint.get('args'), Mapping):
            settings.args = dict(checkpoint['args'])
        if isinstance(checkpoint.get('classes'), (list, tuple)):
            settings.classes = [str(name) for name in checkpoint['classes']]
        if all(torch.is_tensor(checkpoint.get(k)) for k in GRAPH_KEYS):
            settings.graph = {k: checkpoint[k].double().numpy() for k in GRAPH_KEYS}
        if torch.is_tensor(checkpoint.get('word_vectors')):
            settings.word_vectors = checkpoint['word_vectors'].float().numpy()
        return settings


def checkpoint_backbone(checkpoint):
    """The trunk a checkpoint says it was made with (ours: 'args', older ones: 'arch'), or None."""
    stored = checkpoint.get('args')
    return stored.get('backbone', checkpoint.get('arch')) if isinstance(stored, Mapping) else checkpoint.get('arch')


def _plain(obj):
    """``obj`` with anything but plain data turned into strings (checkpoints load weights-only)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, (bool, int, float, str)) else str(obj)


# ---- the training state: written after every epoch, read by a resume ---------------------------

def _official(epoch, state_dict, best_score, settings):
    # 'arch' is a key of the official checkpoint format, which the official code reads: we write the
    # backbone there (nothing here reads it but checkpoint_backbone, for checkpoints without 'args')
    return {'epoch': epoch, 'arch': (settings.args or {}).get('backbone'), 'state_dict': state_dict,
            'best_score': best_score}


def training_checkpoint(epoch, state_dict, best_score, settings, *, optimizer, scaler, rng, ema=None,
                        loader_seed=None, position=None):
    """``checkpoint.pth.tar``'s dict: everything an exact resume needs (``restore_training``,
    ``rng_state_of_rank``, ``position_of``, ``loader_seed_of``). ``epoch``: the epochs completed.
    ``settings``: the run's ``RunSettings``; ``rng``: every process's ``util.get_rng_state()``;
    ``ema``: the weight average's state_dict, when on; ``loader_seed``: the run's augmentation
    seed of loader processes; ``position``: where in epoch ``epoch`` (0-based) a mid-epoch
    checkpoint stopped (the engine's ``training_position``, ``validation_position``)."""
    state = {**_official(epoch, state_dict, best_score, settings), **settings.entries(), 'optimizer': optimizer,
             'scaler': scaler, 'rng': rng}
    for key, value in (('ema', ema), ('loader_seed', loader_seed), ('position', position)):
        if value is not None:
            state[key] = value
    return state


def best_checkpoint(epoch, state_dict, best_score, settings, best_weights):
    """``model_best.pth.tar``'s dict: the weights that scored best (``best_weights``: 'model' or
    'ema', which they are) with the settings, without the training state."""
    return {**_official(epoch, state_dict, best_score, settings), **settings.entries(), 'best_weights': best_weights}


def restore_training(checkpoint, optimizer, scaler, ema=None):
    """Optimizer, GradScaler and weight-average state of a ``training_checkpoint``; a released
    checkpoint has none. The optimizer's hyper-parameters (base lr, momentum, weight decay) stay
    those given now."""
    if 'optimizer' not in checkpoint:
        print('=> checkpoint has no optimizer state (a released checkpoint?): momentum restarts from zero')
    else:
        given = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f'checkpoint optimizer state does not fit the optimizer ({e}); '
                                  'resume with the settings it was trained with') from e
        for group, hyper in zip(optimizer.param_groups, given):
            group.update(hyper)
    if checkpoint.get('scaler') and scaler.is_enabled():
        scaler.load_state_dict(checkpoint['scaler'])
    if ema is not None:
        if 'ema' in checkpoint:
            ema.module.load_state_dict(checkpoint['ema'])
        else:
            print('=> checkpoint has no weight average: the EMA starts from the loaded weights')


def position_of(checkpoint):
    """Where in its epoch a mid-epoch ``training_checkpoint`` stopped, or None (an epoch's end)."""
    return (checkpoint or {}).get('position')


def loader_seed_of(checkpoint, seed=None):
    """The run's augmentation seed of loader processes: the checkpoint's, else ``seed`` (--seed),
    else a fresh random one."""
    stored = (checkpoint or {}).get('loader_seed')
    if stored is not None:
        return int(stored)
    return seed if seed is not None else int.from_bytes(os.urandom(7), 'little')


def rng_state_of_rank(checkpoint, rank, world_size):
    """This process's random-generator states in a ``training_checkpoint`` (rank 0's when the
    process count changed), or None."""
    rng = (checkpoint or {}).get('rng')
    if not rng:
        return None
    return rng[rank] if len(rng) == world_size else rng[0]


# ---- writing ------------------------------------------------------------------------------------

TEMPORARY = re.compile(r'\.tmp-(?P<host>[^/]+)-(?P<pid>\d+)$')  # atomic_write's partial files


def atomic_write(path, write):
    """Call ``write(tmp_path)``, then rename onto ``path``: a crash leaves the old file intact. The
    temporary file is ``path.tmp-<host>-<pid>``, so a later run can tell one of a killed process."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp-{socket.gethostname()}-{os.getpid()}'
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- ImageNet weights of the trunk --------------------------------------------------------------

def default_pretrained_path(model_name):
    return os.path.join(REPO_DIR, 'pretrained', f'{model_name}.pth.tar')


def _download_imagenet(url, path):
    """Fetch ``url`` to ``path`` (resumable, with a timeout); its name carries a sha256 prefix to check."""
    failed = f'; download it where you have internet and save it as {path}, or pass -pm PATH'
    try:
        download.download_file(url, path, timeout=60)
    except DownloadError as e:
        raise CheckpointError(f'{path} not found and downloading {url} failed ({e.line}){failed}') from e
    prefix = re.search(r'-([a-f0-9]{6,})\.', os.path.basename(url))
    digest = download.sha256sum(path)
    if prefix and not digest.startswith(prefix.group(1)):
        os.remove(path)
        raise CheckpointError(f'{path} not found and downloading {url} failed (sha256 {digest[:12]}... does not '
                              f'start with {prefix.group(1)}: removed){failed}')


def load_imagenet_trunk(model, path=None, model_name='resnet101', url=None):
    """Load torchvision ImageNet weights (fc dropped) into model.resnet_101; the conv_buffers keep their init.

    A missing file is downloaded from the official URL (sha256-prefix checked, 60 s timeout).
    """
    path = path or default_pretrained_path(model_name)
    if not os.path.isfile(path):
        _download_imagenet(url or IMAGENET_URLS[model_name], path)
    state = {k: v for k, v in bare_state_dict(read_checkpoint(path), f'{path}: ').items() if not k.startswith('fc.')}
    trunk = model.resnet_101.state_dict()
    expected = {k for k in trunk if not k.startswith('conv_buffer')}
    mismatched = {k for k in expected & state.keys() if trunk[k].shape != state[k].shape}
    if expected != state.keys() or mismatched:
        raise CheckpointError(f'{path}: not {model_name} ImageNet weights: missing '
                              f'[{_listing(expected - state.keys())}]; '
                              f'unexpected [{_listing(state.keys() - expected)}]; '
                              f'shape mismatch [{_listing(mismatched)}]')
    model.resnet_101.load_state_dict(state, strict=False)
    return model

"""Small helpers of the training loop: torchnet-style meters, the official image transforms,
the weight average (EMA), and seeding / capture / restore of every random number generator."""
import copy
import math
import random

import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image

import metrics


class AverageValueMeter:
    """Running mean and standard deviation of added values (torchnet's API: add, value, reset).

    ``value()`` returns ``(mean, std)``: std is the sample standard deviation (n - 1), inf after
    one value, and both are NaN before any value, as in torchnet.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.n, self.sum, self.sum_sq = 0, 0.0, 0.0

    def add(self, value, n=1):
        value = float(value)
        self.n += n
        self.sum += value * n
        self.sum_sq += value * value * n

    def state_dict(self):
        return {'n': self.n, 'sum': self.sum, 'sum_sq': self.sum_sq}

    def load_state_dict(self, state):
        self.n, self.sum, self.sum_sq = int(state['n']), float(state['sum']), float(state['sum_sq'])

    def value(self):
        if self.n == 0:
            return math.nan, math.nan
        mean = self.sum / self.n
        if self.n == 1:
            return mean, math.inf
        var = max(self.sum_sq - self.n * mean * mean, 0.0) / (self.n - 1)
        return mean, math.sqrt(var)


class AveragePrecisionMeter:
    """Collects scores [N, C] and targets [N, C] in {1, 0, -1}; ``value()`` is the per-class AP
    (:func:`metrics.average_precision`, float64 [C], NaN for a class without positive)."""

    def __init__(self, difficult_examples=False):
        self.difficult_examples = difficult_examples
        self.reset()

    def reset(self):
        self._scores, self._targets = [], []

    def add(self, output, target):
        output, target = torch.as_tensor(output), torch.as_tensor(target)
        if output.dim() == 1:  # one class
            output, target = output.view(-1, 1), target.view(-1, 1)
        if output.shape != target.shape:
            raise ValueError(f'output {tuple(output.shape)} and target {tuple(target.shape)} differ')
        if self._scores and output.shape[1] != self._scores[0].shape[1]:
            raise ValueError('number of classes differs from previously added examples')
        self._scores.append(output.detach().float().cpu())
        self._targets.append(target.detach().long().cpu())

    @property
    def scores(self):
        return torch.cat(self._scores) if self._scores else torch.empty(0, 0)

    @property
    def targets(self):
        return torch.cat(self._targets) if self._targets else torch.empty(0, 0, dtype=torch.long)

    def value(self):
        return metrics.average_precision(self.scores, self.targets, self.difficult_examples)


class ModelEma:
    """Exponential moving average of a model's state, as timm's ModelEmaV2 and the ASL code's ModelEma:
    after each optimizer step, ``update()`` sets ``ema = decay * ema + (1 - decay) * value`` for every
    floating-point entry of the state_dict, parameters and BatchNorm running statistics alike (no
    warm-up); integer buffers (BatchNorm's ``num_batches_tracked``) are copied, as in timm's ModelEmaV3.
    ``module`` is the averaged copy, in eval mode, with the same state_dict keys, shapes and dtypes as the model."""

    def __init__(self, model, decay):
        if not 0 < decay < 1:
            raise ValueError(f'EMA decay must be in (0, 1), not {decay}')
        self.source, self.decay = model, decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self):
        source = self.source.state_dict()
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                value.lerp_(source[name], 1 - self.decay)  # ema + (1 - decay)·(w - ema)
            else:
                value.copy_(source[name])


class Warp:
    """Resize to size x size, aspect ratio not kept (the official eval transform)."""

    def __init__(self, size, interpolation=Image.BILINEAR):
        self.size, self.interpolation = int(size), interpolation

    def __call__(self, img):
        return img.resize((self.size, self.size), self.interpolation)

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size})'


def eval_transform(size, mean, std):
    """The official evaluation transform: warp to size x size, to tensor, normalise."""
    return transforms.Compose([Warp(size), transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])


class MultiScaleCrop:
    """The official train crop: side = int(min(w, h) * scale) for width and height separately,
    with scale indices at most ``max_distort`` apart, placed at one of 13 fixed offsets (corners,
    centre, edge centres, quarter points), then resized to ``input_size``. Uses Python's
    ``random``, as the official one."""

    def __init__(self, input_size, scales=(1.0, 0.9, 0.8, 0.7, 0.6), max_distort=2,
                 interpolation=Image.BILINEAR):
        self.size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.scales, self.max_distort, self.interpolation = tuple(scales), max_distort, interpolation

    def crop_sizes(self, image_w, image_h):
        """Every allowed (crop_w, crop_h); a side within 3 px of the output size snaps to it."""
        base = min(image_w, image_h)
        sides = [int(base * s) for s in self.scales]
        widths = [self.size[0] if abs(x - self.size[0]) < 3 else x for x in sides]
        heights = [self.size[1] if abs(x - self.size[1]) < 3 else x for x in sides]
        return [(w, h) for i, h in enumerate(heights) for j, w in enumerate(widths)
                if abs(i - j) <= self.max_distort]

    @staticmethod
    def offsets(image_w, image_h, crop_w, crop_h):
        """The 13 fixed top-left corners, on a 4 x 4 grid of steps."""
        w, h = (image_w - crop_w) // 4, (image_h - crop_h) // 4
        grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                (1, 1), (3, 1), (1, 3), (3, 3)]
        return [(i * w, j * h) for i, j in grid]

    def __call__(self, img):
        crop_w, crop_h = random.choice(self.crop_sizes(*img.size))
        x, y = random.choice(self.offsets(*img.size, crop_w, crop_h))
        return img.crop((x, y, x + crop_w, y + crop_h)).resize(self.size, self.interpolation)

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size}, scales={self.scales}, max_distort={self.max_distort})'


def seed_everything(seed):
    """Seed Python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state(cuda=True):
    """Every generator's state (CUDA's too unless ``cuda`` is False), as tensors and lists so
    ``torch.load(weights_only=True)`` reads it."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else [],
        'numpy': {'name': np_name, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
                  'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss)},
        'python': [py_version, list(py_state), py_gauss],
    }


def set_rng_state(state):
    """Inverse of :func:`get_rng_state`; CUDA states are restored only when the device count matches."""
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    version, py_state, gauss = state['python']
    random.setstate((version, tuple(py_state), gauss))

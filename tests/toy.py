"""A tiny stand-in for MSRN and an in-memory dataset with the real item format, for engine tests, and
the toy runs and recorders that several test modules share."""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import checkpoint as ckpt
from distributed import is_main_process
from run_folder import RunFolder
from util import ModelEma, seed_everything

NUM_CLASSES = 4


class ToyMSRN(nn.Module):
    """MSRN's interface: ``model(image, word_vectors) -> (logits [B, C], group_loss)``,
    ``get_config_optim(lr)`` (trunk at lr x 0.1), normalisation attributes, and a frozen parameter
    the forward pass never uses (like MSRN's W, B)."""
    image_normalization_mean = [0.485, 0.456, 0.406]
    image_normalization_std = [0.229, 0.224, 0.225]

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(2), nn.Flatten())  # (B, 32)
        self.label_embed = nn.Linear(300, 32)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.W = nn.Parameter(torch.zeros(num_classes, 3), requires_grad=False)  # unused and frozen, as MSRN's W

    def forward(self, image, word_vectors):
        features = self.trunk(image)  # (B, 32)
        labels = self.label_embed(word_vectors[0])  # (C, 32)
        group_loss = 1e-4 * labels.norm(dim=1).sum()
        return features @ labels.t() + self.bias, group_loss  # (B, C), ()

    def get_config_optim(self, lr):
        return [{'params': self.trunk.parameters(), 'lr': lr * 0.1},
                {'params': [*self.label_embed.parameters(), self.bias], 'lr': lr}]


class ToyDataset(torch.utils.data.Dataset):
    """``((image, name, word_vectors [C, 300]), target [C] in {1, 0, -1})``; class c paints a
    bright patch in quadrant c, so a model can learn it. ``transform`` applies to the PIL image."""

    def __init__(self, n, seed=0, size=24, num_classes=NUM_CLASSES, transform=None):
        rng = np.random.default_rng(seed)
        self.targets = np.where(rng.random((n, num_classes)) < 0.4, 1, -1)
        self.targets[rng.random((n, num_classes)) < 0.1] = 0  # 'difficult'
        self.images = []
        for t in self.targets:
            pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            for c in np.flatnonzero(t >= 0):
                y, x = divmod(c % 4, 2)
                h = size // 2
                pixels[y * h:(y + 1) * h, x * h:(x + 1) * h, c % 3] = 255
            self.images.append(Image.fromarray(pixels))
        self.word_vectors = torch.from_numpy(rng.standard_normal((num_classes, 300)).astype(np.float32))
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i] if self.transform is None else self.transform(self.images[i])
        return (image, f'img{i:04d}', self.word_vectors), torch.from_numpy(self.targets[i])


def make_engine(save_dir=None, resume=None, device='cpu', val_split='val', settings=None, classes=('a', 'b', 'c', 'd'),
                stop=None, **loop):
    """A CPU GCN engine for the toy data, quiet and small. ``loop``: LoopSettings fields; ``resume``:
    a checkpoint dict (``resumed``); ``settings``: the recipe its checkpoints store as 'args'; ``stop``:
    a preemption.StopRequest."""
    from engine import GCNMultiLabelMAPEngine, LoopSettings
    defaults = dict(batch_size=4, workers=0, epochs=2, epoch_step=[30], image_size=16, progress=False, seed=0)
    run_settings = ckpt.RunSettings(args=settings, classes=list(classes) if classes else None)
    return GCNMultiLabelMAPEngine(LoopSettings(**{**defaults, **loop}), device=device,
                                  folder=RunFolder(str(save_dir) if save_dir and is_main_process() else None),
                                  resume=resume, run_settings=run_settings, val_split=val_split, stop=stop)


def resumed(model, path):
    """The checkpoint dict at ``path``, its weights loaded into ``model`` (as run.build_model does)."""
    checkpoint = ckpt.read_checkpoint(str(path))
    ckpt.load_checkpoint(model, checkpoint)
    return checkpoint


def make_optimizer(model, lr=0.1):
    return torch.optim.SGD(model.get_config_optim(lr), lr=lr, momentum=0.9, weight_decay=1e-4)


def evaluate_once(engine, model, val, name='eval.json', criterion=None):
    """``-e`` with the engine: the eval JSON ``name``; returns the mAP."""
    import evaluation
    return evaluation.evaluate(engine, model, criterion or nn.MultiLabelSoftMarginLoss(), val,
                               epoch=engine.start_epoch, eval_name=name)


def toy_run(save_dir, epochs, resume=None, init_seed=0, criterion=None, evaluate=False, **engine_kwargs):
    """Build everything from ``init_seed`` as a fresh process would, then ``learning`` (or with
    ``evaluate``, evaluate once, writing eval.json); ``resume``: a checkpoint path."""
    seed_everything(init_seed)
    model = ToyMSRN()
    optimizer = make_optimizer(model)
    checkpoint = resumed(model, resume) if resume else None
    engine = make_engine(save_dir=save_dir, epochs=epochs, epoch_step=[2], resume=checkpoint, **engine_kwargs)
    if evaluate:
        score = evaluate_once(engine, model, ToyDataset(10, seed=2), criterion=criterion)
    else:
        score = engine.learning(model, criterion or nn.MultiLabelSoftMarginLoss(), ToyDataset(30, seed=1),
                                ToyDataset(10, seed=2), optimizer)
    return model, optimizer, engine, score


def no_positive_in_validation(monkeypatch, c):
    """From now on toy_run's validation set (seed 2) has no positive image of class ``c``."""
    real_init = ToyDataset.__init__

    def init(self, n, seed=0, **kwargs):
        real_init(self, n, seed=seed, **kwargs)
        if seed == 2:
            self.targets[:, c] = -1
    monkeypatch.setattr(ToyDataset, '__init__', init)


def average_by_definition(start, states, decay):
    """The weight average by its definition: from ``start`` (the weights it was made from),
    ema = decay * ema + (1 - decay) * w for each state w in turn, for every floating-point entry;
    integer entries (BatchNorm's num_batches_tracked) are the last state's."""
    ema = {k: v.clone() for k, v in start.items()}
    for state in states:
        for k, w in state.items():
            ema[k] = decay * ema[k] + (1 - decay) * w if w.is_floating_point() else w.clone()
    return ema


def assert_equal_to_average(averaged, expected):
    assert averaged.keys() == expected.keys()
    for k, v in averaged.items():
        assert v.dtype == expected[k].dtype, k
        if v.is_floating_point():
            torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(v, expected[k]), k


class _InfiniteGradient(torch.autograd.Function):
    """Zero forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return grad.new_full(ctx.shape, math.inf)


class OverflowAt(nn.MultiLabelSoftMarginLoss):
    """The official loss, finite, but with an infinite gradient in training batch number ``at`` (1-based):
    a step GradScaler skips."""

    def __init__(self, at):
        super().__init__()
        self.at, self.training_calls = at, 0

    def forward(self, logits, target):
        loss = super().forward(logits, target)
        if torch.is_grad_enabled():
            self.training_calls += 1
            if self.training_calls == self.at:
                loss = loss + _InfiniteGradient.apply(logits)
        return loss


def train_and_record(monkeypatch, save_dir, criterion, device='cpu', scaler=None, lr=0.1, decay=0.9):
    """Two epochs of ToyMSRN (8 batches each) with a weight average. Returns the model, the engine, the
    weights training started from, the model's state after each ``scaler.step`` call, the number of
    optimizer steps made (not skipped) and the number of EMA updates."""
    seed_everything(0)
    model = ToyMSRN().to(device)
    start = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, lr=lr)
    engine = make_engine(device=device, save_dir=save_dir, epochs=2, ema_decay=decay)
    if scaler is not None:
        engine.scaler = scaler
    after_steps, made, updates = [], [], []
    real_step, real_update = engine.scaler.step, ModelEma.update

    def step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        after_steps.append(copy.deepcopy(model.state_dict()))
        return result

    def update(self):
        updates.append(1)
        return real_update(self)

    monkeypatch.setattr(engine.scaler, 'step', step)
    monkeypatch.setattr(ModelEma, 'update', update)
    optimizer.register_step_post_hook(lambda *_: made.append(1))
    engine.learning(model, criterion, ToyDataset(30, seed=1), ToyDataset(10, seed=2), optimizer)
    return model, engine, start, after_steps, len(made), len(updates)

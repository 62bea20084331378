"""Training and evaluation loops, torchnet-style: the epoch loop calls hooks that a subclass can override.

``GCNMultiLabelMAPEngine`` keeps the official class name, so code written for ML-GCN or MSRN finds
it. The official code split it over three classes (a generic ``Engine``, a multi-label one, the
GCN one), of which only the last was ever built; here one class does the work of all three, since
this repository trains one kind of model on one kind of batch.

``learning`` trains epochs ``[start, epochs)``, validating after each; ``evaluate`` validates
once (the caller, ``evaluation.py``, does the rest of ``-e``). One epoch (``run_epoch``) calls
the hooks::

    on_start_epoch()                                   reset the meters
    for each batch:
        on_start_batch(sample)                         the loader's batch onto the device
        on_forward(training, model, criterion, optimizer)   forward, loss; backward and step when training
        on_end_batch()                                 the meters take the batch
    on_end_epoch(training, num_samples)                the epoch's results into state['results']

Hooks read and write ``self.state``, which holds only the current epoch and batch:

key               written by       meaning
'epoch'           learning         0-based epoch being trained (or last trained)
'iteration'       run_epoch        batch index in the epoch
'images'          on_start_batch   images on the device (B, 3, H, W)
'word_vectors'    on_start_batch   (B, C, 300) on the device, the same for every image
'labels'          on_start_batch   labels as loaded: 1 present, 0 difficult, -1 absent (B, C), for the metrics
'loss_target'     on_start_batch   the loss's {0, 1} targets (B, C) on the device
'output', 'loss'  on_forward       logits (B, C); the loss (scalar tensor, group loss included)
'loss_value'      on_forward       the loss as a float, mean over processes
'meter_loss'      on_end_batch     running mean of 'loss_value' over the epoch
'ap_meter'        on_end_batch     the epoch's scores and labels
'prefix'          restore_meters   a resumed epoch's (scores, targets) of the samples seen before the stop
'results'         on_end_epoch     {'loss', 'mAP'} and, after a validation on rank 0, 'eval' (every
                                   metric) and the gathered 'scores' (N, C) and 'targets' (N, C)
'epoch_start'     run_one_epoch    when the epoch started (perf_counter), its time before a resume included
'trained'         run_one_epoch    (training results, training time, generators' state) once trained

After each step every process agrees (``step_boundary``, one all-reduce) whether to stop (a
signal, ``preemption.py``) or to write a mid-epoch checkpoint (``--checkpoint-interval``); a
mid-epoch checkpoint's ``position`` lets a resume continue the epoch bit for bit (loader.py).

What an epoch leaves behind (checkpoint, eval JSON, log line, TensorBoard events) is written by
the run folder in one call (``RunFolder.write_epoch``), outside the loop. One code path for one
process or many (torchrun + DistributedDataParallel).
"""
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torchvision.transforms as transforms
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import checkpoint as ckpt
import distributed
import metrics
import preemption
import report
from errors import NonFiniteLossError, NonFiniteOutputError, Stopped, UsageError
from loader import DataLoaderX, EpochSampler, SeededItems
from run_folder import CHECKPOINT_NAME, RunFolder, eval_record, tensorboard_scalars
from util import (AveragePrecisionMeter, AverageValueMeter, ModelEma, MultiScaleCrop, eval_transform, get_rng_state,
                  set_rng_state)

AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


@dataclass(frozen=True)
class LoopSettings:
    """What the loop does, under the names of the flags that set it (cli.py takes their defaults
    from here; run.build_engine builds it from the parsed arguments)."""
    epochs: int = 200               # train epochs [start_epoch, epochs) (the official loop ran 200)
    start_epoch: int = 0            # first epoch without a resume; also places the lr schedule
    epoch_step: tuple = (30,)       # epochs at which the lr is multiplied by 0.1
    batch_size: int = 16            # images per batch and process
    workers: int = 4                # loader processes
    image_size: int = 224           # side of the images (the official script's)
    print_freq: int = 0             # print a line every N batches; 0: never
    progress: Optional[bool] = None  # progress bars; None: when stderr is a terminal
    seed: Optional[int] = None      # seed of the sampler's shuffling (None: 0)
    clip_grad_norm: float = 0.0     # max gradient norm after unscaling; 0: off
    amp: Optional[bool] = None      # autocast; None: on with CUDA
    amp_dtype: str = 'float16'      # a key of AMP_DTYPES; float16 gets a GradScaler
    channels_last: bool = False     # model and images in channels-last memory format
    sync_bn: bool = False           # SyncBatchNorm across processes
    ema_decay: float = 0.0          # keep and validate an average of the weights with this decay; 0: off
    loss: str = 'multilabel-soft-margin'  # the classification loss's name, shown in the epoch line
    tensorboard: bool = True        # write TensorBoard events while training
    checkpoint_interval: float = 30.0  # minutes: also write a mid-epoch checkpoint when the last is this old; 0: off

    def __post_init__(self):
        object.__setattr__(self, 'epoch_step', tuple(self.epoch_step))


class _StopRequested(Exception):
    """Every process agreed to stop at this step boundary (raised inside an epoch, handled by ``learning``)."""


def lr_at(base_lr, epoch, epoch_step):
    """Learning rate of an epoch: ``base_lr`` x 0.1 for each epoch of ``epoch_step`` already reached.
    As the official code (x0.1 at each epoch that is in the list), a repeated entry decays once."""
    return base_lr * 0.1 ** sum(epoch >= step for step in set(epoch_step))


def lr_group_names(num_groups):
    """Names of the optimizer's parameter groups in the epoch line and TensorBoard: MSRN's two
    (``models.MSRN.get_config_optim``: trunk, head), else group0, group1, ..."""
    return ['trunk', 'head'] if num_groups == 2 else [f'group{i}' for i in range(num_groups)]


def _grad_scaler(enabled):
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler('cuda', enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


class GCNMultiLabelMAPEngine:
    """Epoch loops for MSRN: batches ``((images, names, word_vectors), labels)`` with labels in
    {1, 0, -1}; ``model(images, word_vectors)`` returns ``(logits (B, C), group_loss)`` and the loss
    is ``criterion(logits, loss_target) + group_loss``.

    settings: ``LoopSettings``. device: this process's torch.device. folder: the ``RunFolder`` the
    epochs are written to (None: nothing is written, e.g. on ranks > 0). resume: the checkpoint
    dict to continue from (its weights already loaded into the model; a released checkpoint brings
    its epoch and best score only). run_settings: the ``checkpoint.RunSettings`` stored in every
    checkpoint; its classes name the classes in tables. val_split: the evaluated split's name as
    the dataset calls it ('test' for VOC), which labels the printed summaries.
    difficult_examples: leave label 0 out of AP (all four official demos do).
    """

    def __init__(self, settings=LoopSettings(), *, device=torch.device('cpu'), folder=None, resume=None,
                 run_settings=None, val_split='val', difficult_examples=True, stop=None):
        self.settings, self.device = settings, torch.device(device)
        self.folder = folder if folder is not None else RunFolder(None)
        self.resume = resume
        self.run_settings = run_settings if run_settings is not None else ckpt.RunSettings()
        self.class_names = self.run_settings.classes
        self.val_split, self.difficult_examples = val_split, difficult_examples
        self.stop = stop if stop is not None else preemption.StopRequest()  # set by preemption.handling
        self.amp = self.device.type == 'cuda' if settings.amp is None else settings.amp
        self.amp_dtype = AMP_DTYPES[settings.amp_dtype]
        self.progress = sys.stderr.isatty() if settings.progress is None else settings.progress
        self.start_epoch = int(resume.get('epoch', 0)) if resume is not None else settings.start_epoch
        self.best_score = float(resume.get('best_score', 0.0)) if resume is not None else 0.0
        self.position = ckpt.position_of(resume)  # where in its epoch a mid-epoch checkpoint stopped
        # the augmentation seeds of loader processes (loader.py): the run's, kept across resumes
        self.loader_seed = distributed.all_gather_objects(ckpt.loader_seed_of(resume, settings.seed))[0]
        self.best_ap = None  # rank 0: {'epoch', 'label', 'ap'} of the best weights validated in this run
        self.ema = None  # ModelEma when settings.ema_decay > 0, made when training starts
        # One scaler for the whole run: its scale adapts across iterations and is checkpointed.
        # bfloat16 has float32's exponent range: its gradients need no scaling.
        self.scaler = _grad_scaler(self.amp and self.amp_dtype == torch.float16)
        self.lr_names = None  # lr_group_names of the optimizer, once training starts
        self.training = None  # (model, optimizer, training loader) while learning() runs
        self.last_save = time.monotonic()  # when this process last wrote a checkpoint (the timer's start)
        self.state = {'meter_loss': AverageValueMeter(), 'ap_meter': AveragePrecisionMeter(difficult_examples),
                      'prefix': None}

    # ---- one epoch: the loop and its hooks, in the order they run ------------------------------
    def run_epoch(self, training, data_loader, model, criterion, optimizer=None, desc='', resumed=None):
        """One pass over ``data_loader`` through the hooks; returns ``state['results']``.
        ``resumed``: the position of an interrupted epoch that this pass continues (its meters come
        back, and its steps count on from there when the process count is the same)."""
        s = self.state
        self.on_start_epoch()
        first_step = 0
        if resumed is not None:
            self.restore_meters(resumed)
            first_step = resumed['step'] if resumed['world_size'] == data_loader.sampler.world_size else 0
        main = distributed.is_main_process()
        steps = first_step + len(data_loader)
        batches = iter(data_loader)
        bar = tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=not (self.progress and main),
                   initial=first_step, total=steps)
        end = time.perf_counter()
        try:
            for i, sample in enumerate(bar, first_step):
                data_time = time.perf_counter() - end
                s['iteration'] = i
                self.on_start_batch(sample)
                self.on_forward(training, model, criterion, optimizer)
                self.on_end_batch()
                batch_time = time.perf_counter() - end
                end = time.perf_counter()
                if self.settings.print_freq and i % self.settings.print_freq == 0 and main:
                    tqdm.write(f'{desc} [{i}/{steps}]  time {batch_time:.3f}  data {data_time:.3f}  '
                               f"loss {s['loss_value']:.4f} ({s['meter_loss'].value()[0]:.4f})")
                bar.set_postfix(loss=f"{s['meter_loss'].value()[0]:.4f}",
                                img_s=f"{len(s['labels']) / max(batch_time, 1e-9):.1f}", refresh=False)
                self.step_boundary(training, i + 1, i + 1 - first_step)
        except BaseException:   # left early (a stop, an error): the loader's thread and processes end
            batches.close()
            raise
        bar.close()
        self.on_end_epoch(training, data_loader.sampler.remaining)
        return s['results']

    def step_boundary(self, training, step, steps_of_pass):
        """After a step: every process agrees whether one was asked to stop (a signal) and whether
        rank 0's checkpoint timer ran out; stops (``_StopRequested``), or writes a mid-epoch
        checkpoint when training and the timer ran out."""
        interval = self.settings.checkpoint_interval * 60
        timer = training and interval > 0 and distributed.is_main_process() and \
            time.monotonic() - self.last_save >= interval
        stop, timer = distributed.agree(self.stop.requested, timer)
        if stop:
            raise _StopRequested('train', step, steps_of_pass) if training else _StopRequested('validate')
        if timer:
            self.save_position(*self.training_position(step, steps_of_pass))

    def on_start_epoch(self):
        self.state['meter_loss'].reset()
        self.state['ap_meter'].reset()
        self.state['prefix'] = None

    def restore_meters(self, position):
        """The meters of an interrupted epoch: the loss meter's sums, and the rows of scores and
        targets of every sample seen before (``state['prefix']``, in the epoch's order)."""
        self.state['meter_loss'].load_state_dict(position['loss_meter'])
        self.state['prefix'] = (position['scores'], position['targets'])

    def on_start_batch(self, sample):
        """Unpack the loader's ``((images, names, word_vectors), labels)`` onto the device."""
        (images, _names, word_vectors), labels = sample
        s = self.state
        memory_format = torch.channels_last if self.settings.channels_last else torch.preserve_format
        s['images'] = images.to(self.device, non_blocking=True, memory_format=memory_format)
        s['word_vectors'] = word_vectors.float().to(self.device, non_blocking=True)
        s['labels'] = labels
        # MultiLabelSoftMarginLoss wants {0, 1}: present and difficult -> 1 (official quirk:
        # difficult counts as positive in training), absent -> 0.
        s['loss_target'] = (labels >= 0).float().to(self.device, non_blocking=True)

    def on_forward(self, training, model, criterion, optimizer):
        """Forward and loss (autocast when amp); when training, backward, optional clipping,
        optimizer step and EMA update."""
        s = self.state
        with torch.set_grad_enabled(training), \
                torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            s['output'], group_loss = model(s['images'], s['word_vectors'])
            s['loss'] = criterion(s['output'], s['loss_target']) + group_loss
        s['loss_value'] = distributed.mean_over_processes(s['loss'].item())
        if not training:
            return
        if not math.isfinite(s['loss_value']):
            raise NonFiniteLossError(
                f"training loss is {s['loss_value']} at epoch {s['epoch'] + 1}, batch {s['iteration']}: "
                'stopping (try a lower learning rate or gradient clipping, and check the data)')
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(s['loss']).backward()
        if self.settings.clip_grad_norm:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), self.settings.clip_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()

    def on_end_batch(self):
        self.state['meter_loss'].add(self.state['loss_value'])
        self.state['ap_meter'].add(self.state['output'].detach(), self.state['labels'])

    def on_end_epoch(self, training, num_samples):
        """``state['results']``: the mean loss and the mAP (percent) over every process's scores (of
        ``num_samples`` distinct samples in this pass, after those of ``state['prefix']``); after a
        validation, rank 0 also gets 'eval', every metric (``metrics.evaluate``)."""
        scores, targets = self.gathered_rows(num_samples)
        num_samples = len(scores)
        broken = int((~torch.isfinite(scores)).any(1).sum())
        if broken and not training:  # every process sees the gathered scores, so all stop together
            raise NonFiniteOutputError(
                f'{broken} of {num_samples} evaluation images got NaN or infinite scores: the model overflowed '
                '(float16 autocast on CUDA?) or its weights are broken; check the checkpoint, or try --device cpu')
        results = {'loss': self.state['meter_loss'].value()[0]}
        if training or not distributed.is_main_process():
            results['mAP'] = metrics.mean_average_precision(
                metrics.average_precision(scores, targets, self.difficult_examples))
        else:
            results['eval'] = metrics.evaluate(scores, targets, self.difficult_examples)
            results.update(mAP=results['eval']['mAP'], scores=scores, targets=targets)
        self.state['results'] = results

    def gathered_rows(self, num_samples):
        """(scores, targets) of the epoch so far, every process's rows in the epoch's order: the
        prefix of an interrupted epoch, then ``num_samples`` rows of this pass."""
        meter = self.state['ap_meter']
        scores = distributed.gather_in_order(meter.scores, num_samples)
        targets = distributed.gather_in_order(meter.targets, num_samples)
        if self.state['prefix'] is not None:
            scores, targets = (torch.cat([before.to(now.dtype), now]) if len(now) else before.to(now.dtype)
                               for before, now in zip(self.state['prefix'], (scores, targets)))
        return scores, targets

    def train(self, data_loader, model, criterion, optimizer, epoch, resumed=None):
        model.train()
        return self.run_epoch(True, data_loader, model, criterion, optimizer, f'Epoch {epoch + 1} train', resumed)

    def validate(self, data_loader, model, criterion, label=None):
        """One evaluation pass; prints the summary (rank 0) and returns the results. ``label``:
        the printed name of the validation (default: the split's)."""
        label = label or self.val_split
        model.eval()
        results = self.run_epoch(False, data_loader, model, criterion, desc=label)
        if results.get('eval'):
            print(report.format_summary(results['eval'], loss=results['loss'], label=label,
                                        class_names=self.class_names))
        return results

    def validate_ema(self, data_loader, criterion):
        """Validate the weight average. Each process averages its own BatchNorm statistics, so rank 0's
        average is broadcast first: every process evaluates (and goes on from) the same model."""
        distributed.broadcast_buffers(self.ema.module)
        return self.validate(data_loader, self.ema.module, criterion, label=self.ema_label)

    @property
    def ema_label(self):
        return f'{self.val_split} (EMA)'

    # ---- the run ------------------------------------------------------------------------------
    def learning(self, model, criterion, train_dataset, val_dataset, optimizer):
        """Train epochs [start, epochs), validating after each; returns the best validation mAP.
        A stop request (``self.stop``, set by a signal) ends it at the next step boundary with a
        checkpoint and ``errors.Stopped``."""
        net = self.prepare(model, criterion)
        train_dataset.transform, val_dataset.transform = self.transforms(model)
        val_loader = self.make_loader(val_dataset, training=False)
        train_loader = self.prepare_training(model, optimizer, train_dataset)
        self.training, self.last_save = (model, optimizer, train_loader), time.monotonic()
        try:
            try:
                for epoch in range(self.start_epoch, self.settings.epochs):
                    self.run_one_epoch(epoch, net, criterion, optimizer, train_loader, val_loader)
            except _StopRequested as stop:
                self.stop_within_epoch(*stop.args)
        except KeyboardInterrupt:   # a second Ctrl-C, also while saving (which leaves the last checkpoint whole)
            raise Stopped(f'interrupted; {self.on_disk()}', preemption.EXIT_INTERRUPTED) from None
        finally:
            self.folder.close_tensorboard()
            self.training = None
        self.report_best()
        distributed.barrier()
        return self.best_score

    def run_one_epoch(self, epoch, net, criterion, optimizer, train_loader, val_loader):
        """Train (the rest of) ``epoch``, validate, record; stop after it if asked."""
        self.state['epoch'] = epoch
        lrs = self.adjust_learning_rate(optimizer, epoch)
        position, self.position = self.position, None
        start = time.perf_counter() - (position['train_time'] if position else 0.0)
        self.state['epoch_start'] = start
        if position is not None and position['phase'] == 'validate':   # trained before the stop
            train, rng = position['train'], get_rng_state(cuda=False)   # as restored
        else:
            train_loader.sampler.set_epoch(epoch)
            if position is not None:
                train_loader.sampler.resume(position['order'].tolist(), position['start'], position['real'],
                                            position['world_size'])
            train = self.train(train_loader, net, criterion, optimizer, epoch, position)
            rng = train_loader.rng_state
        train_time = time.perf_counter() - start
        self.state['trained'] = (train, train_time, rng)
        val = self.validate(val_loader, net, criterion)
        ema_val = self.validate_ema(val_loader, criterion) if self.ema else None
        self.record_epoch(dict(epoch=epoch + 1, lr=lrs, train=train, val=val, ema_val=ema_val, train_time=train_time,
                               time=time.perf_counter() - start))
        if distributed.agree(self.stop.requested)[0]:
            self.stop_after(f'the end of epoch {epoch + 1}', f'{{checkpoint}} (epoch {epoch + 1})')

    def evaluate(self, model, criterion, val_dataset):
        """Validate ``model`` once; returns the results (``on_end_epoch``; 'eval', 'scores' and
        'targets' on rank 0)."""
        net = self.prepare(model, criterion)
        val_dataset.transform = self.transforms(model)[1]
        return self.validate(self.make_loader(val_dataset, training=False), net, criterion)

    def prepare(self, model, criterion):
        """Device, memory format, DDP; returns the network to run."""
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        model.to(self.device)
        if self.settings.channels_last:  # the 4-D weights; on_start_batch converts the images
            model.to(memory_format=torch.channels_last)
        criterion.to(self.device)
        return self.wrap(model)

    def prepare_training(self, model, optimizer, train_dataset):
        """EMA, the resumed optimizer, scaler, EMA and random states, the log cut to the resumed
        epoch; returns the training loader."""
        if self.settings.ema_decay:  # after DDP made every process's weights rank 0's
            self.ema = ModelEma(model, self.settings.ema_decay)
        for group in optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])
        self.lr_names = lr_group_names(len(optimizer.param_groups))
        if self.resume is not None:
            ckpt.restore_training(self.resume, optimizer, self.scaler, self.ema)
        train_loader = self.make_loader(train_dataset, training=True)
        if self.folder:
            self.folder.truncate_log(self.start_epoch)
            if self.settings.tensorboard:  # the log's epochs are TensorBoard's steps: both restart after start
                self.folder.open_tensorboard(self.run_settings.args, purge_step=self.start_epoch + 1)
        if self.start_epoch >= self.settings.epochs:
            print(f'=> nothing to train: start epoch {self.start_epoch} >= epochs {self.settings.epochs}')
        rng = ckpt.rng_state_of_rank(self.resume, distributed.get_rank(), distributed.get_world_size())
        if rng is not None and self.position is not None and self.position['phase'] == 'train':
            train_loader.restore_rng = rng   # the state after the last batch: once the epoch's loader is made
        elif rng is not None:  # last: nothing above may draw from them
            set_rng_state(rng)
        return train_loader

    def transforms(self, model):
        """(training, evaluation) transforms, the official ones: multi-scale crop + flip, and warp."""
        size = self.settings.image_size
        mean, std = model.image_normalization_mean, model.image_normalization_std
        train = transforms.Compose([MultiScaleCrop(size, scales=(1.0, 0.9, 0.8, 0.7, 0.6), max_distort=2),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize(mean=mean, std=std)])
        return train, eval_transform(size, mean, std)

    def make_loader(self, dataset, training):
        """Shuffled (training) or ordered loader over this process's share of the dataset; in
        training with loader processes, each sample augmented with its own seed (loader.py)."""
        workers = self.settings.workers
        seeded = training and workers > 0
        sampler = EpochSampler(len(dataset), training, self.settings.seed or 0, distributed.get_rank(),
                               distributed.get_world_size(), self.loader_seed if seeded else None)
        return DataLoaderX(SeededItems(dataset) if seeded else dataset, batch_size=self.settings.batch_size,
                           sampler=sampler, num_workers=workers, pin_memory=self.device.type == 'cuda',
                           persistent_workers=workers > 0)

    def adjust_learning_rate(self, optimizer, epoch):
        """Set every group's lr from its base lr ('initial_lr') and ``epoch``; return the lrs in
        group order (``lr_names``)."""
        for group in optimizer.param_groups:
            group['lr'] = lr_at(group['initial_lr'], epoch, self.settings.epoch_step)
        return [group['lr'] for group in optimizer.param_groups]

    def wrap(self, model):
        """SyncBatchNorm (``sync_bn``) and DistributedDataParallel when several processes run."""
        if distributed.get_world_size() == 1:
            if self.settings.sync_bn:
                print('=> --sync-bn: a single process, nothing to synchronise')
            return model
        if self.settings.sync_bn:
            if self.device.type != 'cuda':
                raise UsageError('--sync-bn needs CUDA: PyTorch synchronises BatchNorm on GPUs only')
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # Every trainable parameter must get a gradient (MSRN freezes its unused W, B, conv_buffer0),
        # so DDP can skip the per-iteration search for unused ones.
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    # ---- stopping within an epoch, and going on from there --------------------------------------
    def training_position(self, step, steps_of_pass):
        """(Where training is in its epoch after ``step`` steps, ``steps_of_pass`` of them since this
        process started the epoch or resumed it; this process's random-generator states then)."""
        loader = self.training[2]
        sampler = loader.sampler
        consumed = sampler.start + steps_of_pass * self.settings.batch_size * sampler.world_size
        scores, targets = self.gathered_rows(min(consumed, sampler.real) - min(sampler.start, sampler.real))
        position = {'epoch': self.state['epoch'], 'phase': 'train', 'step': step, 'order': torch.tensor(sampler.order),
                    'start': consumed, 'real': sampler.real, 'world_size': sampler.world_size,
                    'loss_meter': self.state['meter_loss'].state_dict(), 'scores': scores,
                    'targets': targets.to(torch.int8), 'train_time': time.perf_counter() - self.state['epoch_start']}
        return position, loader.rng_state

    def validation_position(self):
        """(The epoch trained, its validation not recorded yet; the random-generator states then)."""
        train, train_time, rng = self.state['trained']
        return {'epoch': self.state['epoch'], 'phase': 'validate', 'train': train, 'train_time': train_time}, rng

    def save_position(self, position, rng):
        """Write a mid-epoch checkpoint of ``position`` (rank 0; every process calls it: it gathers
        the processes' random-generator states ``rng``)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        rngs = distributed.all_gather_objects(dict(rng, cuda=cuda))
        if self.folder:
            self.folder.save_checkpoint(self.training_state(self.state['epoch'], rngs, position))
        self.last_save = time.monotonic()

    def training_state(self, epochs_done, rngs, position=None):
        """``checkpoint.pth.tar``'s dict now (``checkpoint.training_checkpoint``): ``rngs``, every
        process's generators; ``position``, where in epoch ``epochs_done`` (0-based) it stopped."""
        model, optimizer, _ = self.training
        ema = self.ema.module.state_dict() if self.ema is not None else None
        return ckpt.training_checkpoint(epochs_done, model.state_dict(), self.best_score, self.run_settings,
                                        optimizer=optimizer.state_dict(), scaler=self.scaler.state_dict(), rng=rngs,
                                        ema=ema, loader_seed=self.loader_seed, position=position)

    def stop_within_epoch(self, phase, step=None, steps_of_pass=None):
        """Write where the epoch stopped, then ``stop_after`` it."""
        if self.stop.signal_name == 'SIGINT':
            print('=> Ctrl-C: writing a checkpoint, then stopping (Ctrl-C again stops at once)', flush=True)
        epoch = self.state['epoch'] + 1
        if phase == 'train':
            where = f'epoch {epoch}, step {step}/{step - steps_of_pass + len(self.training[2])}'
            self.save_position(*self.training_position(step, steps_of_pass))
        else:
            where = f'epoch {epoch}, after its training, during its validation'
            self.save_position(*self.validation_position())
        self.stop_after(where, '{checkpoint} (mid-epoch, written now)')

    def stop_after(self, where, written):
        """Every process stops (``errors.Stopped``), once rank 0 has written its checkpoint; rank 0
        asks SLURM to queue the job again after the requeue signal. ``written``: what is on disk,
        '{checkpoint}' standing for rank 0's checkpoint path."""
        distributed.barrier()
        requeued = preemption.requeue_job() if self.stop.requeue and distributed.is_main_process() else None
        how = self.stop.signal_name or 'another process'
        path = distributed.all_gather_objects(self.checkpoint_path())[0]   # rank 0's, which wrote it
        raise Stopped(f'stopped by {how} at {where}: {written.format(checkpoint=path)}; to continue, run the same '
                      f'command with --resume {path} (or --resume auto)' + (f'; {requeued}' if requeued else ''),
                      self.stop.exit_code)

    def checkpoint_path(self):
        return self.folder.file(CHECKPOINT_NAME) if self.folder else CHECKPOINT_NAME

    def on_disk(self):
        """What the save folder holds for a resume, in words."""
        path = self.checkpoint_path()
        if self.folder and not os.path.isfile(path):
            return 'no checkpoint was written yet'
        return f'the last complete checkpoint is {path}; to continue, run the same command with --resume {path}'

    # ---- what an epoch leaves behind ------------------------------------------------------------
    def record_epoch(self, epoch):
        """Keep the best score (and its per-class AP); write the epoch's files; print the epoch line.
        ``epoch``: epoch (1-based), lr, train / val / ema_val results, train_time, time. Every
        process calls it (the checkpoint gathers every process's random generators)."""
        val, ema_val = epoch['val'], epoch['ema_val']
        scores = {'model': val['mAP'], 'ema': ema_val['mAP'] if ema_val else math.nan}
        winner = max(scores, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
        is_best = scores[winner] > self.best_score  # False for a NaN mAP, which must not become the best
        if is_best:
            self.best_score = scores[winner]
            won = ema_val if winner == 'ema' else val
            if won.get('eval'):
                self.best_ap = {'epoch': epoch['epoch'], 'ap': won['eval']['ap'],
                                'label': self.ema_label if winner == 'ema' else self.val_split}
        record = dict(epoch=epoch['epoch'], lr=epoch['lr'], train_loss=epoch['train']['loss'],
                      train_mAP=epoch['train']['mAP'], val_loss=val['loss'], val_mAP=val['mAP'],
                      best_mAP=self.best_score, train_time_s=round(epoch['train_time'], 3),
                      time_s=round(epoch['time'], 3))
        if ema_val:
            record.update(ema_val_loss=ema_val['loss'], ema_val_mAP=ema_val['mAP'])
        rngs = distributed.all_gather_objects(get_rng_state())
        if self.folder:
            state = self.training_state(record['epoch'], rngs)
            best = None
            if is_best:
                weights = state['ema'] if winner == 'ema' else state['state_dict']
                best = ckpt.best_checkpoint(record['epoch'], weights, self.best_score, self.run_settings, winner)
            evaluation = eval_record(val['eval'], self.class_names, loss=val['loss'], epoch=record['epoch'],
                                     **({'ema': eval_record(ema_val['eval'], self.class_names, loss=ema_val['loss'])}
                                        if ema_val else {}))
            scalars = tensorboard_scalars(record, self.lr_names, val['eval'], ema_val['eval'] if ema_val else None,
                                          self.class_names)
            self.folder.write_epoch(record, state, best, evaluation, scalars)
        self.last_save = time.monotonic()
        print(report.format_epoch_line(record, self.settings.epochs, self.lr_names, self.settings.loss,
                                       best_from=winner if is_best else None))

    def report_best(self):
        """Print the per-class AP of the best weights (rank 0, after training)."""
        if self.best_ap is not None:
            best = self.best_ap
            print(report.format_class_ap(best['ap'], self.class_names,
                                         title=f"per-class AP of the best epoch ({best['epoch']}), {best['label']}"))
        elif self.resume is not None and distributed.is_main_process() and self.start_epoch < self.settings.epochs:
            print(f'=> no epoch of this run beat the best mAP {self.best_score:.3f} it resumed from: the per-class '
                  'AP of that epoch is in its eval JSON')

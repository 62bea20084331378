"""Training and evaluation loops, torchnet-style: the epoch loop calls hooks that a subclass can override.

``GCNMultiLabelMAPEngine`` keeps the official class name, so code written for ML-GCN or MSRN finds
it. The official code split it over three classes (a generic ``Engine``, a multi-label one, the
GCN one), of which only the last was ever built; here one class does the work of all three, since
this repository trains one kind of model on one kind of batch.

``learning`` prepares the run (transforms, resume, device, DDP, EMA), then either evaluates once or
loops over epochs. One epoch (``run_epoch``) calls the hooks::

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
'results'         on_end_epoch     {'loss', 'mAP'} and, after a validation on rank 0, 'eval' (every
                                   metric) and the gathered 'scores' (N, C) and 'targets' (N, C)

What an epoch leaves behind (checkpoint, eval JSON, log line, TensorBoard events, printed line) is
written by ``record_epoch`` through ``run_folder`` and ``report``, outside the loop. One code path
for one process or many (torchrun + DistributedDataParallel).
"""
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torchvision.transforms as transforms
from prefetch_generator import BackgroundGenerator
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import checkpoint as ckpt
import distributed
import metrics
import report
from errors import CheckpointError, NonFiniteLossError, NonFiniteOutputError, UsageError
from run_folder import RunFolder, eval_record, tensorboard_scalars
from util import (AveragePrecisionMeter, AverageValueMeter, ModelEma, MultiScaleCrop, eval_transform, get_rng_state,
                  set_rng_state)


class DataLoaderX(DataLoader):
    """DataLoader whose batches are fetched one ahead in a background thread (official)."""

    def __iter__(self):
        return BackgroundGenerator(super().__iter__())


def lr_at(base_lr, epoch, epoch_step):
    """Learning rate of an epoch: ``base_lr`` x 0.1 for each step already reached (resume-safe)."""
    return base_lr * 0.1 ** sum(epoch >= step for step in epoch_step)


def lr_group_names(num_groups, names=None):
    """Names of the optimizer's parameter groups in the epoch line and TensorBoard: ``names`` if given,
    else MSRN's two (``models.MSRN.get_config_optim``: trunk, head), else group0, group1, ..."""
    if names is None:
        names = ('trunk', 'head') if num_groups == 2 else [f'group{i}' for i in range(num_groups)]
    if len(names) != num_groups:
        raise ValueError(f'{len(names)} lr names for {num_groups} optimizer parameter groups')
    return list(names)


def _percent_or_none(values):
    return [None if math.isnan(v) else 100 * v for v in values.tolist()]


def _grad_scaler(enabled):
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler('cuda', enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


class GCNMultiLabelMAPEngine:
    """Epoch loops, checkpoints and resume for MSRN: batches ``((images, names, word_vectors), labels)``
    with labels in {1, 0, -1}; ``model(images, word_vectors)`` returns ``(logits (B, C), group_loss)``
    and the loss is ``criterion(logits, loss_target) + group_loss``.

    device: torch.device of this process. batch_size: per process. workers: loader processes.
    max_epochs: train epochs [start_epoch, max_epochs). start_epoch: first epoch without resume
    (it also sets the lr schedule's position). epoch_step: epochs at which the lr is x0.1.
    image_size: side of the default transforms. print_freq: print every N batches (0: never).
    save_dir: where checkpoints, logs and eval JSONs go (None: write nothing). resume: checkpoint
    path (or the dict already read) to continue from. evaluate: only evaluate, writing the eval
    JSON as ``eval_name``. seed: seed of the sampler's shuffling. clip_grad_norm: max gradient
    norm, None = off. amp: autocast (None: on for CUDA only) in ``amp_dtype``: float16 (with a
    GradScaler) or bfloat16 (no scaler needed; CPU too). channels_last: images in channels-last
    memory format (for a trunk converted to it). progress:
    progress bars (None: when stderr is a terminal). sync_bn: SyncBatchNorm across processes.
    ema_decay: keep an exponential moving average of the weights (0: off), validate it too, and
    keep whichever scores better as the best weights.
    train_transform / val_transform: None for the official ones. loss_name: shown in the epoch
    line (losses of different kinds are not comparable). arch: the checkpoints' 'arch'.
    settings: further checkpoint entries (``checkpoint.settings_entries``), stored as given; its
    'args' are also shown in TensorBoard. difficult_examples: leave label 0 out of AP (all four
    official demos do). class_names: for the per-class AP tables (default: '0', '1', ...).
    tensorboard: write TensorBoard events into ``save_dir`` while training. lr_names: names of the
    optimizer's parameter groups (default: ``lr_group_names``). val_split: the evaluated split's name
    as the dataset calls it ('test' for VOC), which labels the printed summaries. With
    ``evaluate``: thresholds ({'values': per-class probability thresholds (C,), 'source': where
    from}) measures OP ... CF1 with them too; calibrate ('f1' or 'precision=P') chooses thresholds
    on the evaluated split (``metrics.calibrate_thresholds``) and writes them as ``thresholds_name``.
    """

    def __init__(self, *, device=torch.device('cpu'), batch_size=16, workers=4, max_epochs=20,
                 start_epoch=0, epoch_step=(30,), image_size=224, print_freq=0, save_dir=None,
                 resume=None, evaluate=False, eval_name='eval.json', seed=0, clip_grad_norm=None, amp=None,
                 amp_dtype=torch.float16, channels_last=False, progress=None, sync_bn=False, ema_decay=0.0,
                 train_transform=None, val_transform=None, loss_name=None, arch=None, settings=None,
                 difficult_examples=True, class_names=None, tensorboard=True, lr_names=None, val_split='val',
                 thresholds=None, calibrate=None, thresholds_name='thresholds.json'):
        self.device = torch.device(device)
        self.batch_size, self.workers, self.image_size = batch_size, workers, image_size
        self.max_epochs, self.start_epoch, self.epoch_step = max_epochs, start_epoch, list(epoch_step)
        self.print_freq, self.seed = print_freq, seed
        self.folder = RunFolder(save_dir if save_dir and distributed.is_main_process() else None)
        self.resume, self.evaluate, self.eval_name = resume, evaluate, eval_name
        self.clip_grad_norm = clip_grad_norm
        self.amp = self.device.type == 'cuda' if amp is None else amp
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.sync_bn, self.ema_decay = sync_bn, ema_decay
        self.train_transform, self.val_transform = train_transform, val_transform
        self.loss_name, self.arch, self.settings = loss_name, arch, dict(settings or {})
        self.difficult_examples = difficult_examples
        self.class_names = list(class_names) if class_names is not None else None
        self.tensorboard, self.lr_names, self.val_split = tensorboard, lr_names, val_split
        self.thresholds, self.calibrate, self.thresholds_name = thresholds, calibrate, thresholds_name
        self.best_score = 0.0
        self.best_ap = None  # rank 0: {'epoch', 'label', 'ap'} of the best weights validated in this run
        self.ema = None  # ModelEma when ema_decay > 0, made by learning()
        # One scaler for the whole run: its scale adapts across iterations and is checkpointed.
        # bfloat16 has float32's exponent range: its gradients need no scaling.
        self.scaler = _grad_scaler(self.amp and self.amp_dtype == torch.float16)
        self.state = {'meter_loss': AverageValueMeter(), 'ap_meter': AveragePrecisionMeter(difficult_examples)}

    # ---- one epoch: the loop and its hooks, in the order they run ------------------------------
    def run_epoch(self, training, data_loader, model, criterion, optimizer=None, desc=''):
        """One pass over ``data_loader`` through the hooks; returns ``state['results']``."""
        s = self.state
        self.on_start_epoch()
        main = distributed.is_main_process()
        bar = tqdm(data_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (self.progress and main))
        end = time.perf_counter()
        for i, sample in enumerate(bar):
            data_time = time.perf_counter() - end
            s['iteration'] = i
            self.on_start_batch(sample)
            self.on_forward(training, model, criterion, optimizer)
            self.on_end_batch()
            batch_time = time.perf_counter() - end
            end = time.perf_counter()
            if self.print_freq and i % self.print_freq == 0 and main:
                tqdm.write(f'{desc} [{i}/{len(data_loader)}]  time {batch_time:.3f}  data {data_time:.3f}  '
                           f"loss {s['loss_value']:.4f} ({s['meter_loss'].value()[0]:.4f})")
            bar.set_postfix(loss=f"{s['meter_loss'].value()[0]:.4f}",
                            img_s=f"{len(s['labels']) / max(batch_time, 1e-9):.1f}", refresh=False)
        bar.close()
        self.on_end_epoch(training, len(data_loader.dataset))
        return s['results']

    def on_start_epoch(self):
        self.state['meter_loss'].reset()
        self.state['ap_meter'].reset()

    def on_start_batch(self, sample):
        """Unpack the loader's ``((images, names, word_vectors), labels)`` onto the device."""
        (images, _names, word_vectors), labels = sample
        s = self.state
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
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
        if self.clip_grad_norm:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()

    def on_end_batch(self):
        self.state['meter_loss'].add(self.state['loss_value'])
        self.state['ap_meter'].add(self.state['output'].detach(), self.state['labels'])

    def on_end_epoch(self, training, num_samples):
        """``state['results']``: the mean loss and the mAP (percent) over every process's scores;
        after a validation, rank 0 also gets 'eval', every metric (``metrics.evaluate``)."""
        meter = self.state['ap_meter']
        scores = distributed.gather_in_order(meter.scores, num_samples)
        targets = distributed.gather_in_order(meter.targets, num_samples)
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

    def train(self, data_loader, model, criterion, optimizer, epoch):
        model.train()
        return self.run_epoch(True, data_loader, model, criterion, optimizer, f'Epoch {epoch + 1} train')

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
    def learning(self, model, criterion, train_dataset, val_dataset, optimizer=None):
        """Resume if asked, then evaluate once (``evaluate``: returns the mAP; ``train_dataset``
        may be None) or train [start_epoch, max_epochs) (returns the best validation mAP)."""
        net, val_loader, checkpoint = self.prepare(model, criterion, val_dataset)
        if self.evaluate:
            return self.evaluate_once(net, criterion, val_loader, resumed=checkpoint is not None)
        train_loader = self.prepare_training(model, optimizer, train_dataset, checkpoint)
        try:
            for epoch in range(self.start_epoch, self.max_epochs):
                self.state['epoch'] = epoch
                lrs = self.adjust_learning_rate(optimizer)
                train_loader.sampler.set_epoch(epoch)
                start = time.perf_counter()
                train = self.train(train_loader, net, criterion, optimizer, epoch)
                train_time = time.perf_counter() - start
                val = self.validate(val_loader, net, criterion)
                ema_val = self.validate_ema(val_loader, criterion) if self.ema else None
                self.record_epoch(model, optimizer, dict(epoch=epoch + 1, lr=lrs, train=train, val=val,
                                                      ema_val=ema_val, train_time=train_time,
                                                      time=time.perf_counter() - start))
        finally:
            self.folder.close_tensorboard()
        self.report_best(resumed=checkpoint is not None)
        distributed.barrier()
        return self.best_score

    def prepare(self, model, criterion, val_dataset):
        """Transforms, resumed weights, device, DDP, EMA; returns (network to run, eval loader,
        the resumed checkpoint or None)."""
        self.default_transforms(model)
        val_dataset.transform = self.val_transform
        checkpoint = self.resume_weights(model) if self.resume else None
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        model.to(self.device)
        criterion.to(self.device)
        net = self.wrap(model)
        if self.ema_decay and not self.evaluate:  # after DDP made every process's weights rank 0's
            self.ema = ModelEma(model, self.ema_decay)
        return net, self.make_loader(val_dataset, training=False), checkpoint

    def prepare_training(self, model, optimizer, train_dataset, checkpoint):
        """Optimizer, scaler, EMA and random states of the resumed run; the log cut to the resumed
        epoch; returns the training loader."""
        if optimizer is None:
            raise ValueError('training needs an optimizer')
        train_dataset.transform = self.train_transform
        for group in optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])
        if checkpoint is not None:
            self.resume_training(checkpoint, optimizer)
        train_loader = self.make_loader(train_dataset, training=True)
        self.lr_names = lr_group_names(len(optimizer.param_groups), self.lr_names)
        if self.folder:
            self.folder.truncate_log(self.start_epoch)
            if self.tensorboard:  # the log's epochs are TensorBoard's steps: both restart after start_epoch
                self.folder.open_tensorboard(self.settings.get('args'), purge_step=self.start_epoch + 1)
        if self.start_epoch >= self.max_epochs:
            print(f'=> nothing to train: start epoch {self.start_epoch} >= epochs {self.max_epochs}')
        if checkpoint is not None and 'rng' in checkpoint:  # last: nothing above may draw from them
            rng = checkpoint['rng']
            set_rng_state(rng[distributed.get_rank()] if len(rng) == distributed.get_world_size() else rng[0])
        return train_loader

    def default_transforms(self, model):
        """The official ones, unless given: multi-scale crop + flip for training, warp for evaluation."""
        size = self.image_size
        normalize = transforms.Normalize(mean=model.image_normalization_mean, std=model.image_normalization_std)
        if self.train_transform is None:
            self.train_transform = transforms.Compose([
                MultiScaleCrop(size, scales=(1.0, 0.9, 0.8, 0.7, 0.6), max_distort=2),
                transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
        if self.val_transform is None:
            self.val_transform = eval_transform(size, model.image_normalization_mean, model.image_normalization_std)

    def make_loader(self, dataset, training):
        """Shuffled (training) or ordered loader over this process's share of the dataset."""
        sampler = DistributedSampler(dataset, num_replicas=distributed.get_world_size(),
                                     rank=distributed.get_rank(), shuffle=training, seed=self.seed or 0)
        return DataLoaderX(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
                           pin_memory=self.device.type == 'cuda', persistent_workers=self.workers > 0)

    def adjust_learning_rate(self, optimizer):
        """Set every group's lr from its base lr ('initial_lr') and the epoch; return the lrs in
        group order (``lr_names``)."""
        for group in optimizer.param_groups:
            group['lr'] = lr_at(group['initial_lr'], self.state['epoch'], self.epoch_step)
        return [group['lr'] for group in optimizer.param_groups]

    def resume_weights(self, model):
        """Load ``resume`` into ``model`` (strict); set start epoch and best score; return the dict."""
        checkpoint = ckpt.load_checkpoint(model, self.resume)
        self.start_epoch = int(checkpoint.get('epoch', 0))
        self.best_score = float(checkpoint.get('best_score', 0.0))
        where = f" '{self.resume}'" if isinstance(self.resume, (str, os.PathLike)) else ''
        print(f'=> loaded checkpoint{where} (epoch {self.start_epoch}, best mAP {self.best_score:.3f})')
        return checkpoint

    def resume_training(self, checkpoint, optimizer):
        """Optimizer, GradScaler and EMA state from a checkpoint of ours; released ones have none.

        The optimizer's hyper-parameters (base lr, momentum, weight decay) stay those given now.
        """
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
        if checkpoint.get('scaler') and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint['scaler'])
        if self.ema is not None:
            if 'ema' in checkpoint:
                self.ema.module.load_state_dict(checkpoint['ema'])
            else:
                print('=> checkpoint has no weight average: the EMA starts from the loaded weights')

    def wrap(self, model):
        """SyncBatchNorm (``sync_bn``) and DistributedDataParallel when several processes run."""
        if distributed.get_world_size() == 1:
            if self.sync_bn:
                print('=> --sync-bn: a single process, nothing to synchronise')
            return model
        if self.sync_bn:
            if self.device.type != 'cuda':
                raise UsageError('--sync-bn needs CUDA: PyTorch synchronises BatchNorm on GPUs only')
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # Every trainable parameter must get a gradient (MSRN freezes its unused W, B, conv_buffer0),
        # so DDP can skip the per-iteration search for unused ones.
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    def evaluate_once(self, model, criterion, val_loader, resumed):
        """The ``evaluate`` branch of ``learning``: validate, measure with the given per-class
        thresholds and calibrate new ones if asked, write the eval JSON, return the mAP."""
        if not resumed:
            print('=> evaluating the weights as built (no resume checkpoint given)')
        results = self.validate(val_loader, model, criterion)
        if results.get('eval'):   # rank 0
            print(report.format_class_ap(results['eval']['ap'], self.class_names,
                                         title=f'per-class AP, {self.val_split}'))
            record = self.eval_record(results, epoch=self.start_epoch)
            if self.thresholds is not None:
                record['per_class_thresholds'] = self.measure_thresholds(results, self.thresholds['values'],
                                                                         f"from {self.thresholds['source']}")
            if self.calibrate is not None:
                record['calibrated_thresholds'] = self.calibrate_thresholds(results)
            if self.folder:
                self.folder.write_eval(self.eval_name, record)
        distributed.barrier()  # every process returns once rank 0 has written its files
        return results['mAP']

    def measure_thresholds(self, results, thresholds, source):
        """OP ... CF1 with per-class probability thresholds, printed and returned for the eval JSON
        with each class's F1 (percent; None without a positive)."""
        scores, targets = results['scores'], results['targets']
        figures = metrics.thresholded_precision_recall(scores, targets, thresholds)
        print(report.format_thresholded(figures, source))
        f1 = metrics.per_class_f1(scores, targets, thresholds, self.difficult_examples)
        return dict(figures, unit='probability', thresholds=source, per_class_f1=_percent_or_none(f1))

    def calibrate_thresholds(self, results):
        """Per-class probability thresholds for ``calibrate`` on this split, written to
        ``thresholds_name``; prints and returns what they give here (optimistic: chosen here)."""
        calibration = metrics.calibrate_thresholds(results['scores'], results['targets'], self.calibrate,
                                                   self.difficult_examples)
        names = report.class_names_or_indices(self.class_names, len(calibration.thresholds))
        data = self.settings.get('args', {}).get('data')
        where = f"the {self.val_split} split ({results['eval']['num_samples']} images)" + \
            (f' of {data}' if data else '')
        if self.folder:
            self.folder.write_json(self.thresholds_name, metrics.thresholds_record(calibration, names, where))
            print(f'=> per-class thresholds (probabilities) for {calibration.objective} on {where}: '
                  f'{self.folder.file(self.thresholds_name)}')
        for label, kept in (('no positive image here', calibration.no_positive),
                            (f'{calibration.objective} not reached', calibration.unreachable)):
            if kept:
                print(f"   kept 0.5 ({label}): {', '.join(names[k] for k in kept)}")
        default_f1 = metrics.per_class_f1(results['scores'], results['targets'], metrics.DEFAULT_THRESHOLD,
                                          self.difficult_examples)
        return dict(self.measure_thresholds(results, calibration.thresholds,
                                            f'calibrated for {calibration.objective} on this split: optimistic'),
                    file=self.thresholds_name, per_class_f1_at_default=_percent_or_none(default_f1))

    # ---- what an epoch leaves behind ------------------------------------------------------------
    def record_epoch(self, model, optimizer, epoch):
        """Keep the best score (and its per-class AP); write the checkpoints, the eval JSON, the log line
        and curves, the TensorBoard scalars; print the epoch line. ``epoch``: epoch (1-based), lr,
        train / val / ema_val results, train_time, time."""
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
        state, best = self.checkpoints(model, optimizer, record['epoch'], best_from=winner if is_best else None)
        if self.folder:
            self.folder.save_checkpoint(state, best)
            self.folder.write_eval(f"eval_epoch{record['epoch']:03d}.json", self.eval_record(
                val, epoch=record['epoch'], **({'ema': self.eval_record(ema_val)} if ema_val else {})))
            self.folder.log_epoch(record)
            if self.folder.tensorboard is not None:
                self.folder.write_tensorboard(record['epoch'], tensorboard_scalars(
                    record, self.lr_names, val.get('eval'), ema_val.get('eval') if ema_val else None,
                    self.class_names))
        print(report.format_epoch_line(record, self.max_epochs, self.lr_names, self.loss_name,
                                       best_from=winner if is_best else None))

    def report_best(self, resumed):
        """Print the per-class AP of the best weights (rank 0, after training)."""
        if self.best_ap is not None:
            best = self.best_ap
            print(report.format_class_ap(best['ap'], self.class_names,
                                         title=f"per-class AP of the best epoch ({best['epoch']}), {best['label']}"))
        elif resumed and distributed.is_main_process() and self.start_epoch < self.max_epochs:
            print(f'=> no epoch of this run beat the best mAP {self.best_score:.3f} it resumed from: the per-class '
                  'AP of that epoch is in its eval JSON')

    def checkpoints(self, model, optimizer, epoch, best_from=None):
        """(``checkpoint.pth.tar``'s dict: everything an exact resume needs, ``model_best.pth.tar``'s
        dict or None): the best holds the weights named by ``best_from`` ('model' or 'ema') and the
        settings only. Every process must call it (it gathers the random generators' states)."""
        rng = distributed.all_gather_objects(get_rng_state())
        if not self.folder:
            return None, None
        official = {'epoch': epoch, 'arch': self.arch, 'state_dict': model.state_dict(),
                    'best_score': self.best_score}
        state = {**official, **self.settings, 'optimizer': optimizer.state_dict(),
                 'scaler': self.scaler.state_dict(), 'rng': rng}
        if self.ema is not None:
            state['ema'] = self.ema.module.state_dict()
        best = None
        if best_from is not None:
            weights = state['ema'] if best_from == 'ema' else official['state_dict']
            best = {**official, 'state_dict': weights, **self.settings, 'best_weights': best_from}
        return state, best

    def eval_record(self, results, **extra):
        """The eval JSON record of a validation's results (rank 0)."""
        return eval_record(results['eval'], self.class_names, loss=results['loss'], **extra)

"""Training and evaluation loops with the official torchnet-style hooks.

``Engine`` -> ``MultiLabelMAPEngine`` -> ``GCNMultiLabelMAPEngine``. ``learning`` prepares the
run, resumes, then either evaluates once or loops over epochs of ``train`` and ``validate``.
One epoch (``run_epoch``) calls the hooks ``on_start_epoch``, then per batch ``on_start_batch``,
``on_forward`` (forward, loss and, when training, backward and optimizer step) and
``on_end_batch``, then ``on_end_epoch``; it returns ``epoch_results()``.

The configuration is kept in attributes (the constructor's keyword arguments). ``self.state``
holds only the values of the current epoch and batch, which the hooks read and write:

key               written by       meaning
'epoch'           learning         0-based epoch being trained (or last trained)
'training'        run_epoch        True in a training epoch, False in an evaluation
'phase'           run_epoch        what runs: 'Epoch 3 train', 'Test' or 'EMA' (the averaged weights)
'iteration'       run_epoch        batch index in the epoch
'input', 'target' run_epoch        the loader's batch, as loaded
'image', 'name'   on_start_batch   images on the device [B, 3, H, W]; file names
'word_vectors'    on_start_batch   [B, C, 300] on the device (GCN engine)
'target_gt'       on_start_batch   labels as loaded, {1, 0, -1} [B, C] (for the metrics)
'target'          on_start_batch   loss targets {1, 1, 0} [B, C] float on the device
'output', 'loss'  on_forward       logits [B, C]; the loss (scalar tensor)
'loss_value'      on_forward       the loss as a float, mean over processes
'meter_loss'      on_end_batch     running mean of 'loss_value' over the epoch
'ap_meter'        on_end_batch     the epoch's scores and labels (multi-label engines)
'results'         run_epoch        ``epoch_results()`` of the epoch, read by on_end_epoch

One code path for one process or many (torchrun + DistributedDataParallel).
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
from util import (AveragePrecisionMeter, AverageValueMeter, ModelEma, MultiScaleCrop, eval_transform, get_rng_state,
                  set_rng_state)


class DataLoaderX(DataLoader):
    """DataLoader whose batches are fetched one ahead in a background thread (official)."""

    def __iter__(self):
        return BackgroundGenerator(super().__iter__())


def lr_at(base_lr, epoch, epoch_step):
    """Learning rate of an epoch: ``base_lr`` x 0.1 for each step already reached (resume-safe)."""
    return base_lr * 0.1 ** sum(epoch >= step for step in epoch_step)


def _grad_scaler(enabled):
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler('cuda', enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


class Engine:
    """Epoch loops, checkpoints and resume for a model ``output = model(input)``.

    device: torch.device of this process. batch_size: per process. workers: loader processes.
    max_epochs: train epochs [start_epoch, max_epochs). start_epoch: first epoch without resume
    (it also sets the lr schedule's position). epoch_step: epochs at which the lr is x0.1.
    image_size: side of the default transforms. print_freq: print every N batches (0: never).
    save_dir: where checkpoints, logs and eval JSONs go (None: write nothing). resume: checkpoint
    path (or the dict already read) to continue from. evaluate: only evaluate, writing the eval
    JSON as ``eval_name``. seed: seed of the sampler's shuffling. clip_grad_norm: max gradient
    norm, None = off. amp: float16 autocast + GradScaler (None: on for CUDA only). progress:
    progress bars (None: when stderr is a terminal). sync_bn: SyncBatchNorm across processes.
    ema_decay: keep an exponential moving average of the weights (0: off), validate it too, and
    keep whichever scores better as the best weights.
    train_transform / val_transform: None for the official ones. loss_name: shown in the epoch
    line (losses of different kinds are not comparable). arch: the checkpoints' 'arch'.
    settings: further checkpoint entries (``checkpoint.settings_entries``), stored as given.
    """

    def __init__(self, *, device=torch.device('cpu'), batch_size=16, workers=4, max_epochs=20,
                 start_epoch=0, epoch_step=(30,), image_size=224, print_freq=0, save_dir=None,
                 resume=None, evaluate=False, eval_name='eval.json', seed=0, clip_grad_norm=None, amp=None,
                 progress=None, sync_bn=False, ema_decay=0.0, train_transform=None, val_transform=None,
                 loss_name=None, arch=None, settings=None):
        self.device = torch.device(device)
        self.batch_size, self.workers, self.image_size = batch_size, workers, image_size
        self.max_epochs, self.start_epoch, self.epoch_step = max_epochs, start_epoch, list(epoch_step)
        self.print_freq, self.save_dir, self.seed = print_freq, save_dir, seed
        self.resume, self.evaluate, self.eval_name = resume, evaluate, eval_name
        self.clip_grad_norm = clip_grad_norm
        self.amp = self.device.type == 'cuda' if amp is None else amp
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.sync_bn, self.ema_decay = sync_bn, ema_decay
        self.train_transform, self.val_transform = train_transform, val_transform
        self.loss_name, self.arch, self.settings = loss_name, arch, dict(settings or {})
        self.best_score = 0.0
        self.ema = None  # ModelEma when ema_decay > 0, made by learning()
        # One scaler for the whole run: its scale adapts across iterations and is checkpointed.
        self.scaler = _grad_scaler(self.amp)
        self.state = {'meter_loss': AverageValueMeter()}

    # ---- hooks ------------------------------------------------------------------------------
    def on_start_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        self.state['meter_loss'].reset()

    def on_end_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        """Called once ``state['results']`` holds the epoch's results."""

    def on_start_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        self.state['input'] = self.state['input'].to(self.device, non_blocking=True)
        self.state['target'] = self.state['target'].to(self.device, non_blocking=True)

    def on_forward(self, training, model, criterion, data_loader, optimizer=None, display=True):
        """Forward and loss (float16 autocast when amp); when training, also backward and step."""
        s = self.state
        with torch.set_grad_enabled(training), \
                torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            s['output'], s['loss'] = self.output_and_loss(model, criterion)
        s['loss_value'] = distributed.mean_over_processes(s['loss'].item())
        if training:
            self.backward_and_step(model, optimizer)

    def on_end_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        self.state['meter_loss'].add(self.state['loss_value'])

    # ---- what a batch computes --------------------------------------------------------------
    def output_and_loss(self, model, criterion):
        """(output, loss) of the current batch; subclasses adapt this to their model."""
        output = model(self.state['input'])
        return output, criterion(output, self.state['target'])

    def backward_and_step(self, model, optimizer):
        """Backward of ``state['loss']``, optional clipping, optimizer step, EMA update."""
        s = self.state
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

    def epoch_results(self, training, data_loader):
        """What an epoch measured: {'loss': mean loss}; subclasses add their metrics ('mAP', which
        ``learning`` needs to keep the best weights)."""
        return {'loss': self.state['meter_loss'].value()[0]}

    # ---- set-up -----------------------------------------------------------------------------
    def init_learning(self, model, criterion):
        """Default transforms (official): multi-scale crop + flip for training, warp for eval."""
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
        """Set every group's lr from its base lr ('initial_lr') and the epoch; return the lrs."""
        for group in optimizer.param_groups:
            group['lr'] = lr_at(group['initial_lr'], self.state['epoch'], self.epoch_step)
        return sorted({group['lr'] for group in optimizer.param_groups})

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

    # ---- loops ------------------------------------------------------------------------------
    def learning(self, model, criterion, train_dataset, val_dataset, optimizer=None):
        """Resume if asked, then evaluate once (``evaluate``: returns the mAP; ``train_dataset``
        may be None) or train [start_epoch, max_epochs) (returns the best validation mAP)."""
        net, val_loader, checkpoint = self.prepare(model, criterion, val_dataset)
        if self.evaluate:
            return self.evaluate_once(net, criterion, val_loader, resumed=checkpoint is not None)
        train_loader = self.prepare_training(model, optimizer, train_dataset, checkpoint)
        for epoch in range(self.start_epoch, self.max_epochs):
            self.state['epoch'] = epoch
            lrs = self.adjust_learning_rate(optimizer)
            train_loader.sampler.set_epoch(epoch)
            start = time.perf_counter()
            train = self.train(train_loader, net, criterion, optimizer, epoch)
            train_time = time.perf_counter() - start
            val = self.validate(val_loader, net, criterion)
            ema_val = self.validate_ema(val_loader, criterion) if self.ema else None
            self.end_training_epoch(model, optimizer, epoch, lrs, train, val, ema_val,
                                    train_time, time.perf_counter() - start)
        distributed.barrier()
        return self.best_score

    def prepare(self, model, criterion, val_dataset):
        """Transforms, resumed weights, device, DDP, EMA; returns (network to run, eval loader,
        the resumed checkpoint or None)."""
        self.init_learning(model, criterion)
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
        if self.save_dir and distributed.is_main_process():
            report.truncate_log(self.save_dir, self.start_epoch)
        if self.start_epoch >= self.max_epochs:
            print(f'=> nothing to train: start epoch {self.start_epoch} >= epochs {self.max_epochs}')
        if checkpoint is not None and 'rng' in checkpoint:  # last: nothing above may draw from them
            rng = checkpoint['rng']
            set_rng_state(rng[distributed.get_rank()] if len(rng) == distributed.get_world_size() else rng[0])
        return train_loader

    def evaluate_once(self, model, criterion, val_loader, resumed):
        """The ``evaluate`` branch of ``learning``: validate, write the eval JSON, return the mAP."""
        if not resumed:
            print('=> evaluating the weights as built (no resume checkpoint given)')
        results = self.validate(val_loader, model, criterion)
        if self.save_dir and distributed.is_main_process():
            self.write_eval(self.eval_name, results, epoch=self.start_epoch)
        distributed.barrier()  # every process returns once rank 0 has written its files
        return results['mAP']

    def end_training_epoch(self, model, optimizer, epoch, lrs, train, val, ema_val, train_time, total_time):
        """Keep the best score, write checkpoints, eval JSON, log line and curves; print the epoch line."""
        scores = {'model': val['mAP'], 'ema': ema_val['mAP'] if ema_val else math.nan}
        winner = max(scores, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
        is_best = scores[winner] > self.best_score  # False for a NaN mAP, which must not become the best
        if is_best:
            self.best_score = scores[winner]
        record = dict(epoch=epoch + 1, lr=lrs, train_loss=train['loss'], train_mAP=train['mAP'],
                      val_loss=val['loss'], val_mAP=val['mAP'], best_mAP=self.best_score,
                      train_time_s=round(train_time, 3), time_s=round(total_time, 3))
        if ema_val:
            record.update(ema_val_loss=ema_val['loss'], ema_val_mAP=ema_val['mAP'])
        self.save_epoch(model, optimizer, record, best_from=winner if is_best else None)
        if self.save_dir and distributed.is_main_process():
            self.write_eval(f'eval_epoch{epoch + 1:03d}.json', val, epoch=epoch + 1,
                            **({'ema': self.eval_record(ema_val)} if ema_val else {}))
            report.append_log(self.save_dir, record)
            report.plot_curves(self.save_dir)
        ema_part = f" EMA mAP {ema_val['mAP']:.3f}" if ema_val else ''
        best_part = ' (EMA weights)' if is_best and winner == 'ema' else ''
        print(f"Epoch {epoch + 1}/{self.max_epochs}  lr {', '.join(f'{lr:g}' for lr in lrs)}  "
              f"train loss{f' ({self.loss_name})' if self.loss_name else ''} {train['loss']:.4f} "
              f"mAP {train['mAP']:.2f}  "
              f"val loss {val['loss']:.4f} mAP {val['mAP']:.3f}{ema_part}  "
              f'best {self.best_score:.3f}{best_part}  {total_time:.1f}s')

    def save_epoch(self, model, optimizer, record, best_from=None):
        """``checkpoint.pth.tar`` (everything an exact resume needs) and, when ``best_from`` names the
        weights that scored best ('model' or 'ema'), ``model_best.pth.tar`` (weights and settings only)."""
        rng = distributed.all_gather_objects(get_rng_state())  # every process's generators
        if not (self.save_dir and distributed.is_main_process()):
            return
        official = {'epoch': record['epoch'], 'arch': self.arch, 'state_dict': model.state_dict(),
                    'best_score': self.best_score}
        state = {**official, **self.settings, 'optimizer': optimizer.state_dict(),
                 'scaler': self.scaler.state_dict(), 'rng': rng}
        if self.ema is not None:
            state['ema'] = self.ema.module.state_dict()
        best = None
        if best_from is not None:
            weights = state['ema'] if best_from == 'ema' else official['state_dict']
            best = {**official, 'state_dict': weights, **self.settings, 'best_weights': best_from}
        ckpt.save_checkpoint(state, self.save_dir, best)

    def eval_record(self, results):
        """The JSON record of a validation's results (multi-label engines)."""
        return report.eval_record(results['eval'], getattr(self, 'class_names', None), loss=results['loss'])

    def write_eval(self, name, results, **extra):
        """``save_dir/name``: the eval JSON of a validation (when it computed the full metrics)."""
        if results.get('eval'):
            report.write_json(os.path.join(self.save_dir, name), {**extra, **self.eval_record(results)})

    def train(self, data_loader, model, criterion, optimizer, epoch):
        model.train()
        return self.run_epoch(True, data_loader, model, criterion, optimizer, f'Epoch {epoch + 1} train')

    def validate(self, data_loader, model, criterion, label='Test'):
        model.eval()
        return self.run_epoch(False, data_loader, model, criterion, None, label)

    def validate_ema(self, data_loader, criterion):
        """Validate the weight average. Each process averages its own BatchNorm statistics, so rank 0's
        average is broadcast first: every process evaluates (and goes on from) the same model."""
        distributed.broadcast_buffers(self.ema.module)
        return self.validate(data_loader, self.ema.module, criterion, label='EMA')

    def run_epoch(self, training, data_loader, model, criterion, optimizer, desc):
        """One pass over ``data_loader`` through the hooks; returns ``epoch_results``."""
        s = self.state
        s['training'], s['phase'] = training, desc
        self.on_start_epoch(training, model, criterion, data_loader, optimizer)
        main = distributed.is_main_process()
        bar = tqdm(data_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (self.progress and main))
        end = time.perf_counter()
        for i, (input, target) in enumerate(bar):
            data_time = time.perf_counter() - end
            s['iteration'], s['input'], s['target'] = i, input, target
            self.on_start_batch(training, model, criterion, data_loader, optimizer)
            self.on_forward(training, model, criterion, data_loader, optimizer)
            self.on_end_batch(training, model, criterion, data_loader, optimizer)
            batch_time = time.perf_counter() - end
            end = time.perf_counter()
            if self.print_freq and i % self.print_freq == 0 and main:
                tqdm.write(f'{desc} [{i}/{len(data_loader)}]  time {batch_time:.3f}  data {data_time:.3f}  '
                           f"loss {s['loss_value']:.4f} ({s['meter_loss'].value()[0]:.4f})")
            bar.set_postfix(loss=f"{s['meter_loss'].value()[0]:.4f}",
                            img_s=f'{len(target) / max(batch_time, 1e-9):.1f}', refresh=False)
        bar.close()
        s['results'] = self.epoch_results(training, data_loader)
        self.on_end_epoch(training, model, criterion, data_loader, optimizer)
        return s['results']


class MultiLabelMAPEngine(Engine):
    """Multi-label engine: batches ``((image, name), target)`` with targets in {1, 0, -1};
    measures AP; ``model(image)`` returns logits [B, C].

    difficult_examples: leave label 0 out of AP (all four official demos do).
    class_names: for the per-class AP table of the eval JSON (default: '0', '1', ...).
    """

    def __init__(self, *, difficult_examples=True, class_names=None, **kwargs):
        super().__init__(**kwargs)
        self.difficult_examples = difficult_examples
        self.class_names = list(class_names) if class_names is not None else None
        self.state['ap_meter'] = AveragePrecisionMeter(difficult_examples)

    def on_start_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        super().on_start_epoch(training, model, criterion, data_loader, optimizer, display)
        self.state['ap_meter'].reset()

    def on_start_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        s = self.state
        s['image'] = s['input'][0].to(self.device, non_blocking=True)
        s['name'] = s['input'][1]
        s['target_gt'] = s['target']
        # MultiLabelSoftMarginLoss wants {0, 1}: present and difficult -> 1 (official quirk:
        # difficult counts as positive in training), absent -> 0. A new tensor: target_gt stays intact.
        s['target'] = (s['target_gt'] >= 0).float().to(self.device, non_blocking=True)

    def output_and_loss(self, model, criterion):
        logits = model(self.state['image'])
        return logits, criterion(logits, self.state['target'])

    def on_end_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        super().on_end_batch(training, model, criterion, data_loader, optimizer, display)
        self.state['ap_meter'].add(self.state['output'].detach(), self.state['target_gt'])

    def epoch_results(self, training, data_loader):
        """Adds 'mAP' (percent) over every process's scores and, on validation (rank 0), 'eval':
        every metric (``metrics.evaluate``)."""
        results = super().epoch_results(training, data_loader)
        meter, total = self.state['ap_meter'], len(data_loader.dataset)
        scores = distributed.gather_in_order(meter.scores, total)
        targets = distributed.gather_in_order(meter.targets, total)
        broken = int((~torch.isfinite(scores)).any(1).sum())
        if broken and not training:  # every process sees the gathered scores, so all stop together
            raise NonFiniteOutputError(
                f'{broken} of {total} evaluation images got NaN or infinite scores: the model overflowed '
                '(float16 autocast on CUDA?) or its weights are broken; check the checkpoint, or try --device cpu')
        if training or not distributed.is_main_process():
            results['mAP'] = metrics.mean_average_precision(
                metrics.average_precision(scores, targets, self.difficult_examples))
        else:
            results['eval'] = metrics.evaluate(scores, targets, self.difficult_examples)
            results['mAP'] = results['eval']['mAP']
        return results

    def on_end_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        """Prints the evaluation summary after a validation (rank 0)."""
        results = self.state['results']
        if display and results.get('eval'):
            print(report.format_summary(results['eval'], loss=results['loss'], label=self.state['phase']))


class GCNMultiLabelMAPEngine(MultiLabelMAPEngine):
    """MSRN's engine: batches ``((image, name, word_vectors [B, C, 300]), target)``;
    ``model(image, word_vectors)`` returns ``(logits [B, C], group_loss)``, and the loss is
    ``criterion(logits, y) + group_loss``."""

    def on_start_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        super().on_start_batch(training, model, criterion, data_loader, optimizer, display)
        self.state['word_vectors'] = self.state['input'][2].float().to(self.device, non_blocking=True)

    def output_and_loss(self, model, criterion):
        logits, group_loss = model(self.state['image'], self.state['word_vectors'])
        return logits, criterion(logits, self.state['target']) + group_loss

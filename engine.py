"""Training and evaluation loops with the official torchnet-style hooks.

``Engine`` -> ``MultiLabelMAPEngine`` -> ``GCNMultiLabelMAPEngine``. ``learning`` resumes,
trains, validates and checkpoints; ``train`` and ``validate`` run one epoch through the hooks
``on_start_epoch``, ``on_start_batch``, ``on_forward``, ``on_end_batch``, ``on_end_epoch``,
which talk through ``self.state``:

key                           written by       meaning
'input', 'target'             the epoch loop   the loader's batch, as loaded
'image', 'name'               on_start_batch   images on the device [B, 3, H, W]; file names
'word_vectors'                on_start_batch   [B, C, 300] on the device (GCN engine)
'target_gt'                   on_start_batch   labels as loaded, {1, 0, -1} [B, C] (for the metrics)
'target'                      on_start_batch   loss targets {1, 1, 0} [B, C] float on the device
'output', 'loss'              on_forward       logits [B, C]; the loss (scalar tensor)
'loss_batch'                  on_forward       the loss as a float, mean over processes
'epoch', 'iteration'          loops            0-based epoch and batch index
'best_score'                  learning         best validation mAP so far (percent)
'last_eval'                   on_end_epoch     metrics.evaluate() of the last validation (rank 0)
plus the constructor's keyword arguments and the meters 'meter_loss', 'batch_time', 'data_time',
'ap_meter'. One code path for one process or many (torchrun + DistributedDataParallel).
"""
import math
import os
import subprocess
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
from models import CheckpointError, load_checkpoint
from util import (AveragePrecisionMeter, AverageValueMeter, MultiScaleCrop, eval_transform, get_rng_state,
                  seed_everything, set_rng_state)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stops."""


class NonFiniteOutputError(RuntimeError):
    """The model gave NaN or infinite scores on evaluation images."""


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

    Keyword arguments (all stored in ``self.state``):
    device: torch.device of this process. batch_size: per process. workers: loader processes.
    max_epochs: train epochs [start_epoch, max_epochs). start_epoch: first epoch without resume
    (it also sets the lr schedule's position). epoch_step: epochs at which the lr is x0.1.
    image_size: side of the default transforms. print_freq: print every N batches (0: never).
    save_dir: where checkpoints, logs and eval JSONs go (None: write nothing). resume: checkpoint
    path to continue from (missing or unreadable: CheckpointError). evaluate: only evaluate.
    seed: seed of the sampler's shuffling. clip_grad_norm: max gradient norm, None = off.
    amp: float16 autocast + GradScaler (default: on for CUDA only). use_pb: tqdm bars.
    train_transform / val_transform: None for the official ones. arch: stored in checkpoints.
    args: dict of the command-line arguments, stored in checkpoints.
    """

    def __init__(self, *, device=torch.device('cpu'), batch_size=16, workers=4, max_epochs=20,
                 start_epoch=0, epoch_step=(30,), image_size=224, print_freq=0, save_dir=None,
                 resume=None, evaluate=False, seed=0, clip_grad_norm=None, amp=None, use_pb=True,
                 train_transform=None, val_transform=None, arch=None, args=None):
        device = torch.device(device)
        self.state = dict(
            device=device, batch_size=batch_size, workers=workers, max_epochs=max_epochs,
            start_epoch=start_epoch, epoch_step=list(epoch_step), image_size=image_size,
            print_freq=print_freq, save_dir=save_dir, resume=resume, evaluate=evaluate, seed=seed,
            clip_grad_norm=clip_grad_norm, amp=device.type == 'cuda' if amp is None else amp,
            use_pb=use_pb, train_transform=train_transform, val_transform=val_transform, arch=arch,
            args=_plain(args or {}), best_score=0.0,
            meter_loss=AverageValueMeter(), batch_time=AverageValueMeter(), data_time=AverageValueMeter())
        # One scaler for the whole run: its scale adapts across iterations and is checkpointed.
        self.scaler = _grad_scaler(self.state['amp'])

    # ---- hooks ------------------------------------------------------------------------------
    def on_start_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        for name in ('meter_loss', 'batch_time', 'data_time'):
            self.state[name].reset()

    def on_end_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        """Returns the epoch's mean loss."""
        return self.state['meter_loss'].value()[0]

    def on_start_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        self.state['input'] = self.state['input'].to(self.state['device'], non_blocking=True)
        self.state['target'] = self.state['target'].to(self.state['device'], non_blocking=True)

    def on_end_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        s = self.state
        s['meter_loss'].add(s['loss_batch'])
        if display and s['print_freq'] and s['iteration'] % s['print_freq'] == 0 and distributed.is_main_process():
            tqdm.write('{} [{}/{}]  time {:.3f} ({:.3f})  data {:.3f} ({:.3f})  loss {:.4f} ({:.4f})'.format(
                f"Epoch [{s['epoch'] + 1}]" if training else 'Test', s['iteration'], len(data_loader),
                s['batch_time_current'], s['batch_time'].value()[0], s['data_time_batch'],
                s['data_time'].value()[0], s['loss_batch'], s['meter_loss'].value()[0]))

    def on_forward(self, training, model, criterion, data_loader, optimizer=None, display=True):
        """Forward (float16 autocast when amp), loss, and on training backward + optimizer step."""
        s = self.state
        with torch.set_grad_enabled(training), \
                torch.autocast(device_type=s['device'].type, dtype=torch.float16, enabled=s['amp']):
            s['output'], s['loss'] = self.forward(model, criterion)
        s['loss_batch'] = distributed.mean_over_processes(s['loss'].item())
        if not training:
            return
        if not math.isfinite(s['loss_batch']):
            raise NonFiniteLossError(
                f"training loss is {s['loss_batch']} at epoch {s['epoch'] + 1}, batch {s['iteration']}: "
                'stopping (try a lower learning rate or gradient clipping, and check the data)')
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(s['loss']).backward()
        if s['clip_grad_norm']:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), s['clip_grad_norm'])
        self.scaler.step(optimizer)
        self.scaler.update()

    def forward(self, model, criterion):
        """(output, loss) of the current batch; subclasses adapt this to their model."""
        output = model(self.state['input'])
        return output, criterion(output, self.state['target'])

    # ---- set-up -----------------------------------------------------------------------------
    def init_learning(self, model, criterion):
        """Default transforms (official): multi-scale crop + flip for training, warp for eval."""
        size = self.state['image_size']
        normalize = transforms.Normalize(mean=model.image_normalization_mean, std=model.image_normalization_std)
        if self.state['train_transform'] is None:
            self.state['train_transform'] = transforms.Compose([
                MultiScaleCrop(size, scales=(1.0, 0.9, 0.8, 0.7, 0.6), max_distort=2),
                transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
        if self.state['val_transform'] is None:
            self.state['val_transform'] = eval_transform(size, model.image_normalization_mean,
                                                         model.image_normalization_std)

    def make_loader(self, dataset, training):
        """Shuffled (training) or ordered loader over this process's share of the dataset."""
        s = self.state
        sampler = DistributedSampler(dataset, num_replicas=distributed.get_world_size(),
                                     rank=distributed.get_rank(), shuffle=training, seed=s['seed'] or 0)
        return DataLoaderX(dataset, batch_size=s['batch_size'], sampler=sampler, num_workers=s['workers'],
                           pin_memory=s['device'].type == 'cuda', persistent_workers=s['workers'] > 0)

    def adjust_learning_rate(self, optimizer):
        """Set every group's lr from its base lr ('initial_lr') and the epoch; return the lrs."""
        for group in optimizer.param_groups:
            group['lr'] = lr_at(group['initial_lr'], self.state['epoch'], self.state['epoch_step'])
        return sorted({group['lr'] for group in optimizer.param_groups})

    def resume_from(self, model):
        """Load ``state['resume']`` into ``model``; set start epoch and best score; return the dict."""
        s = self.state
        checkpoint = load_checkpoint(model, s['resume'])  # strict; CheckpointError if missing or unfit
        s['start_epoch'] = int(checkpoint.get('epoch', 0))
        s['best_score'] = float(checkpoint.get('best_score', 0.0))
        print(f"=> loaded checkpoint '{s['resume']}' (epoch {s['start_epoch']}, best mAP {s['best_score']:.3f})")
        return checkpoint

    def restore_training_state(self, checkpoint, optimizer):
        """Optimizer and GradScaler state from a checkpoint of ours; released ones have neither.

        The optimizer's hyper-parameters (base lr, momentum, weight decay) stay those given now.
        """
        if 'optimizer' not in checkpoint:
            print('=> checkpoint has no optimizer state (a released checkpoint?): momentum restarts from zero')
            return
        given = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint optimizer state does not fit the optimizer: {e}") from e
        for group, hyper in zip(optimizer.param_groups, given):
            group.update(hyper)
        if checkpoint.get('scaler') and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint['scaler'])

    def wrap(self, model):
        """DistributedDataParallel when several processes run, else the model itself."""
        if distributed.get_world_size() == 1:
            return model
        device = self.state['device']
        # Every trainable parameter must get a gradient (MSRN freezes its unused W, B, conv_buffer0),
        # so DDP can skip the per-iteration search for unused ones.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)

    # ---- loops ------------------------------------------------------------------------------
    def learning(self, model, criterion, train_dataset, val_dataset, optimizer=None):
        """Resume if asked, then evaluate (``evaluate``) or train [start_epoch, max_epochs).

        Returns the validation mAP (evaluate) or the best one (training).
        """
        s = self.state
        self.init_learning(model, criterion)
        train_dataset.transform = s['train_transform']
        val_dataset.transform = s['val_transform']
        if s['device'].type == 'cuda':
            torch.backends.cudnn.benchmark = True
        model.to(s['device'])
        criterion.to(s['device'])
        checkpoint = self.resume_from(model) if s['resume'] else None
        net = self.wrap(model)
        val_loader = self.make_loader(val_dataset, training=False)

        if s['evaluate']:
            if checkpoint is None:
                print('=> evaluating the weights as built (no resume checkpoint given)')
            score = self.validate(val_loader, net, criterion)
            self._write_eval('eval.json', epoch=s['start_epoch'])
            distributed.barrier()  # every process returns once rank 0 has written its files
            return score

        if optimizer is None:
            raise ValueError('training needs an optimizer')
        for group in optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])
        if checkpoint is not None:
            self.restore_training_state(checkpoint, optimizer)
        train_loader = self.make_loader(train_dataset, training=True)
        if s['save_dir'] and distributed.is_main_process():
            report.truncate_log(s['save_dir'], s['start_epoch'])
        if s['start_epoch'] >= s['max_epochs']:
            print(f"=> nothing to train: start epoch {s['start_epoch']} >= epochs {s['max_epochs']}")
        if checkpoint is not None and 'rng' in checkpoint:
            rng = checkpoint['rng']
            set_rng_state(rng[distributed.get_rank()] if len(rng) == distributed.get_world_size() else rng[0])

        for epoch in range(s['start_epoch'], s['max_epochs']):
            s['epoch'] = epoch
            lrs = self.adjust_learning_rate(optimizer)
            train_loader.sampler.set_epoch(epoch)
            start = time.perf_counter()
            train_map = self.train(train_loader, net, criterion, optimizer, epoch)
            train_loss = s['meter_loss'].value()[0]
            val_map = self.validate(val_loader, net, criterion)
            val_loss = s['meter_loss'].value()[0]
            is_best = val_map > s['best_score']  # False for a NaN mAP, which must not become the best
            if is_best:
                s['best_score'] = val_map
            self._save_epoch(model, optimizer, is_best, dict(
                epoch=epoch + 1, lr=lrs, train_loss=train_loss, train_mAP=train_map, val_loss=val_loss,
                val_mAP=val_map, best_mAP=s['best_score'], time_s=round(time.perf_counter() - start, 3)))
            print(f"Epoch {epoch + 1}/{s['max_epochs']}  lr {', '.join(f'{lr:g}' for lr in lrs)}  "
                  f'train loss {train_loss:.4f} mAP {train_map:.2f}  val loss {val_loss:.4f} mAP {val_map:.3f}  '
                  f"best {s['best_score']:.3f}  {time.perf_counter() - start:.1f}s")
        distributed.barrier()
        return s['best_score']

    def _save_epoch(self, model, optimizer, is_best, record):
        """Checkpoint, eval JSON, log line and curves after an epoch (files by rank 0 only)."""
        s = self.state
        rng = distributed.all_gather_objects(get_rng_state())  # every process's generators
        if not (s['save_dir'] and distributed.is_main_process()):
            return
        ckpt.save_checkpoint({
            'epoch': record['epoch'], 'arch': s['arch'], 'state_dict': model.state_dict(),
            'best_score': s['best_score'], 'optimizer': optimizer.state_dict(),
            'scaler': self.scaler.state_dict(), 'rng': rng, 'args': s['args'],
        }, is_best, s['save_dir'])
        self._write_eval(f"eval_epoch{record['epoch']:03d}.json", epoch=record['epoch'])
        report.append_log(s['save_dir'], record)
        report.plot_curves(s['save_dir'])

    def _write_eval(self, name, **extra):
        """The eval JSON of the last validation, when there is one (multi-label engines)."""
        s = self.state
        if s['save_dir'] and distributed.is_main_process() and s.get('last_eval'):
            report.write_json(os.path.join(s['save_dir'], name), report.eval_record(
                s['last_eval'], s.get('class_names'), loss=s['meter_loss'].value()[0], **extra))

    def train(self, data_loader, model, criterion, optimizer, epoch):
        model.train()
        return self._epoch(True, data_loader, model, criterion, optimizer, f'Epoch {epoch + 1} train')

    def validate(self, data_loader, model, criterion):
        model.eval()
        return self._epoch(False, data_loader, model, criterion, None, 'Test')

    def _epoch(self, training, data_loader, model, criterion, optimizer, desc):
        s = self.state
        self.on_start_epoch(training, model, criterion, data_loader, optimizer)
        bar = tqdm(data_loader, desc=desc, leave=False, dynamic_ncols=True,
                   disable=not (s['use_pb'] and distributed.is_main_process()))
        end = time.perf_counter()
        for i, (input, target) in enumerate(bar):
            s['iteration'] = i
            s['data_time_batch'] = time.perf_counter() - end
            s['data_time'].add(s['data_time_batch'])
            s['input'], s['target'] = input, target
            self.on_start_batch(training, model, criterion, data_loader, optimizer)
            self.on_forward(training, model, criterion, data_loader, optimizer)
            s['batch_time_current'] = time.perf_counter() - end
            s['batch_time'].add(s['batch_time_current'])
            end = time.perf_counter()
            self.on_end_batch(training, model, criterion, data_loader, optimizer)
            bar.set_postfix(loss=f"{s['meter_loss'].value()[0]:.4f}",
                            img_s=f"{len(target) / max(s['batch_time_current'], 1e-9):.1f}", refresh=False)
        bar.close()
        return self.on_end_epoch(training, model, criterion, data_loader, optimizer)


class MultiLabelMAPEngine(Engine):
    """Multi-label engine: batches ``((image, name), target)`` with targets in {1, 0, -1};
    measures AP; ``model(image)`` returns logits [B, C].

    difficult_examples: leave label 0 out of AP (all four official demos do).
    class_names: for the per-class AP table of the eval JSON (default: '0', '1', ...).
    """

    def __init__(self, *, difficult_examples=True, class_names=None, **kwargs):
        super().__init__(**kwargs)
        self.state['difficult_examples'] = difficult_examples
        self.state['class_names'] = list(class_names) if class_names is not None else None
        self.state['ap_meter'] = AveragePrecisionMeter(difficult_examples)

    def on_start_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        super().on_start_epoch(training, model, criterion, data_loader, optimizer, display)
        self.state['ap_meter'].reset()

    def on_start_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        s = self.state
        s['image'] = s['input'][0].to(s['device'], non_blocking=True)
        s['name'] = s['input'][1]
        s['target_gt'] = s['target']
        # MultiLabelSoftMarginLoss wants {0, 1}: present and difficult -> 1 (official quirk:
        # difficult counts as positive in training), absent -> 0. A new tensor: target_gt stays intact.
        s['target'] = (s['target_gt'] >= 0).float().to(s['device'], non_blocking=True)

    def forward(self, model, criterion):
        logits = model(self.state['image'])
        return logits, criterion(logits, self.state['target'])

    def on_end_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        super().on_end_batch(training, model, criterion, data_loader, optimizer, display)
        self.state['ap_meter'].add(self.state['output'].detach(), self.state['target_gt'])

    def on_end_epoch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        """Gathers every process's scores; returns the mAP (percent). On validation rank 0 also
        computes and prints every metric (``state['last_eval']``)."""
        s = self.state
        n = len(data_loader.dataset)
        scores = distributed.gather_in_order(s['ap_meter'].scores, n)
        targets = distributed.gather_in_order(s['ap_meter'].targets, n)
        broken = int((~torch.isfinite(scores)).any(1).sum())
        if broken and not training:  # every process sees the gathered scores, so all stop together
            raise NonFiniteOutputError(
                f'{broken} of {n} evaluation images got NaN or infinite scores: the model overflowed '
                '(float16 autocast on CUDA?) or its weights are broken; check the checkpoint, or try --device cpu')
        if training or not distributed.is_main_process():
            return metrics.mean_average_precision(
                metrics.average_precision(scores, targets, s['difficult_examples']))
        s['last_eval'] = metrics.evaluate(scores, targets, s['difficult_examples'])
        if display:
            print(report.format_summary(s['last_eval'], loss=s['meter_loss'].value()[0]))
        return s['last_eval']['mAP']


class GCNMultiLabelMAPEngine(MultiLabelMAPEngine):
    """MSRN's engine: batches ``((image, name, word_vectors [B, C, 300]), target)``;
    ``model(image, word_vectors)`` returns ``(logits [B, C], group_loss)``, and the loss is
    ``criterion(logits, y) + group_loss``."""

    def on_start_batch(self, training, model, criterion, data_loader, optimizer=None, display=True):
        super().on_start_batch(training, model, criterion, data_loader, optimizer, display)
        self.state['word_vectors'] = self.state['input'][2].float().to(self.state['device'], non_blocking=True)

    def forward(self, model, criterion):
        logits, group_loss = model(self.state['image'], self.state['word_vectors'])
        return logits, criterion(logits, self.state['target']) + group_loss


def _plain(obj):
    """``obj`` with anything but plain data turned into strings (checkpoints load weights-only)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, (bool, int, float, str)) else str(obj)


# ---- builders: the only functions that read the command-line arguments -----------------------
def init_run(args):
    """Join torchrun's process group if any (``args.device``), seed every generator with
    ``args.seed`` + rank, print the arguments and git commit; return this process's device."""
    device = distributed.init_distributed_mode(args.device)
    if args.seed is not None:
        seed_everything(args.seed + distributed.get_rank())
    print(f'git commit: {_git_commit()}  processes: {distributed.get_world_size()}  device: {device}')
    print('arguments: ' + '  '.join(f'{k}={v}' for k, v in sorted(vars(args).items())))
    return device


def _git_commit():
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10).stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def build_optimizer(args, model):
    """The official SGD: ``model.get_config_optim(lr)`` groups (trunk at lr x 0.1)."""
    return torch.optim.SGD(model.get_config_optim(args.lr), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)


def build_engine(args, *, device, class_names, difficult_examples=True):
    """The MSRN engine from the command line. Reads ``args``: batch_size, workers, epochs,
    start_epoch, epoch_step, image_size, print_freq, save_dir, resume ('' = none), evaluate,
    seed, clip_grad_norm (None or 0 = off), backbone (stored as the checkpoint's 'arch')."""
    return GCNMultiLabelMAPEngine(
        device=device, batch_size=args.batch_size, workers=args.workers, max_epochs=args.epochs,
        start_epoch=args.start_epoch, epoch_step=args.epoch_step, image_size=args.image_size,
        print_freq=args.print_freq, save_dir=args.save_dir, resume=args.resume or None,
        evaluate=args.evaluate, seed=args.seed, clip_grad_norm=args.clip_grad_norm or None,
        arch=args.backbone, args=vars(args), class_names=class_names,
        difficult_examples=difficult_examples)

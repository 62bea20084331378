"""End-to-end training speed: real epochs through a demo script's code path against the bare step.

    python bench/train.py [--device cuda] [--dataset coco] [--images 960] [--batch 16]
                          [--workers 4 8 16] [--image-size 448] [--backbone resnet101] [--max-batch]
    python bench/train.py --device cpu --images 48 --batch 8 --workers 0 2 --image-size 96 \\
                          --backbone resnet18 --dataset voc          # a small check on a CPU

Writes a synthetic dataset in the real layout (``tools/synthetic_data.py``) whose JPEGs are then
re-encoded at 640×480 with pixel noise (COCO-like size and decoding cost), and reports:

- epoch images/s for each ``-j``: the demo script (``run.main``: dataset, DataLoader with JPEG
  decoding and MultiScaleCrop, the engine) trains 2 epochs with ``--save-dir`` in a scratch
  folder; the rate is training images / the ``train_time_s`` of the second epoch in ``log.jsonl``
  (the first includes start-up: workers, cuDNN autotuning, kernel compilation); a log without it
  gives ``time_s``, which also holds the validation of the one-batch val split.
- step-only images/s: the same model, optimizer, loss and float16 autocast (CUDA) on random
  tensors already on the device: the rate the loader has to keep up with; for MSRN's default
  attention and for the official formula.
- peak memory of each run (CUDA: allocated by tensors; CPU: peak RSS of the process).
- with --max-batch (CUDA): the largest training batch that fits, MSRN against the official formula.

Each measurement runs in its own process. Random weights (``--pretrained 0``), lr 0.001 so that
random data never makes the loss non-finite; speed does not depend on either.
"""
import argparse
import gc
import glob
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import synthetic_data  # noqa: E402

JPEG_SIZE = (640, 480)
DATASETS = {  # demo module, writer of the synthetic layout (train and val image counts)
    'coco': ('demo_coco_gcn', lambda root, train, val: synthetic_data.write_coco(
        root, n_train=train, n_val=val, n_unlabelled=0)),
    'voc': ('demo_voc2007_gcn', lambda root, train, val: synthetic_data.write_voc(
        root, n_trainval=train, n_test=val, difficult_prob=0)),
}


def _enlarge(path):
    """Re-encode one synthetic JPEG at 640×480 with noise, so decoding costs what a photo does."""
    img = np.asarray(Image.open(path).convert('RGB').resize(JPEG_SIZE, Image.BILINEAR), dtype=np.int16)
    noise = np.random.default_rng(zlib.crc32(path.encode())).integers(-24, 25, img.shape, dtype=np.int16)
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_data(root, dataset, train, val):
    info = DATASETS[dataset][1](root, train, val)
    info = {key: info[key] for key in ('root', 'graph_file', 'word_file')}
    paths = sorted(glob.glob(os.path.join(root, '**', '*.jpg'), recursive=True))
    with multiprocessing.Pool() as pool:
        pool.map(_enlarge, paths, chunksize=16)
    return info, sum(os.path.getsize(p) for p in paths) / len(paths)


def _peak_memory_gib(torch, device):
    if device == 'cuda':
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# --------------------------------------------------------------------------------------------
# Child processes

def epoch_run(args, info, workers, save_dir):
    """Two epochs through the demo script; {'images_per_s', 'peak_gib', 'epoch_s'}."""
    import importlib

    import torch

    import run
    demo = importlib.import_module(DATASETS[args.dataset][0])
    argv = [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], '--no-download',
            '--pretrained', '0', '--backbone', args.backbone, '--image-size', str(args.image_size),
            '--epochs', '2', '-b', str(args.batch), '-j', str(workers), '--lr', '0.001',
            '--device', args.device, '--save-dir', save_dir]
    code = run.main(demo.DATASET, argv)
    if code:
        raise SystemExit(f'the demo script failed (exit {code})')
    with open(os.path.join(save_dir, 'log.jsonl')) as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    seconds = epochs[-1].get('train_time_s', epochs[-1]['time_s'])
    return {'images_per_s': args.images / seconds, 'epoch_s': seconds,
            'peak_gib': _peak_memory_gib(torch, args.device)}


def _training_step(args, attention):
    """A step function step(batch) as the engine runs it (autocast, GradScaler, SGD), on random data."""
    import numpy as np
    import torch

    from models import MSRN
    num_classes, pool_ratio = (80, 0.05) if args.dataset == 'coco' else (20, 0.2)
    device = torch.device(args.device)
    graph = {'adj': np.ones((num_classes, num_classes)), 'nums': np.full(num_classes, 2.0)}
    model = MSRN(num_classes, pool_ratio, args.backbone, graph, attention=attention).to(device).train()
    optimizer = torch.optim.SGD(model.get_config_optim(0.001), lr=0.001, momentum=0.9, weight_decay=1e-4)
    amp = device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    criterion = torch.nn.MultiLabelSoftMarginLoss()
    torch.backends.cudnn.benchmark = True

    def step(batch):
        img = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        words = torch.randn(batch, num_classes, 300, device=device)
        target = (torch.rand(batch, num_classes, device=device) < 0.05).float()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits, group_loss = model(img, words)
            loss = criterion(logits, target) + group_loss
        loss.item()   # the engine reads every loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step, model


def step_run(args, attention):
    """Step-only rate at args.batch; {'images_per_s', 'peak_gib'}."""
    import torch
    step, _ = _training_step(args, attention)
    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: None)
    for _ in range(3):   # warm-up: cuDNN autotuning, kernel compilation, optimizer state
        step(args.batch)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(args.batch)
    sync()
    return {'images_per_s': args.steps * args.batch / (time.perf_counter() - start),
            'peak_gib': _peak_memory_gib(torch, args.device)}


def max_batch_run(args, attention):
    """Largest training batch that fits on the GPU (doubling, then bisection to a multiple of 8)."""
    import torch
    step, model = _training_step(args, attention)

    def fits(batch):
        try:
            step(batch)
            ok = True
        except torch.cuda.OutOfMemoryError:
            ok = False
        model.zero_grad(set_to_none=True)   # after the except clause: the traceback's tensors are gone
        gc.collect()
        torch.cuda.empty_cache()
        return ok

    good, bad = 0, 8
    while bad <= args.max_batch_limit and fits(bad):
        good, bad = bad, bad * 2
    while bad - good > 8:
        middle = (good + bad) // 16 * 8
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return {'max_batch': good, 'limit_reached': bad > args.max_batch_limit}


def spawn(args, what, *extra):
    """Run a child; its result dict, or None when it failed (its error went to stderr)."""
    cmd = [sys.executable, __file__, '--child', what, *map(str, extra)] + args.forwarded
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None


# --------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda', choices=['cpu', 'cuda'])
    parser.add_argument('--dataset', default='coco', choices=list(DATASETS))
    parser.add_argument('--images', type=int, default=960, help='training images per epoch (default: 960)')
    parser.add_argument('--batch', type=int, default=16, help='training batch (default: 16)')
    parser.add_argument('--workers', type=int, nargs='+', default=[4, 8, 16], help='-j values (default: 4 8 16)')
    parser.add_argument('--image-size', type=int, default=448)
    parser.add_argument('--backbone', default='resnet101')
    parser.add_argument('--steps', type=int, default=10, help='timed steps of the step-only rate (default: 10)')
    parser.add_argument('--max-batch', action='store_true', help='find the largest batch that fits (CUDA)')
    parser.add_argument('--max-batch-limit', type=int, default=1024)
    parser.add_argument('--data-dir', help='where to write the synthetic data (default: a temporary folder)')
    parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == 'cpu':
        args.max_batch = False
    # what the children need to rebuild the same settings
    args.forwarded = ['--device', args.device, '--dataset', args.dataset, '--images', str(args.images),
                      '--batch', str(args.batch), '--image-size', str(args.image_size), '--backbone',
                      args.backbone, '--steps', str(args.steps), '--max-batch-limit', str(args.max_batch_limit)]
    if args.child:
        what, *extra = args.child
        if what == 'epoch':
            result = epoch_run(args, json.loads(extra[0]), int(extra[1]), extra[2])
        elif what == 'step':
            result = step_run(args, extra[0])
        else:
            result = max_batch_run(args, extra[0])
        print(json.dumps(result))
        return

    import torch
    where = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {os.cpu_count()} cores'
    data_dir = args.data_dir or tempfile.mkdtemp(prefix='msrn_bench_data_')
    start = time.perf_counter()
    info, jpeg_bytes = write_data(data_dir, args.dataset, args.images, args.batch)
    print(f'# MSRN training speed: {args.dataset}, {args.backbone}, {args.image_size} px, batch {args.batch}, '
          f'{where}{", float16 autocast" if args.device == "cuda" else ""}, torch {torch.__version__}')
    print(f'# data: {args.images} training + {args.batch} validation JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]} '
          f'({jpeg_bytes / 1024:.0f} KiB on average), written in {time.perf_counter() - start:.0f} s')
    memory = 'peak GPU memory GiB' if args.device == 'cuda' else 'peak RSS GiB'
    print(f'| run | images/s | {memory} |')
    print('|---|---|---|')
    def row(label, r):
        cells = f"{r['images_per_s']:.1f} | {r['peak_gib']:.2f}" if r else 'failed (see stderr) |'
        print(f'| {label} | {cells} |', flush=True)

    for attention, label in (('auto', 'MSRN'), ('plain', 'MSRN, plain formula')):
        row(f'step only, {label}', spawn(args, 'step', attention))
    # checkpoints (2 GB each for COCO) go to memory where there is room: writing them is not timed
    shm = '/dev/shm'
    scratch_root = shm if os.path.isdir(shm) and shutil.disk_usage(shm).free > 16 * 2 ** 30 else None
    for workers in args.workers:
        save_dir = tempfile.mkdtemp(prefix='msrn_bench_run_', dir=scratch_root)
        try:
            row(f'epoch, -j {workers}', spawn(args, 'epoch', json.dumps(info), workers, save_dir))
        finally:
            shutil.rmtree(save_dir, ignore_errors=True)
    if args.max_batch:
        found = []
        for attention, label in (('auto', 'MSRN'), ('plain', 'MSRN with the plain formula')):
            r = spawn(args, 'max', attention)
            found.append(f"{label} {r['max_batch']}{'+' if r['limit_reached'] else ''}" if r else f'{label} failed')
        print('\nlargest training batch that fits: ' + ', '.join(found))
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == '__main__':
    main()

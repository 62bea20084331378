"""Time and memory of MSRN's head, CPU or CUDA: bare trunk vs plain-formula attention vs lean attention.

    python bench/head.py [--configs voc coco] [--image-size 448] [--repeats 5] [--device cuda --amp]
                         [--eval-batch 1] [--train-batch 2]

Each case runs in its own process (fresh allocator, fresh peak counter). Per case it reports the
median wall time of an eval forward (no_grad; batch 1 by default) or a training step (forward +
backward; batch 2), and the transient (activation) memory: peak RSS (CUDA: peak allocated)
during the timed iterations minus the level before them (weights and inputs allocated) minus the
parameter gradients the step creates (the same for (b) and (c): fc1's alone is 0.3 GB for VOC,
1 GB for COCO). The memory the head
adds is that figure minus the bare trunk's. Random weights: speed and memory do not depend on them.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'voc': (20, 0.2), 'coco': (80, 0.05)}
CASES = {'a': 'bare trunk', 'b': 'MSRN, plain formula', 'c': 'MSRN, lean attention'}
MODES = ('eval', 'train')


def _status_kib(field):
    with open('/proc/self/status') as f:
        return int(re.search(rf'{field}:\s+(\d+)', f.read()).group(1))


def _reset_peak():
    """Reset VmHWM (Linux); returns False where the kernel does not allow it."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


class _CpuMemory:
    """Peak RSS (KiB) via /proc; exact where the kernel lets us reset the peak."""

    def start(self):
        self.exact = _reset_peak()
        self.base = _status_kib('VmRSS')

    def peak(self):
        peak = _status_kib('VmHWM') if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak - self.base


class _CudaMemory:
    """Peak allocated CUDA memory (KiB) through the caching allocator's statistics."""
    exact = True

    def __init__(self, torch):
        self.cuda = torch.cuda

    def start(self):
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()
        self.base = self.cuda.memory_allocated() / 1024

    def peak(self):
        return self.cuda.max_memory_allocated() / 1024 - self.base


def run_case(config, case, mode, batch, image_size, repeats, device, amp):
    """Runs in the child process; returns {'seconds', 'transient_mib', 'exact_peak'}."""
    sys.path.insert(0, REPO)
    import numpy as np
    import torch
    from models import MSRN

    torch.manual_seed(0)
    num_classes, pool_ratio = CONFIGS[config]
    graph = {'adj': np.ones((num_classes, num_classes)), 'nums': np.full(num_classes, 2.0)}
    model = MSRN(num_classes, pool_ratio, 'resnet101', graph, attention='plain' if case == 'b' else 'lean').to(device)
    img = torch.randn(batch, 3, image_size, image_size, device=device)
    inp = torch.randn(batch, num_classes, 300, device=device)
    memory = _CudaMemory(torch) if device == 'cuda' else _CpuMemory()
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    def step():
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            if case == 'a':
                loss = sum(f.float().mean() for f in model.resnet_101(img))
            else:
                logits, group_loss = model(img, inp)
                loss = logits.float().sum() + group_loss
        if mode == 'train':
            loss.backward()

    model.train(mode == 'train')
    with torch.set_grad_enabled(mode == 'train'):
        step()                                  # warm-up
        grad_kib = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                       if p.grad is not None) / 1024
        model.zero_grad(set_to_none=True)
        memory.start()
        times = []
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    return {'seconds': statistics.median(times), 'transient_mib': (memory.peak() - grad_kib) / 1024,
            'exact_peak': memory.exact}


def spawn(config, case, mode, args):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')  # big buffers go back to the OS when freed
    batch = args.eval_batch if mode == 'eval' else args.train_batch
    cmd = [sys.executable, __file__, '--child', config, case, mode, str(batch), '--image-size',
           str(args.image_size), '--repeats', str(args.repeats), '--device', args.device]
    cmd += ['--amp'] if args.amp else []
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--image-size', type=int, default=448)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--amp', action='store_true', help='float16 autocast (CUDA training setting)')
    parser.add_argument('--eval-batch', type=int, default=1, help='batch size of the eval forward (default: 1)')
    parser.add_argument('--train-batch', type=int, default=2, help='batch size of the training step (default: 2)')
    parser.add_argument('--child', nargs=4, metavar=('CONFIG', 'CASE', 'MODE', 'BATCH'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, case, mode, batch = args.child
        print(json.dumps(run_case(config, case, mode, int(batch), args.image_size, args.repeats, args.device,
                                  args.amp)))
        return

    import torch
    where = (torch.cuda.get_device_name() if args.device == 'cuda' else
             f'CPU, {torch.get_num_threads()} threads')
    print(f'# MSRN head benchmark: {args.image_size} px, {where}{", float16 autocast" if args.amp else ""}, '
          f'torch {torch.__version__}, median of {args.repeats}')
    print('| config | mode (batch) | case | time s | transient MiB | head adds MiB |')
    print('|---|---|---|---|---|---|')
    summary = []
    for config in args.configs:
        for mode in MODES:
            batch = args.eval_batch if mode == 'eval' else args.train_batch
            r = {case: spawn(config, case, mode, args) for case in CASES}
            for case, label in CASES.items():
                added = r[case]['transient_mib'] - r['a']['transient_mib']
                print(f"| {config} | {mode} ({batch}) | ({case}) {label} | {r[case]['seconds']:.3f} | "
                      f"{r[case]['transient_mib']:.0f} | {'' if case == 'a' else f'{added:.0f}'} |")
            b_added = r['b']['transient_mib'] - r['a']['transient_mib']
            c_added = r['c']['transient_mib'] - r['a']['transient_mib']
            memory = (f'b/c = {b_added / c_added:.1f}x' if c_added >= 1 else
                      f'c adds < 1 MiB, b adds {b_added:.0f} MiB (b/c > {max(b_added, 0):.0f}x)')
            summary.append(f"{config} {mode}: time c/a = {r['c']['seconds'] / r['a']['seconds']:.2f}, "
                           f"c/b = {r['c']['seconds'] / r['b']['seconds']:.2f}; head memory {memory}")
            if not all(v['exact_peak'] for v in r.values()):
                summary.append('  (peak RSS could not be reset: memory figures are lifetime peaks)')
    print()
    print('\n'.join(summary))


if __name__ == '__main__':
    main()

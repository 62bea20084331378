"""Time and memory of MSRN's head, CPU or CUDA: the bare trunk against MSRN with each label attention.

    python bench/head.py [--configs voc coco] [--cases a b c] [--image-size 448] [--repeats 5]
                         [--device cuda --amp [--amp-dtype bfloat16]] [--eval-batch 1] [--train-batch 2]
                         [--channels-last] [--compile] [--fc1-half]

Cases: (a) the bare trunk, (b) the official formula ``attention.plain_label_attention``, (c) the
chunked PyTorch code, (d) the fused Triton kernels (CUDA), (e) the official formula through
``torch.compile`` (CUDA; Inductor's fusion as the alternative to hand-written kernels). Default:
a b c on the CPU, a b c d on CUDA. --channels-last (model and images) and --compile (the whole
model) measure what the demo scripts' --channels-last and --compile (the trunk) could do;
--fc1-half (fc1's weight kept in float16, as a cached copy for evaluation would be) an option the
model does not offer.

Each case runs in its own process (fresh allocator, fresh peak counter). Per case it reports the
median wall time of an eval forward (no_grad; batch 1 by default) or a training step (forward +
backward; batch 2), and the transient (activation) memory: peak RSS (CUDA: peak allocated)
during the timed iterations minus the level before them (weights and inputs allocated) minus the
parameter gradients the step creates (the same for every MSRN case: fc1's alone is 0.3 GB for
VOC, 1 GB for COCO). The memory the head adds is that figure minus the bare trunk's. Random
weights: speed and memory do not depend on them.
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
CASES = {'a': 'bare trunk', 'b': 'MSRN, plain formula', 'c': 'MSRN, chunked', 'd': 'MSRN, fused kernels',
         'e': 'MSRN, compiled plain formula'}
ATTENTION = {'b': 'plain', 'c': 'chunked', 'd': 'fused', 'e': 'plain'}
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


def run_case(config, case, mode, batch, args):
    """Runs in the child process; returns {'seconds', 'transient_mib', 'exact_peak'}."""
    sys.path.insert(0, REPO)
    import numpy as np
    import torch
    from attention import plain_label_attention
    from models import MSRN

    torch.manual_seed(0)
    device = args.device
    num_classes, pool_ratio = CONFIGS[config]
    graph = {'adj': np.ones((num_classes, num_classes)), 'nums': np.full(num_classes, 2.0)}
    model = MSRN(num_classes, pool_ratio, 'resnet101', graph, attention=ATTENTION.get(case, 'auto'))
    if case == 'e':
        model.attention = torch.compile(plain_label_attention, dynamic=False)
    if args.fc1_half:
        model.fc1.half()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    img = torch.randn(batch, 3, args.image_size, args.image_size, device=device).to(memory_format=memory_format)
    inp = torch.randn(batch, num_classes, 300, device=device)
    net = model.resnet_101 if case == 'a' else model
    if args.compile:
        net = torch.compile(net)
    memory = _CudaMemory(torch) if device == 'cuda' else _CpuMemory()
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    def step():
        with torch.autocast(device, dtype=getattr(torch, args.amp_dtype), enabled=args.amp):
            if case == 'a':
                loss = sum(f.float().mean() for f in net(img))
            else:
                logits, group_loss = net(img, inp)
                loss = logits.float().sum() + group_loss
        if mode == 'train':
            loss.backward()

    model.train(mode == 'train')
    with torch.set_grad_enabled(mode == 'train'):
        for _ in range(3 if args.compile or case == 'e' else 1):   # warm-up (compilation, autotuning)
            step()
        grad_kib = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                       if p.grad is not None) / 1024
        model.zero_grad(set_to_none=True)
        memory.start()
        times = []
        for _ in range(args.repeats):
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
           str(args.image_size), '--repeats', str(args.repeats), '--device', args.device, '--amp-dtype', args.amp_dtype]
    cmd += [flag for flag, on in (('--amp', args.amp), ('--channels-last', args.channels_last),
                                  ('--compile', args.compile), ('--fc1-half', args.fc1_half)) if on]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:   # one failing case (say, a compiler error) leaves the others standing
        print(f'case ({case}) {config} {mode} failed:\n{proc.stderr[-4000:]}', file=sys.stderr, flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--cases', nargs='+', choices=list(CASES),
                        help='cases to run (default: a b c on the CPU, a b c d on CUDA)')
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--image-size', type=int, default=448)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--amp', action='store_true', help='autocast in --amp-dtype (CUDA training setting)')
    parser.add_argument('--amp-dtype', default='float16', choices=['float16', 'bfloat16'])
    parser.add_argument('--eval-batch', type=int, default=1, help='batch size of the eval forward (default: 1)')
    parser.add_argument('--train-batch', type=int, default=2, help='batch size of the training step (default: 2)')
    parser.add_argument('--channels-last', action='store_true', help='model and images in channels_last')
    parser.add_argument('--compile', action='store_true', help='torch.compile the whole model (the trunk in (a))')
    parser.add_argument('--fc1-half', action='store_true', help="fc1's weight in float16 (with --amp, eval)")
    parser.add_argument('--child', nargs=4, metavar=('CONFIG', 'CASE', 'MODE', 'BATCH'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, case, mode, batch = args.child
        print(json.dumps(run_case(config, case, mode, int(batch), args)))
        return
    cases = args.cases or (['a', 'b', 'c', 'd'] if args.device == 'cuda' else ['a', 'b', 'c'])

    import torch
    where = (torch.cuda.get_device_name() if args.device == 'cuda' else
             f'CPU, {torch.get_num_threads()} threads')
    options = [name for name, on in (('float16 autocast', args.amp), ('channels_last', args.channels_last),
                                     ('torch.compile', args.compile), ('fc1 float16', args.fc1_half)) if on]
    print(f'# MSRN head benchmark: {args.image_size} px, {where}{"".join(", " + o for o in options)}, '
          f'torch {torch.__version__}, median of {args.repeats}')
    print('| config | mode (batch) | case | time s | transient MiB | head adds MiB |')
    print('|---|---|---|---|---|---|')
    summary = []
    for config in args.configs:
        for mode in args.modes:
            batch = args.eval_batch if mode == 'eval' else args.train_batch
            r = {case: spawn(config, case, mode, args) for case in cases}
            r = {case: result for case, result in r.items() if result}
            trunk = r.get('a')
            for case in cases:
                if case not in r:
                    print(f'| {config} | {mode} ({batch}) | ({case}) {CASES[case]} | failed | | |')
                    continue
                added = '' if case == 'a' or not trunk else f"{r[case]['transient_mib'] - trunk['transient_mib']:.0f}"
                print(f"| {config} | {mode} ({batch}) | ({case}) {CASES[case]} | {r[case]['seconds']:.3f} | "
                      f"{r[case]['transient_mib']:.0f} | {added} |", flush=True)
            summary += [f'{config} {mode}: {comparison}' for comparison in compare(r)]
            if not all(v['exact_peak'] for v in r.values()):
                summary.append('  (peak RSS could not be reset: memory figures are lifetime peaks)')
    print()
    print('\n'.join(summary))


def compare(r):
    """Per lean case (c, d, e): its time over the trunk's and the plain formula's; head memory b / it."""
    lines = []
    for case in (c for c in 'cde' if c in r):
        line = 'time ' + ', '.join(f"{case}/{ref} = {r[case]['seconds'] / r[ref]['seconds']:.2f}"
                                   for ref in 'ab' if ref in r)
        if 'a' in r and 'b' in r:
            b_added = r['b']['transient_mib'] - r['a']['transient_mib']
            added = r[case]['transient_mib'] - r['a']['transient_mib']
            line += (f'; head memory b/{case} = {b_added / added:.1f}x' if added >= 1 else
                     f'; head memory {case} adds < 1 MiB, b adds {b_added:.0f} MiB')
        lines.append(line)
    return lines


if __name__ == '__main__':
    main()

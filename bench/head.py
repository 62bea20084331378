"""Time and memory of MSRN's head on CPU: bare trunk vs plain-formula attention vs lean attention.

    python bench/head.py [--configs voc coco] [--image-size 448] [--repeats 5]

Each case runs in its own process (fresh allocator, fresh peak counter). Per case it reports the
median wall time of an eval forward (batch 1, no_grad) or a training step (batch 2, forward +
backward), and the transient (activation) memory: peak RSS during the timed iterations minus the
RSS before them (weights and inputs allocated) minus the parameter gradients the step creates
(the same for (b) and (c): fc1's alone is 0.3 GB for VOC, 1 GB for COCO). The memory the head
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
MODES = {'eval': 1, 'train': 2}   # batch size of each mode


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


def run_case(config, case, mode, image_size, repeats):
    """Runs in the child process; returns {'seconds', 'transient_mib'}."""
    sys.path.insert(0, REPO)
    import numpy as np
    import torch
    from models import MSRN, lean_label_attention
    from tests.reference import plain_label_attention

    torch.manual_seed(0)
    num_classes, pool_ratio = CONFIGS[config]
    graph = {'adj': np.ones((num_classes, num_classes)), 'nums': np.full(num_classes, 2.0)}
    attention = plain_label_attention if case == 'b' else lean_label_attention
    model = MSRN(num_classes, pool_ratio, 'resnet101', graph, attention=attention)
    batch = MODES[mode]
    img = torch.randn(batch, 3, image_size, image_size)
    inp = torch.randn(batch, num_classes, 300)

    def step():
        if case == 'a':
            out = model.resnet_101(img)
            loss = sum(f.float().mean() for f in out)
        else:
            logits, group_loss = model(img, inp)
            loss = logits.sum() + group_loss
        if mode == 'train':
            loss.backward()

    model.train(mode == 'train')
    with torch.set_grad_enabled(mode == 'train'):
        step()                                  # warm-up
        grad_kib = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                       if p.grad is not None) / 1024
        model.zero_grad(set_to_none=True)
        exact_peak = _reset_peak()
        base_kib = _status_kib('VmRSS')
        times = []
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    peak_kib = _status_kib('VmHWM') if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {'seconds': statistics.median(times), 'transient_mib': (peak_kib - base_kib - grad_kib) / 1024,
            'exact_peak': exact_peak}


def spawn(config, case, mode, image_size, repeats):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')  # big buffers go back to the OS when freed
    cmd = [sys.executable, __file__, '--child', config, case, mode, '--image-size', str(image_size),
           '--repeats', str(repeats)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--image-size', type=int, default=448)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--child', nargs=3, metavar=('CONFIG', 'CASE', 'MODE'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(*args.child, args.image_size, args.repeats)))
        return

    import torch
    print(f'# MSRN head benchmark: {args.image_size} px, CPU, {torch.get_num_threads()} threads, '
          f'torch {torch.__version__}, median of {args.repeats}')
    print('| config | mode (batch) | case | time s | transient MiB | head adds MiB |')
    print('|---|---|---|---|---|---|')
    summary = []
    for config in args.configs:
        for mode, batch in MODES.items():
            r = {case: spawn(config, case, mode, args.image_size, args.repeats) for case in CASES}
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

"""Speed of the vectorised AP (metrics.average_precision) against the plain loop that the
official meter runs (tests/reference.py: average_precision_loop), on VOC-sized (4952 x 20) and COCO-sized
(40504 x 80) score matrices; also checks that both give the same values.

Data: logits N(0, 1) rounded to 0.01 (many ties), labels positive with the datasets' density
(VOC 7 %, COCO 3.6 %), 3 % 'difficult' on VOC. The loop on COCO takes ~20 s; by default it is timed
on --loop-classes of the 80 classes and scaled by 80 / that (per-class cost is the same for every
class); --full times it on all 80.

    python bench/metrics.py [--full] [--loop-classes 8]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import metrics  # noqa: E402
from tests.reference import average_precision_loop  # noqa: E402


def make_case(n, c, positive, difficult, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n, c, generator=g) * 100).round() / 100
    u = torch.rand(n, c, generator=g)
    targets = torch.where(u < positive, 1, -1)
    targets[(u >= positive) & (u < positive + difficult)] = 0
    return scores, targets


def best_of(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--full', action='store_true', help='time the loop on every COCO class')
    parser.add_argument('--loop-classes', type=int, default=8, help='COCO classes the loop is timed on')
    args = parser.parse_args()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    for name, n, c, positive, difficult in (('VOC 2007 test', 4952, 20, 0.07, 0.03),
                                            ('COCO 2014 val', 40504, 80, 0.036, 0.0)):
        scores, targets = make_case(n, c, positive, difficult)
        fast = best_of(lambda: metrics.average_precision(scores, targets), repeat=5)
        k = c if (args.full or c <= 20) else min(args.loop_classes, c)
        start = time.perf_counter()
        loop_ap = average_precision_loop(scores[:, :k], targets[:, :k])
        loop = (time.perf_counter() - start) * c / k
        assert torch.equal(loop_ap, metrics.average_precision(scores, targets)[:k]), 'values differ'
        timed = 'all classes' if k == c else f'{k} of {c} classes, x{c / k:g}'
        print(f'{name:14s} {n:6d} x {c:2d}: vectorised {fast * 1e3:7.1f} ms, loop {loop:6.2f} s '
              f'({timed}), ratio {loop / fast:5.0f}x, values identical')


if __name__ == '__main__':
    main()

"""Time and memory of the label attention alone, at MSRN's three levels, per implementation.

    python bench/attention.py [--device cuda] [--batch 16] [--nodes 84] [--image-size 448] [--sweep]

x (B, P, D) is laid out as the model's (a transposed conv output), float16 on CUDA (as under
autocast) and float32 on the CPU; D = 512, N = --nodes (COCO: 80 labels + 4 groups; VOC: 24),
P = 784, 196, 49 at 448 px. Reports the median time of a forward and of a forward + backward,
summed over the three levels, and the peak memory above the inputs (CUDA). --sweep times the fused
kernels for other tile shapes (``attention.FORWARD_BLOCKS``, ``attention.BACKWARD_BLOCKS``).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attention  # noqa: E402

FORWARD_SWEEP = [dict(BLOCK_N=n, BLOCK_D=d, num_warps=w) for n, d, w in
                 [(16, 64, 4), (8, 64, 2), (8, 64, 4), (32, 64, 4), (16, 128, 4), (16, 32, 2), (32, 32, 4)]]
BACKWARD_SWEEP = [dict(BLOCK_P=p, BLOCK_D=d, num_warps=w) for p, d, w in
                  [(32, 64, 4), (16, 64, 2), (64, 64, 4), (32, 128, 4), (64, 32, 4), (32, 32, 2)]]


def level_inputs(args, device):
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    gen = torch.Generator().manual_seed(0)
    levels = []
    for stride in (8, 16, 32):   # layer2, layer3, layer4, each then max-pooled by 2
        side = -(-args.image_size // stride) // 2
        x = torch.randn(args.batch, 512, side * side, generator=gen).to(device, dtype).transpose(1, 2)
        levels.append((x.requires_grad_(), torch.randn(args.nodes, 512, generator=gen).to(device).requires_grad_()))
    return levels


def measure(fn, levels, backward, repeats, device):
    """(median seconds over the three levels, peak MiB above the inputs as text)."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def run():
        for x, nodes in levels:
            out = fn(x, nodes)
            if backward:
                out.backward(torch.ones_like(out))
    run()  # warm-up: kernel compilation
    sync()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == 'cuda' else 0
    times = []
    for _ in range(repeats):
        for x, nodes in levels:
            x.grad = nodes.grad = None
        sync()
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            run()
        sync()
        times.append(time.perf_counter() - start)
    peak = f'{(torch.cuda.max_memory_allocated() - base) / 2 ** 20:.0f}' if device.type == 'cuda' else 'n/a'
    return statistics.median(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--nodes', type=int, default=84)
    parser.add_argument('--image-size', type=int, default=448)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--sweep', action='store_true', help='also time other tile shapes of the fused kernels')
    args = parser.parse_args()
    device = torch.device(args.device)
    levels = level_inputs(args, device)
    names = ['plain', 'chunked'] + (['fused'] if device.type == 'cuda' else [])
    where = torch.cuda.get_device_name() if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'# label attention: batch {args.batch}, {args.nodes} nodes, D 512, P {[x.shape[1] for x, _ in levels]}, '
          f'x {levels[0][0].dtype}, {where}, torch {torch.__version__}, median of {args.repeats}')
    print('| implementation | forward ms | forward + backward ms | peak MiB (fwd + bwd) |')
    print('|---|---|---|---|')
    for name in names:
        fn = attention.ATTENTIONS[name]
        forward, _ = measure(fn, levels, False, args.repeats, device)
        both, peak = measure(fn, levels, True, args.repeats, device)
        print(f'| {name} | {forward * 1e3:.2f} | {both * 1e3:.2f} | {peak} |', flush=True)
    if args.sweep and device.type == 'cuda':
        default_fwd, default_bwd = dict(attention.FORWARD_BLOCKS), dict(attention.BACKWARD_BLOCKS)
        for title, sweep, table, backward in (('forward', FORWARD_SWEEP, attention.FORWARD_BLOCKS, False),
                                              ('forward + backward', BACKWARD_SWEEP, attention.BACKWARD_BLOCKS, True)):
            print(f'\n| {"backward" if backward else "forward"} tile | {title} ms |\n|---|---|')
            for blocks in sweep:
                table.update(blocks)
                seconds = measure(attention.fused_label_attention, levels, backward, args.repeats, device)[0]
                print(f'| {blocks} | {seconds * 1e3:.2f} |', flush=True)
        attention.FORWARD_BLOCKS.update(default_fwd)
        attention.BACKWARD_BLOCKS.update(default_bwd)


if __name__ == '__main__':
    main()

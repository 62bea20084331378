"""The label attention in the ONNX export: export time, onnxruntime (CPU) time and memory per form.

    python bench/export.py [--configs voc coco] [--forms plain chunked moments] [--image-size 224]
                           [--batches 1 4] [--repeats 10]

Forms, all in standard ops (the model's default attention is a custom autograd Function, which
the exporters cannot trace): ``plain`` the official formula ``attention.plain_label_attention``
with its (B, P, N, D) tensors; ``chunked`` the same formula on a few nodes at a time (one
(B, P, n, D) step of about 2^20 elements per image); ``moments`` the chosen one,
``export.onnx_label_attention``: the forward pass of ``attention.chunked_label_attention``
(exponents shifted by l·max_p x or l·min_p x, the weighted sum as a matrix product), a few
nodes at a time.

Per config and form: the seconds of ``export.export_onnx`` (ResNet-101, random weights) and the
file size. Per batch size: the median and best seconds of ``session.run`` (CPUExecutionProvider,
2 intra-op threads, 2 warm-up runs), all forms in one process taking turns, so that the load of a
shared machine hits them alike; then each form in its own process (fresh allocator, fresh peak
counter) for the transient memory: peak RSS during three runs minus RSS before them (session
made, weights loaded), i.e. what onnxruntime's arena grows to for the activations, and the
largest logit difference to the PyTorch model (default attention) on the same images.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIGS = {'voc': (20, 0.2), 'coco': (80, 0.05)}
FORMS = ('plain', 'chunked', 'moments')
CHUNK_ELEMENTS = 1 << 20


def _status_kib(field):
    with open('/proc/self/status') as f:
        return int(re.search(rf'{field}:\s+(\d+)', f.read()).group(1))


def _reset_peak():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def chunked_attention(x, nodes):
    """The official formula on a few nodes at a time: x (B, P, D), nodes (N, D) -> (B, N, D)."""
    import torch
    from attention import plain_label_attention
    step = max(1, CHUNK_ELEMENTS // (x.shape[1] * x.shape[2]))
    return torch.cat([plain_label_attention(x, nodes[n:n + step]) for n in range(0, len(nodes), step)], 1)


def build(config):
    """ResNet-101 MSRN of random weights with BatchNorm statistics of random images (no overflow)."""
    import numpy as np
    import torch
    from models import MSRN
    torch.manual_seed(0)
    num_classes, pool_ratio = CONFIGS[config]
    graph = {'adj': np.ones((num_classes, num_classes)), 'nums': np.full(num_classes, 2.0)}
    model = MSRN(num_classes, pool_ratio, 'resnet101', graph)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train().resnet_101(torch.randn(2, 3, 128, 128))
    return model.eval(), torch.randn(num_classes, 300)


def export_form(config, form, path, image_size):
    import export
    from attention import plain_label_attention
    # ExportedMSRN looks the function up when it runs
    export.onnx_label_attention = {'plain': plain_label_attention, 'chunked': chunked_attention,
                                   'moments': export.onnx_label_attention}[form]
    model, words = build(config)
    classes = [f'c{i}' for i in range(model.num_classes)]
    start = time.perf_counter()
    export.export_onnx(model, words, path, image_size, classes, model.image_normalization_mean,
                       model.image_normalization_std)
    return time.perf_counter() - start


def transient_memory(config, path, batch, image_size):
    """In a child process: {'transient_mib', 'difference'} of one file and batch size."""
    import numpy as np
    import onnxruntime
    import torch
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    _reset_peak()
    base = _status_kib('VmRSS')
    for _ in range(3):
        logits = session.run(['logits'], {'images': images.numpy()})[0]
    transient = (_status_kib('VmHWM') - base) / 1024
    model, words = build(config)
    with torch.no_grad():
        expected = model(images, words.expand(batch, -1, -1))[0].numpy()
    return {'transient_mib': transient, 'difference': float(np.abs(logits - expected).max())}


def interleaved_times(paths, batch, image_size, repeats):
    """In a child process: {path: (median, best) seconds}, the files run in turn, so that a change
    of the machine's load hits every form alike."""
    import onnxruntime
    import torch
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = {path: onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
                for path in paths}
    feed = {'images': torch.randn(batch, 3, image_size, image_size).numpy()}
    times = {path: [] for path in paths}
    for step in range(repeats + 2):
        for path, session in sessions.items():
            start = time.perf_counter()
            session.run(['logits'], feed)
            if step >= 2:   # two warm-up runs
                times[path].append(time.perf_counter() - start)
    return {path: (statistics.median(t), min(t)) for path, t in times.items()}


def child(args, *cmd):
    proc = subprocess.run([sys.executable, __file__, *cmd, '--image-size', str(args.image_size), '--repeats',
                           str(args.repeats)], env=dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072'),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--forms', nargs='+', default=list(FORMS), choices=FORMS)
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 4])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--memory', nargs=3, metavar=('CONFIG', 'PATH', 'BATCH'), help=argparse.SUPPRESS)
    parser.add_argument('--timing', nargs='+', metavar='BATCH PATH', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        config, path, batch = args.memory
        print(json.dumps(transient_memory(config, path, int(batch), args.image_size)))
        return
    if args.timing:
        print(json.dumps(interleaved_times(args.timing[1:], int(args.timing[0]), args.image_size, args.repeats)))
        return

    import onnxruntime
    import torch
    print(f'# ONNX export of MSRN (ResNet-101): {args.image_size} px, onnxruntime {onnxruntime.__version__} CPU, '
          f'2 threads, torch {torch.__version__}, {args.repeats} runs per form, interleaved')
    print('| config | form | export s | file MB | batch | run s (median) | run s (best) | transient MiB | max diff |')
    print('|---|---|---|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as folder:
        for config in args.configs:
            paths = {form: os.path.join(folder, f'{config}_{form}.onnx') for form in args.forms}
            exported = {form: (export_form(config, form, path, args.image_size), os.path.getsize(path) / 1e6)
                        for form, path in paths.items()}
            for batch in args.batches:
                times = child(args, '--timing', str(batch), *paths.values())
                for form, path in paths.items():
                    memory = child(args, '--memory', config, path, str(batch))
                    (seconds, size), (median, best) = exported[form], times[path]
                    print(f"| {config} | {form} | {seconds:.1f} | {size:.0f} | {batch} | {median:.3f} | {best:.3f} | "
                          f"{memory['transient_mib']:.0f} | {memory['difference']:.1e} |", flush=True)
            for path in paths.values():
                os.remove(path)


if __name__ == '__main__':
    main()

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

The attention alone: the three levels' label attention as an ONNX graph of its own (random
features of the shapes a 224 px image gives, random nodes), all forms taking turns in one
process, median and best time and the largest error relative to the float64 formula.

The whole model: per config and form, the seconds of ``export.export_onnx`` (ResNet-101, random weights) and the
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


def attention_form(form):
    import export
    from attention import plain_label_attention
    return {'plain': plain_label_attention, 'chunked': chunked_attention, 'moments': export.onnx_label_attention}[form]


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
    chosen = export.onnx_label_attention
    export.onnx_label_attention = attention_form(form)   # ExportedMSRN looks it up when it runs
    model, words = build(config)
    classes = [f'c{i}' for i in range(model.num_classes)]
    start = time.perf_counter()
    export.export_onnx(model, words, path, image_size, classes, model.image_normalization_mean,
                       model.image_normalization_std)
    export.onnx_label_attention = chosen
    return time.perf_counter() - start


def attention_alone(config, forms, batch, image_size, repeats):
    """{form: (median s, best s, relative error)} of the three levels' attention alone (ONNX files
    taking the level features as inputs), interleaved in this process, against float64."""
    import numpy as np
    import onnxruntime
    import torch
    from attention import plain_label_attention
    from models import PyramidResNet

    class Levels(torch.nn.Module):
        def __init__(self, attention, nodes):
            super().__init__()
            self.attention = attention
            self.register_buffer('nodes', nodes)

        def forward(self, *levels):
            return torch.cat([self.attention(x, self.nodes) for x in levels], -1)

    with torch.no_grad():
        positions = [f.shape[2] * f.shape[3] for f in PyramidResNet('resnet18')(torch.zeros(1, 3, image_size,
                                                                                             image_size))]
    gen = torch.Generator().manual_seed(0)
    num_classes, pool_ratio = CONFIGS[config]
    nodes = torch.randn(num_classes + int(pool_ratio * num_classes), 512, generator=gen)
    levels = [torch.randn(batch, p, 512, generator=gen) for p in positions]
    names = [f'x{i}' for i in range(len(levels))]
    feed = dict(zip(names, (x.numpy() for x in levels)))
    want = torch.cat([plain_label_attention(x.double(), nodes.double()) for x in levels], -1).numpy()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    sessions, errors, times = {}, {}, {form: [] for form in forms}
    with tempfile.TemporaryDirectory() as folder:
        for form in forms:
            path = os.path.join(folder, f'{form}.onnx')
            torch.onnx.export(Levels(attention_form(form), nodes), tuple(levels), path, dynamo=False,
                              opset_version=17, input_names=names, output_names=['v'])
            sessions[form] = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
            got = sessions[form].run(['v'], feed)[0]
            errors[form] = float(np.abs(got - want).max() / np.abs(want).max())
    for step in range(repeats + 2):
        for form, session in sessions.items():
            start = time.perf_counter()
            session.run(['v'], feed)
            if step >= 2:
                times[form].append(time.perf_counter() - start)
    return {form: (statistics.median(t), min(t), errors[form]) for form, t in times.items()}


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
    parser.add_argument('--parts', nargs='+', default=['attention', 'model'], choices=['attention', 'model'],
                        help='the attention alone, the whole model (default: both)')
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

    import warnings

    import onnxruntime
    import torch
    warnings.simplefilter('ignore')   # the TorchScript exporter's deprecation and tracer warnings
    print(f'# ONNX export of MSRN: {args.image_size} px, onnxruntime {onnxruntime.__version__} CPU, 2 threads, '
          f'torch {torch.__version__}, {args.repeats} runs per form, interleaved')
    if 'attention' in args.parts:
        print('\n## The label attention alone (three levels)\n')
        print('| config (nodes) | batch | form | ms (median) | ms (best) | error vs float64 |')
        print('|---|---|---|---|---|---|')
        for config in args.configs:
            num_classes, pool_ratio = CONFIGS[config]
            for batch in args.batches:
                for form, (median, best, error) in attention_alone(config, args.forms, batch, args.image_size,
                                                                   args.repeats).items():
                    print(f'| {config} ({num_classes + int(pool_ratio * num_classes)}) | {batch} | {form} | '
                          f'{median * 1e3:.1f} | {best * 1e3:.1f} | {error:.1e} |', flush=True)
    if 'model' not in args.parts:
        return
    print('\n## The whole model (ResNet-101)\n')
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

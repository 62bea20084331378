"""MSRN as an ONNX model: images in, logits out, for inference without this repository.

    python export.py --resume CKPT --onnx model.onnx [--image-size N] [--device cpu]   (flags: get_parser)

The label graph and the word vectors are constants of a trained model, so the label semantics
(``MSRN.label_semantics``: C label and K group vectors) are computed once here and stored in the
graph; what runs is the trunk, the projections, the label attention and the classifier. The file
takes ``images`` float32 [batch, 3, S, S], normalised as in evaluation, and gives ``logits``
[batch, C]; its metadata say how to preprocess and name the classes (:func:`export_onnx`).
"""
import inspect
import json
import os
import sys
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn as nn

import checkpoint as ckpt
import cli
import distributed
from errors import NonFiniteOutputError, UsageError
from models import MIN_IMAGE_SIZE, WORD_DIM
from run import build_trained_model

DEFAULT_OPSET = 17
OPSETS = range(11, 21)   # what the TorchScript exporter writes for this graph (tried: 11 to 20)
# protobuf cannot hold more than 2 GiB: larger weights go to a file beside the model
SINGLE_FILE_LIMIT = 2 ** 31 - 2 ** 24
CHUNK_ELEMENTS = 1 << 20   # per image: the (D, n, P) weights of one chunk of nodes


def onnx_label_attention(x, nodes):
    """The label attention in standard ops, a few nodes at a time: x (B, P, D), nodes (N, D) -> (B, N, D).

    The forward pass of ``attention.chunked_label_attention`` (exponents shifted by the largest
    l·x_p, which is l·max_p x or l·min_p x by the sign of l; the weighted sum as a matrix product),
    unrolled over the chunks at export. Of the forms measured (``bench/export.py``) the fastest in
    onnxruntime and the smallest in memory. Unlike PyTorch's, onnxruntime's exp was not slower on
    underflow there, so the exponents are not floored (EXP_FLOOR): one pass less.
    """
    xt = x.transpose(1, 2).unsqueeze(2)                                  # (B, D, 1, P)
    xmax, xmin = xt.amax(-1, keepdim=True), xt.amin(-1, keepdim=True)    # (B, D, 1, 1)
    step = max(1, CHUNK_ELEMENTS // (x.shape[1] * x.shape[2]))
    levels = []
    for n in range(0, len(nodes), step):
        lt = nodes[n:n + step].t()[None, :, :, None]                     # (1, D, n, 1)
        shift = torch.where(lt >= 0, lt * xmax, lt * xmin)               # (B, D, n, 1)
        weights = (xt * lt - shift).exp()                                # (B, D, n, P)
        levels.append((weights @ xt.transpose(-1, -2)) / weights.sum(-1, keepdim=True))   # (B, D, n, 1)
    return torch.cat(levels, 2).squeeze(-1).transpose(1, 2)              # (B, N, D)


class ExportedMSRN(nn.Module):
    """images (B, 3, S, S) -> logits (B, C): ``model`` with its label semantics for ``word_vectors``
    (C, 300) computed once and held as the buffer ``nodes`` (C+K, D)."""

    def __init__(self, model, word_vectors):
        super().__init__()
        self.model = model
        words = torch.as_tensor(word_vectors)
        if tuple(words.shape) != (model.num_classes, WORD_DIM):
            raise UsageError(f'word vectors of shape {list(words.shape)} do not fit the model: expected '
                             f'[{model.num_classes}, {WORD_DIM}] (one row per class)')
        with torch.no_grad():
            local, group, _, _ = model.label_semantics(words.to(model.fc2.weight.device))
        self.register_buffer('nodes', torch.cat([local, group]))   # (C+K, D)

    def forward(self, images):
        return self.model.classify(self.model.resnet_101(images), self.nodes, onnx_label_attention)


def preprocessing_text(image_size, mean, std):
    """How an image becomes the model's input, in words (stored in the ONNX metadata)."""
    return (f'warp: convert to RGB, resize to {image_size}x{image_size} bilinear (aspect ratio not kept), '
            f'then /255, then (x - mean) / std per channel with mean {list(mean)} and std {list(std)}, '
            'laid out as float32 [batch, 3, height, width]')


def export_onnx(model, word_vectors, path, image_size, class_names, mean, std, opset=DEFAULT_OPSET):
    """Write ``model`` (an MSRN) with its label semantics for ``word_vectors`` as an ONNX file.

    Input ``images`` float32 [batch, 3, S, S] (dynamic batch), output ``logits`` [batch, C]. The
    metadata (``metadata_props``, all strings) hold: class_names (JSON list), image_size, mean and
    std (JSON lists), preprocessing (in words) and output. Weights over 2 GiB go to ``path.data``
    beside it (protobuf's limit). What cannot be exported raises UsageError (image size, opset,
    path), or NonFiniteOutputError for a model whose logits are not finite; nothing is written then.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise UsageError(f'image size {image_size} is too small: MSRN needs at least {MIN_IMAGE_SIZE} px '
                         '(--image-size)')
    if opset not in OPSETS:
        raise UsageError(f'ONNX opset {opset} cannot be written: choose {OPSETS[0]} to {OPSETS[-1]} (--opset)')
    if len(class_names) != model.num_classes:
        raise UsageError(f'{len(class_names)} class names for a model of {model.num_classes} classes')
    if os.path.isdir(path):
        raise UsageError(f'{path} is a folder; give the ONNX file to write, e.g. {os.path.join(path, "model.onnx")}')
    exported = ExportedMSRN(model.eval(), word_vectors).eval()
    example = torch.zeros(1, 3, image_size, image_size, device=exported.nodes.device)
    with torch.no_grad():
        if not torch.isfinite(exported(example)).all():
            raise NonFiniteOutputError('the model gives NaN or infinite logits: its weights are broken; '
                                       'export another checkpoint')
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # the tracer warns at the trunk's image-size check, a Python branch on the fixed S. The
        # TorchScript exporter: the torch.export-based one (dynamo=True) also needs onnxscript
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)   # of the TorchScript exporter itself
        traced = os.path.join(folder, 'model.onnx')
        # torch < 2.5 has only the TorchScript exporter, and no dynamo argument
        choice = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(exported, (example,), traced, **choice, opset_version=opset,
                          input_names=['images'], output_names=['logits'],
                          dynamic_axes={'images': {0: 'batch'}, 'logits': {0: 'batch'}})
        proto = onnx.load(traced)
    metadata = {'class_names': json.dumps(list(class_names)), 'image_size': str(image_size),
                'mean': json.dumps([float(m) for m in mean]), 'std': json.dumps([float(s) for s in std]),
                'preprocessing': preprocessing_text(image_size, mean, std),
                'output': 'logits [batch, classes], in the order of class_names; probability = sigmoid(logit)'}
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    external = sum(t.numel() * t.element_size() for t in exported.state_dict().values()) > SINGLE_FILE_LIMIT
    try:
        ckpt.atomic_write(path, lambda tmp: onnx.save(proto, tmp, save_as_external_data=external,
                                                      location=os.path.basename(path) + '.data'))
    except OSError as e:
        raise UsageError(f'{path}: cannot write the ONNX file ({e.strerror or e}); check the --onnx path') from e


def check_onnx(path, model, word_vectors, image_size, batch_sizes=(1, 3), seed=0):
    """Largest |logit difference| between onnxruntime (CPU) on the file and ``model`` in PyTorch,
    on random normalised images of each batch size."""
    session = onnxruntime.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
    gen = torch.Generator().manual_seed(seed)
    device = model.fc2.weight.device
    words = torch.as_tensor(word_vectors).to(device)
    differences = []
    for batch in batch_sizes:
        images = torch.randn(batch, 3, image_size, image_size, generator=gen)
        with torch.no_grad():
            expected = model.eval()(images.to(device), words.expand(batch, -1, -1))[0].float().cpu().numpy()
        got = session.run(['logits'], {'images': images.numpy()})[0]
        differences.append(np.abs(got - expected).max())
    return float(np.max(differences))   # NaN if any is


# ---- the command line ---------------------------------------------------------------------------

def export_checkpoint(args, given, recipe):
    device = distributed.init_distributed_mode(args.device)  # one process: just picks the device
    model, words, classes = build_trained_model(args, given, ckpt.read_checkpoint(args.resume), recipe)
    model.to(device)
    export_onnx(model, words, args.onnx, args.image_size, classes, model.image_normalization_mean,
                model.image_normalization_std, opset=args.opset)
    difference = check_onnx(args.onnx, model, words, args.image_size)
    print(f'=> {args.onnx}: {len(classes)} classes, {args.image_size} px; onnxruntime vs PyTorch on random '
          f'images, largest logit difference: {difference:.2e}')


def get_parser():
    """export.py's flags."""
    parser = cli.ArgumentParser(description='MSRN as an ONNX model: images in, logits out, for inference without '
                                            'this repository.')
    parser.add_argument('--onnx', required=True, metavar='PATH', help='ONNX file to write')
    invocation = cli.add_trained_model_arguments(parser)
    invocation.add_argument('--opset', default=DEFAULT_OPSET, type=int, metavar='V',
                            help=f'ONNX opset version (default: {DEFAULT_OPSET})')
    return parser


def main(argv=None):
    return cli.entry(get_parser(), export_checkpoint, argv)


if __name__ == '__main__':
    sys.exit(main())

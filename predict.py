"""MSRN on your own images: the top labels with scores, and optionally the label attention maps.

    python predict.py IMAGE [IMAGE ...] --resume CKPT [--threshold 0.5] [--top-k 5] [--attention OUT_DIR]

A checkpoint of ours brings everything else (class names, label graph, word vectors, backbone,
pool ratio, image size). For a released checkpoint (weights only) the dataset is recognised by
its class count (``--dataset`` to say it), and its official files and 448 px are used. Scores
are sigmoid probabilities of the logits (0.5 = the logit-0 rule of the metrics). With
``--attention``, each image gets ``OUT_DIR/<image name>_attention.png``: for every predicted
label, where it attends at the three layers, overlaid on the image.
"""
import os
import sys

import numpy as np
import torch

import checkpoint as ckpt
import cli
import demo_apparel_gcn
import demo_coco_gcn
import demo_nuswide_gcn
import demo_voc2007_gcn
import distributed
import label_files
from dataset_base import read_image
from errors import CheckpointError
from models import MSRN
from util import eval_transform

DATASETS = {d['name']: d for d in (demo_voc2007_gcn.DATASET, demo_coco_gcn.DATASET, demo_nuswide_gcn.DATASET,
                                   demo_apparel_gcn.DATASET)}
RELEASED_IMAGE_SIZE = 448  # the released models were trained and evaluated at 448 px


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint (ours or a released one)')
    parser.add_argument('--dataset', default=None, choices=list(DATASETS),
                        help="a released checkpoint's dataset (default: recognised by its class count)")
    parser.add_argument('--image-size', '-i', default=RELEASED_IMAGE_SIZE, type=int, metavar='N',
                        help=f"image side the model sees (default: the checkpoint's, else {RELEASED_IMAGE_SIZE})")
    parser.add_argument('--threshold', default=0.5, type=float, metavar='P',
                        help='show labels with probability >= P (default: 0.5)')
    parser.add_argument('--top-k', default=5, type=int, metavar='K', help='show at most K labels (default: 5)')
    parser.add_argument('--attention', metavar='OUT_DIR', help='write attention-map PNGs here')
    cli.add_model_arguments(parser)
    cli.add_label_file_arguments(parser)
    cli.add_device_argument(parser)
    return parser


def released_dataset(args, checkpoint):
    """The DATASET dict of a checkpoint without class names: ``--dataset``, or its class count."""
    if args.dataset:
        return DATASETS[args.dataset]
    num_classes = ckpt.bare_state_dict(checkpoint, f'{args.resume}: ')['fc2.weight'].shape[0]
    matches = [d for d in DATASETS.values() if len(d['classes']) == num_classes]
    if not matches:
        raise CheckpointError(f'{args.resume}: {num_classes} classes and no class names stored; '
                              f'pass --dataset ({", ".join(DATASETS)}) if it is one of these')
    return matches[0]


def build_model(args, given, checkpoint):
    """(model in eval mode with the checkpoint's weights, word vectors [C, 300], class names)."""
    settings = ckpt.stored_settings(checkpoint)
    cli.restore_settings(args, given, settings.get('args', {}), keys=cli.MODEL_SETTINGS)
    cli.take_checkpoint_backbone(args, given, checkpoint)
    dataset = None if 'classes' in settings else released_dataset(args, checkpoint)
    classes = settings['classes'] if dataset is None else dataset['classes']
    name = dataset['name'] if dataset else None
    if args.pool_ratio is None:
        args.pool_ratio = dataset['pool_ratio']
    graph = cli.label_graph_input(args, given, settings, dataset or {'name': None}, num_classes=len(classes))
    words = cli.word_vectors_input(args, given, settings)
    if not isinstance(words, np.ndarray):  # a file (word vectors or GloVe text): given, or the dataset's
        words = label_files.class_word_vectors(words or label_files.default_file(name, 'word'), classes,
                                               download=args.download)
    model = MSRN(len(classes), args.pool_ratio, args.backbone, graph)
    ckpt.load_checkpoint(model, checkpoint)
    return model.eval(), torch.as_tensor(words), classes


def top_labels(probabilities, classes, threshold, k):
    """[(name, probability)] above the threshold, best first, at most k."""
    order = probabilities.argsort(descending=True)[:k]
    return [(classes[i], float(probabilities[i])) for i in order if probabilities[i] >= threshold]


def save_attention_png(path, image, labels, maps):
    """One row per label: the image, then its attention at the three levels overlaid."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    size = image.size
    fig, axes = plt.subplots(len(labels), 4, figsize=(12, 3 * len(labels)), squeeze=False)
    for row, (name, probability) in enumerate(labels):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f'{name} {probability:.2f}')
        for level, level_maps in enumerate(maps, 1):
            heat = torch.nn.functional.interpolate(level_maps[None, None, row], size=size[::-1], mode='bilinear',
                                                   align_corners=False)[0, 0]
            axes[row, level].imshow(image)
            axes[row, level].imshow(heat.numpy(), cmap='jet', alpha=0.5)
            axes[row, level].set_title(f'level {level} ({level_maps.shape[-2]}x{level_maps.shape[-1]})')
        for ax in axes[row]:
            ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def predict(args, given):
    device = distributed.init_distributed_mode(args.device)  # one process: just picks the device
    model, words, classes = build_model(args, given, ckpt.read_checkpoint(args.resume))
    model.to(device)
    words = words.to(device)
    transform = eval_transform(args.image_size, model.image_normalization_mean, model.image_normalization_std)
    if args.attention:
        os.makedirs(args.attention, exist_ok=True)
    for path in args.images:
        image = read_image(path)
        with torch.no_grad():
            features = model.resnet_101(transform(image)[None].to(device))
            logits, _ = model.head(features, words)
            probabilities = torch.sigmoid(logits[0].float()).cpu()
        labels = top_labels(probabilities, classes, args.threshold, args.top_k)
        print(path)
        for name, probability in labels:
            print(f'  {name:<14} {probability:.3f}')
        if not labels:
            best = int(probabilities.argmax())
            print(f'  (no label reaches {args.threshold}; best: {classes[best]} {probabilities[best]:.3f})')
        if args.attention:
            shown = labels or [(classes[int(probabilities.argmax())], float(probabilities.max()))]
            with torch.no_grad():
                maps = model.attention_maps(features, words, [classes.index(name) for name, _ in shown])
            out = os.path.join(args.attention, os.path.splitext(os.path.basename(path))[0] + '_attention.png')
            save_attention_png(out, image, shown, [m[0].cpu() for m in maps])
            print(f'  attention maps: {out}')


def main(argv=None):
    args, given = cli.parse_args(get_args_parser(), argv)
    return cli.guarded(predict, args, given)


if __name__ == '__main__':
    sys.exit(main())

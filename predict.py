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

import torch

import checkpoint as ckpt
import cli
import demo_apparel_gcn
import demo_coco_gcn
import demo_nuswide_gcn
import demo_voc2007_gcn
import distributed
from dataset_base import read_image
from util import eval_transform

RELEASED = {spec.name: spec for spec in (demo_voc2007_gcn.DATASET, demo_coco_gcn.DATASET, demo_nuswide_gcn.DATASET,
                                         demo_apparel_gcn.DATASET)}


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
    model, words, classes = cli.build_trained_model(args, given, ckpt.read_checkpoint(args.resume), RELEASED)
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
    args, given = cli.parse_args(cli.get_predict_parser(RELEASED), argv)
    return cli.guarded(predict, args, given)


if __name__ == '__main__':
    sys.exit(main())

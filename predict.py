"""MSRN on your own images: the top labels with scores, and optionally the label attention maps.

    python predict.py IMAGE [IMAGE ...] --resume CKPT [--dataset voc|coco|nuswide|apparel]
                      [--threshold 0.5] [--top-k 5] [--attention OUT_DIR]

Scores are sigmoid probabilities of the logits (0.5 = the logit-0 rule of the metrics). With
``--attention``, each image gets ``OUT_DIR/<image name>_attention.png``: for every predicted
label, where it attends at the three layers, overlaid on the image.
"""
import argparse
import os
import sys

import torch

import apparel
import coco
import demo_apparel_gcn
import demo_coco_gcn
import demo_nuswide_gcn
import demo_voc2007_gcn
import distributed
import label_files
import nuswide
import voc
from cli import guarded
from dataset_base import read_image
from models import RESNET_LAYOUTS, MSRN, load_checkpoint, read_checkpoint
from util import eval_transform

DATASETS = {  # name -> (class names, demo script's DATASET dict)
    'voc': (voc.CLASSES, demo_voc2007_gcn.DATASET),
    'coco': (coco.CLASSES, demo_coco_gcn.DATASET),
    'nuswide': (nuswide.CLASSES, demo_nuswide_gcn.DATASET),
    'apparel': (apparel.CLASSES, demo_apparel_gcn.DATASET),
}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint (ours or a released one)')
    parser.add_argument('--dataset', default='voc', choices=list(DATASETS),
                        help='what the checkpoint was trained on: class names and defaults (default: voc)')
    parser.add_argument('--image-size', '-i', default=448, type=int, metavar='N',
                        help='image side the model sees (default: 448, as the released models)')
    parser.add_argument('--threshold', default=0.5, type=float, metavar='P',
                        help='show labels with probability >= P (default: 0.5)')
    parser.add_argument('--top-k', default=5, type=int, metavar='K', help='show at most K labels (default: 5)')
    parser.add_argument('--attention', metavar='OUT_DIR', help='write attention-map PNGs here')
    parser.add_argument('--backbone', '-bb', choices=list(RESNET_LAYOUTS), default=None,
                        help="trunk (default: the checkpoint's, else resnet101)")
    parser.add_argument('--pool_ratio', '-po', type=float, default=None, metavar='O',
                        help="label groups ratio (default: the dataset's, as its demo script)")
    parser.add_argument('-graph_file', '--graph-file', default=None, metavar='PATH',
                        help='label graph (default: data/<dataset>/<dataset>_adj.pkl); pickles can run code: '
                             'pass only files you trust')
    parser.add_argument('-word_file', '--word-file', default=None, metavar='PATH',
                        help='word vectors (default: data/<dataset>/<dataset>_glove_word2vec.pkl)')
    parser.add_argument('--no-download', dest='download', action='store_false',
                        help='never download missing data files')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    return parser


def build_model(args, checkpoint):
    """MSRN for ``args.dataset`` with the checkpoint's weights, in eval mode; also returns the word vectors."""
    classes, dataset = DATASETS[args.dataset]
    graph = label_files.load_adjacency(args.graph_file or label_files.default_file(args.dataset, 'graph'),
                                       len(classes), download=args.download)
    words = label_files.load_word_vectors(args.word_file or label_files.default_file(args.dataset, 'word'),
                                          len(classes), download=args.download)
    arch = checkpoint.get('arch') if isinstance(checkpoint, dict) else None
    backbone = args.backbone or (arch if arch in RESNET_LAYOUTS else 'resnet101')
    model = MSRN(len(classes), args.pool_ratio or dataset['pool_ratio'], backbone, graph)
    load_checkpoint(model, checkpoint)
    return model.eval(), torch.from_numpy(words)


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


def predict(args):
    device = distributed.init_distributed_mode(args.device)  # one process: just picks the device
    classes = DATASETS[args.dataset][0]
    model, words = build_model(args, read_checkpoint(args.resume))
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
    return guarded(predict, get_args_parser().parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())

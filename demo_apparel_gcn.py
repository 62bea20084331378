"""Train or evaluate MSRN on the Kaggle apparel dataset (flags: python demo_apparel_gcn.py --help)."""
import sys

from apparel import CLASSES, ApparelClassification
from cli import main

DATASET = {
    'name': 'apparel',
    'title': 'Apparel (Kaggle apparel-images-dataset)',
    'layout': 'holds the <colour>_<garment>/ folders, or all images with --image-label',
    'loader': ApparelClassification,
    'classes': CLASSES,
    'splits': ('train', 'val'),
    'pool_ratio': 0.2,
    'save_dir': 'checkpoint/apparel',
    'flags': {('--image-label',): dict(default=None, metavar='PATH', help=(
        "official one-folder layout: the official image_label.pkl (e.g. data/apparel/image_label.pkl); "
        "pickles can run code when loaded: pass only files you trust"))},
    'loader_args': ('image_label',),
}

if __name__ == '__main__':
    sys.exit(main(DATASET))

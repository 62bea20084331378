"""Train or evaluate MSRN on the Kaggle apparel dataset (flags: python demo_apparel_gcn.py --help)."""
import sys

from apparel import CLASSES, ApparelClassification
from cli import DatasetSpec, main

DATASET = DatasetSpec(
    name='apparel',
    title='Apparel (Kaggle apparel-images-dataset)',
    layout='holds the <colour>_<garment>/ folders, or all images with --image-label',
    loader=ApparelClassification,
    classes=CLASSES,
    splits=('train', 'val'),
    pool_ratio=0.2,
    save_dir='checkpoint/apparel',
    loader_flags=('image_label',),
)

if __name__ == '__main__':
    sys.exit(main(DATASET))

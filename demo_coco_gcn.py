"""Train or evaluate MSRN on MS-COCO 2014 (flags: python demo_coco_gcn.py --help)."""
import sys

from cli import DatasetSpec, main
from coco import CLASSES, COCO2014

DATASET = DatasetSpec(
    name='coco',
    title='MS-COCO 2014',
    layout='holds train2014/, val2014/, annotations/; downloaded there when missing',
    loader=lambda root, split, **options: COCO2014(root, phase=split, **options),
    classes=CLASSES,
    splits=('train', 'val'),
    pool_ratio=0.05,
    image_size=448,  # the official COCO script's defaults
    workers=24,
    save_dir='checkpoint/coco',
)

if __name__ == '__main__':
    sys.exit(main(DATASET))

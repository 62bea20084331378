"""Train or evaluate MSRN on PASCAL VOC 2007 (flags: python demo_voc2007_gcn.py --help)."""
import sys

from cli import DatasetSpec, main
from voc import CLASSES, Voc2007Classification

DATASET = DatasetSpec(
    name='voc',
    title='PASCAL VOC 2007',
    layout='holds VOCdevkit/VOC2007; downloaded there when missing',
    loader=Voc2007Classification,
    classes=CLASSES,
    splits=('trainval', 'test'),
    pool_ratio=0.2,
    save_dir='checkpoint/voc2007',
)

if __name__ == '__main__':
    sys.exit(main(DATASET))

"""Train or evaluate MSRN on NUS-WIDE (flags: python demo_nuswide_gcn.py --help)."""
import sys

from cli import DatasetSpec, main
from nuswide import CLASSES, NusWideClassification

DATASET = DatasetSpec(
    name='nuswide',
    title='NUS-WIDE (the ASL csv distribution)',
    layout='holds nus_wid_data.csv and the images it lists',
    loader=NusWideClassification,
    classes=CLASSES,
    splits=('train', 'val'),
    pool_ratio=0.05,
    save_dir='checkpoint/nuswide',
)

if __name__ == '__main__':
    sys.exit(main(DATASET))

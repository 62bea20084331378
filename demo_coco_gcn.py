"""Train or evaluate MSRN on MS-COCO 2014 (flags: python demo_coco_gcn.py --help)."""
import sys

from coco import DATASET
from run import main

if __name__ == '__main__':
    sys.exit(main(DATASET))

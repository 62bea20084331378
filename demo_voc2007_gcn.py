"""Train or evaluate MSRN on PASCAL VOC 2007 (flags: python demo_voc2007_gcn.py --help)."""
import sys

from voc import DATASET
from run import main

if __name__ == '__main__':
    sys.exit(main(DATASET))

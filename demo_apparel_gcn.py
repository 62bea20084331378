"""Train or evaluate MSRN on the Kaggle apparel dataset (flags: python demo_apparel_gcn.py --help)."""
import sys

from apparel import DATASET
from run import main

if __name__ == '__main__':
    sys.exit(main(DATASET))

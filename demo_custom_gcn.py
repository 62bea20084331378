"""Train or evaluate MSRN on your own data (flags: python demo_custom_gcn.py --help)."""
import sys

from custom import DATASET
from run import main

if __name__ == '__main__':
    sys.exit(main(DATASET))

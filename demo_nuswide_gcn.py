"""Train or evaluate MSRN on NUS-WIDE (flags: python demo_nuswide_gcn.py --help)."""
import sys

from nuswide import DATASET
from run import main

if __name__ == '__main__':
    sys.exit(main(DATASET))

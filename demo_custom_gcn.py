"""Train or evaluate MSRN on your own data (flags: python demo_custom_gcn.py --help)."""
import sys

from cli import main
from custom import CustomClassification, build_label_graph

DATASET = {
    'name': 'custom',
    'title': 'your own data (train.csv and val.csv, see docs/datasets.md)',
    'layout': 'holds train.csv and val.csv (header filepath,labels; labels separated by |), '
              'optionally classes.txt',
    'loader': CustomClassification,
    'splits': ('train', 'val'),
    'pool_ratio': 0.2,
    'save_dir': 'checkpoint/custom',
    # no official label files: the graph is built from train.csv, the word vectors fall back
    'label_files': {'graph_file': (None, 'built from the training labels and saved as label_graph.npz in '
                                         '--save-dir'),
                    'word_file': (None, 'a fixed random unit vector per class, seeded by its name')},
    'build_graph': build_label_graph,
}

if __name__ == '__main__':
    sys.exit(main(DATASET))

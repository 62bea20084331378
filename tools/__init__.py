"""Helpers run as ``python tools/<name>.py``: label graph, word vectors, synthetic datasets."""
import importlib

# dataset name (= its module) -> the split whose labels define the label graph
TRAIN_SPLIT = {'voc': 'trainval', 'coco': 'train', 'nuswide': 'train', 'apparel': 'train', 'custom': 'train'}


def dataset_module(name):
    """The loader module of dataset ``name`` (voc, coco, nuswide, apparel or custom)."""
    if name not in TRAIN_SPLIT:
        raise ValueError(f'unknown dataset {name!r}; use one of {", ".join(TRAIN_SPLIT)}')
    return importlib.import_module(name)

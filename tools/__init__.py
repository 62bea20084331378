"""Helpers run as ``python tools/<name>.py``: label graph, word vectors, synthetic datasets."""
import importlib

DATASETS = ('voc', 'coco', 'nuswide', 'apparel', 'custom')  # the loader modules, each with its DATASET


def dataset_module(name):
    """The loader module of dataset ``name`` (voc, coco, nuswide, apparel or custom)."""
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; use one of {", ".join(DATASETS)}')
    return importlib.import_module(name)


def training_split(name):
    """The split whose labels define dataset ``name``'s label graph."""
    return dataset_module(name).DATASET.splits[0]

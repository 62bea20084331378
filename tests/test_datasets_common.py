"""The item contract and the bad-input errors, the same for every loader (synthetic data)."""
import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import apparel
import coco
import custom
import dataset_base
import label_files
import nuswide
import voc
from errors import DatasetError
from label_files import LabelFileError
from tools.synthetic_data import CUSTOM_CLASSES

SPLITS = {'voc': ('trainval', 'test'), 'coco': ('train', 'val'), 'nuswide': ('train', 'val'),
          'apparel': ('train', 'val'), 'apparel_official': ('train', 'val'), 'custom': ('train', 'val')}
NUM_CLASSES = {'voc': 20, 'coco': 80, 'nuswide': 81, 'apparel': 11, 'apparel_official': 11, 'custom': 6}
CLASSES = {'voc': voc.CLASSES, 'coco': coco.CLASSES, 'nuswide': nuswide.CLASSES, 'apparel': apparel.CLASSES,
           'apparel_official': apparel.CLASSES, 'custom': CUSTOM_CLASSES}


def write(synthetic, name):
    if name == 'apparel_official':
        return synthetic('apparel', layout='official')
    if name == 'custom':  # classes.txt: the written order, not the sorted one
        return synthetic('custom', classes_txt=True)
    return synthetic(name)


def load(name, root, split, **kw):
    """Construct the loader of ``name`` on a synthetic ``root`` without any download."""
    dataset = name.split('_')[0]
    kw.setdefault('download', False)
    if name == 'custom':  # no word file: the fallback vectors
        return custom.CustomClassification(root, split, **kw)
    kw.setdefault('inp_name', os.path.join(root, f'{dataset}_glove_word2vec.pkl'))
    if name == 'voc':
        return voc.Voc2007Classification(root, split, **kw)
    if name == 'coco':
        return coco.COCO2014(root, phase=split, **kw)
    if name == 'nuswide':
        return nuswide.NusWideClassification(root, split, **kw)
    if name == 'apparel_official':
        kw['image_label'] = os.path.join(root, 'image_label.pkl')
    return apparel.ApparelClassification(root, split, **kw)


def copy(info, tmp_path):
    return shutil.copytree(info['root'], str(tmp_path / 'data'))


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert '\n' not in msg, msg
    for fragment in fragments:
        assert str(fragment) in msg, msg


@pytest.mark.parametrize('name', sorted(SPLITS))
def test_items_follow_the_contract(synthetic, name):
    info = write(synthetic, name)
    sizes = []
    for split in SPLITS[name]:
        ds = load(name, info['root'], split)
        c = NUM_CLASSES[name]
        assert ds.classes == CLASSES[name]
        assert ds.targets.shape == (len(ds), c) and ds.targets.dtype == torch.float32
        (img, item_name, inp), target = ds[0]
        assert isinstance(img, Image.Image) and img.mode == 'RGB' and isinstance(item_name, str)
        assert inp.shape == (c, 300) and inp.dtype == torch.float32 and ds[1][0][2] is inp
        assert target.shape == (c,) and target.dtype == torch.float32
        assert set(torch.unique(ds.targets).tolist()) <= {-1.0, 0.0, 1.0}
        if 'targets' in info and 'apparel' not in name:  # same labels, same order as written
            assert (ds.targets.numpy() == info['targets'][split]).all()
        ds.transform = lambda im: torch.zeros(3, 8, 8)
        ds.target_transform = lambda t: t * 2
        (img, _, _), target = ds[0]
        assert img.shape == (3, 8, 8) and (target == ds.targets[0] * 2).all()
        target.zero_()  # the engine may remap a batch in place: the dataset must not change
        assert (ds[0][1] == ds.targets[0] * 2).all()
        sizes.append(len(ds))
    if 'apparel' in name:
        assert abs(sizes[0] - sizes[1]) <= 1


@pytest.mark.parametrize('name', sorted(SPLITS))
def test_missing_root(name, tmp_path):
    root = tmp_path / 'nowhere'
    with pytest.raises(DatasetError) as e:
        load(name, str(root), SPLITS[name][0], inp_name=str(tmp_path / 'w.pkl'))
    one_line_error(e, root)


@pytest.mark.parametrize('name', ['voc', 'coco', 'nuswide', 'apparel_official'])
def test_listed_image_absent(synthetic, name, tmp_path):
    root = copy(write(synthetic, name), tmp_path)
    missing = load(name, root, SPLITS[name][0]).paths[3]
    os.remove(missing)
    with pytest.raises(DatasetError) as e:
        load(name, root, SPLITS[name][0])
    one_line_error(e, missing, '1 of')


def test_read_image_of_no_dataset_names_no_dataset(tmp_path):
    """predict.py reads images of no dataset: the error must not send the user to a dataset root."""
    with pytest.raises(DatasetError) as e:
        dataset_base.read_image(str(tmp_path / 'nope.jpg'))
    assert e.value.line == f"{tmp_path / 'nope.jpg'}: image not found; check the path"


@pytest.mark.parametrize('name', sorted(SPLITS))
def test_corrupt_and_truncated_images(synthetic, name, tmp_path, capsys):
    root = copy(write(synthetic, name), tmp_path)
    split = SPLITS[name][0]
    ds = load(name, root, split)
    garbage, truncated = ds.paths[1], ds.paths[2]
    with open(garbage, 'wb') as f:
        f.write(b'not a jpeg at all')
    data = open(truncated, 'rb').read()
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    for index, path in ((1, garbage), (2, truncated)):
        with pytest.raises(DatasetError) as e:
            ds[index]
        one_line_error(e, path, '--skip-corrupt')
    capsys.readouterr()
    kept = load(name, root, split, skip_corrupt=True)
    out = capsys.readouterr().out
    assert f'skipped 2 of {len(ds)} unreadable images' in out and garbage in out and truncated in out
    assert len(kept) == len(ds) - 2 and garbage not in kept.paths and truncated not in kept.paths
    assert sorted(p for p, _ in kept.skipped) == sorted([garbage, truncated])
    kept[len(kept) - 1]


@pytest.mark.parametrize('name', sorted(SPLITS))
def test_word_vectors_of_another_dataset(synthetic, name):
    info = write(synthetic, name)
    other = synthetic('voc' if 'apparel' in name else 'apparel')
    with pytest.raises(LabelFileError) as e:
        load(name, info['root'], SPLITS[name][0], inp_name=other['word_file'])
    one_line_error(e, other['word_file'], f'has {NUM_CLASSES[name]} classes')


@pytest.mark.parametrize('name', sorted(set(SPLITS) - {'custom'}))  # custom: any <split>.csv is a split
def test_unknown_split(synthetic, name):
    with pytest.raises(DatasetError) as e:
        load(name, write(synthetic, name)['root'], 'training')
    one_line_error(e, "'training'", SPLITS[name][0])


def test_dataloader_batches_and_worker_errors_keep_one_line(synthetic, tmp_path):
    root = copy(write(synthetic, 'voc'), tmp_path)
    ds = load('voc', root, 'test')
    ds.transform = lambda im: torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(4)), batch_size=4, num_workers=1)
    (images, names, inp), target = next(iter(loader))
    assert images.shape == (4, 3, 64, 64) and list(names) == ds.names[:4]
    assert inp.shape == (4, 20, 300) and target.shape == (4, 20)
    with open(ds.paths[0], 'wb') as f:
        f.write(b'broken')
    batches = iter(loader)
    with pytest.raises(DatasetError) as e:
        next(batches)
    assert next(batches, None) is None  # exhausted: the worker stops now rather than in a slow gc
    assert '\n' in str(e.value)  # PyTorch's re-raise carries the worker traceback
    assert e.value.line.startswith(f'{ds.paths[0]}: cannot read image') and '\n' not in e.value.line
    with pytest.raises(DatasetError) as e:
        ds[0]
    assert e.value.line == str(e.value)


def test_default_word_file_is_fetched(synthetic, tmp_path, monkeypatch, http_server):
    info = write(synthetic, 'nuswide')
    content = open(info['word_file'], 'rb').read()
    http_server.files['/d/nuswide/nuswide_glove_word2vec.pkl'] = content
    monkeypatch.setattr(label_files, 'DATA_DIR', str(tmp_path))
    monkeypatch.setattr(label_files, 'BASE_URL', http_server.url('/d'))
    monkeypatch.setitem(label_files.OFFICIAL_SHA256, 'nuswide/nuswide_glove_word2vec.pkl',
                        hashlib.sha256(content).hexdigest())
    with pytest.raises(LabelFileError, match='save it as'):
        nuswide.NusWideClassification(info['root'], 'val', download=False)
    ds = nuswide.NusWideClassification(info['root'], 'val')
    assert ds.inp_name == str(tmp_path / 'nuswide' / 'nuswide_glove_word2vec.pkl') and ds.inp.shape == (81, 300)

import os
import pickle
import random
import shutil

import numpy as np
import pytest

import apparel
import label_files
from errors import DatasetError
from tests.helpers import official_file


def make(root, split='train', **kw):
    return apparel.ApparelClassification(root, split, inp_name=os.path.join(root, 'apparel_glove_word2vec.pkl'),
                                         download=False, **kw)


def official_split(image_label):
    """The official procedure, global RNG and all; the global state is restored afterwards."""
    state = random.getstate()
    try:
        items = list(image_label.items())
        random.seed(10)
        random.shuffle(items)
        half = int(len(items) * 0.5)
        return dict(items[:half]), dict(items[half:])
    finally:
        random.setstate(state)


def test_split_is_the_official_one_and_leaves_the_global_rng_alone():
    image_map = {f'{i:05d}.jpg': i for i in range(1001)}
    random.seed(1234)
    before = random.getstate()
    train, val = apparel.split_dataset(image_map)
    assert random.getstate() == before
    assert (train, val) == official_split(image_map)
    assert list(train) == list(official_split(image_map)[0])  # same order, not just the same set
    assert len(train) == 500 and len(val) == 501


def test_official_split_of_the_official_pickle():
    raw = pickle.load(open(official_file('apparel/image_label.pkl'), 'rb'))
    expected_train, expected_val = official_split(raw)
    labels = label_files.load_image_labels(official_file('apparel/image_label.pkl'), 11)
    train, val = apparel.split_dataset(labels)
    assert list(train) == list(expected_train) and list(val) == list(expected_val)


def test_kaggle_folders_rebuild_the_official_image_label_map(tmp_path):
    """Empty files named as in the official pickle, in their <colour>_<garment> folders (plus the one
    file name that the Kaggle data has in two folders), read back in the pickle's exact order."""
    raw = pickle.load(open(official_file('apparel/image_label.pkl'), 'rb'))
    for name, values in raw.items():
        present = [c for c, v in zip(apparel.CLASSES, values) if v == 0]
        folder = tmp_path / '_'.join(present)
        folder.mkdir(exist_ok=True)
        (folder / name).touch()
    # red_dress's adjacency count in the official apparel_adj.pkl is 800, one more than its pickle entries
    (tmp_path / 'red_dress' / '9bfb9fc6d5f7ba79fa302dcc1f6ab5ae8da8cec6.jpg').touch()
    image_map = apparel.read_folders(str(tmp_path))
    assert list(image_map) == list(raw)
    for name, (path, target) in image_map.items():
        assert ((target == 1) == (np.array(raw[name]) == 0)).all()


def test_a_file_name_in_two_folders_keeps_its_place_and_takes_the_later_labels(tmp_path, capsys):
    for folder, names in (('black_dress', ['a.jpg', 'b.jpg']), ('red_shoes', ['b.jpg', 'c.jpg'])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).touch()
    image_map = apparel.read_folders(str(tmp_path))
    assert list(image_map) == ['a.jpg', 'b.jpg', 'c.jpg']
    path, target = image_map['b.jpg']
    assert path == str(tmp_path / 'red_shoes' / 'b.jpg')
    assert [apparel.CLASSES[i] for i in np.flatnonzero(target == 1)] == ['red', 'shoes']
    assert '1 file name(s) occur in two folders' in capsys.readouterr().out


def test_both_layouts_give_the_same_dataset(synthetic):
    folders = synthetic('apparel')
    official = synthetic('apparel', layout='official')
    for split in apparel.SPLITS:
        a = make(folders['root'], split)
        b = make(official['root'], split, image_label=official['image_label'])
        assert a.names == b.names and (a.targets == b.targets).all()
        assert b.paths[0] == os.path.join(official['root'], 'apparel', b.names[0])
    for path, target in zip(a.paths, a.targets):
        colour, garment = os.path.basename(os.path.dirname(path)).split('_')
        assert [apparel.CLASSES[i] for i in np.flatnonzero(target == 1)] == [colour, garment]


def test_bad_folder_name(synthetic, tmp_path):
    root = shutil.copytree(synthetic('apparel')['root'], str(tmp_path / 'app'))
    os.mkdir(os.path.join(root, 'purple_hat'))
    with pytest.raises(DatasetError, match='purple_hat: folder name is not <colour>_<garment>'):
        make(root)


def test_root_without_garment_folders(tmp_path):
    with pytest.raises(DatasetError, match='no <colour>_<garment>/ folders with images; download https://www.kaggle'):
        make(str(tmp_path))


def test_official_layout_needs_its_image_label_file(synthetic, tmp_path):
    info = synthetic('apparel', layout='official')
    missing = str(tmp_path / 'image_label.pkl')
    with pytest.raises(DatasetError, match=f'{missing}: file not found'):
        make(info['root'], image_label=missing)
    label_files.save(missing, {'x.jpg': [0] * 10})
    with pytest.raises(DatasetError, match="entry 'x.jpg'"):
        make(info['root'], image_label=missing)

import hashlib
import json
import os
import shutil
import time
import zipfile

import pytest

import coco
from download import Archive
from errors import DatasetError


def make(root, phase='train', **kw):
    return coco.COCO2014(root, phase=phase, inp_name=os.path.join(root, 'coco_glove_word2vec.pkl'),
                         download=kw.pop('download', False), **kw)


@pytest.fixture
def root(synthetic, tmp_path):
    return shutil.copytree(synthetic('coco')['root'], str(tmp_path / 'coco'))


def annotations(root, phase='train'):
    return os.path.join(root, 'annotations', f'instances_{phase}2014.json')


def test_unannotated_images_are_left_out_and_classes_sorted_by_name(root):
    ann = json.load(open(annotations(root)))
    labelled = {a['image_id'] for a in ann['annotations']}
    ds = make(root)
    assert ds.names == [img['file_name'] for img in ann['images'] if img['id'] in labelled]
    assert len(ds) < len(ann['images'])
    name_of = {c['id']: c['name'] for c in ann['categories']}
    first = ann['images'][0]
    expected = sorted({coco.CLASSES.index(name_of[a['category_id']]) for a in ann['annotations']
                       if a['image_id'] == first['id']})
    assert (ds.targets[0] == 1).nonzero().flatten().tolist() == expected


def test_cache_in_the_official_format_under_root(root, monkeypatch):
    first = make(root)
    cache = os.path.join(root, 'cache', 'train_anno.json')
    entries = json.load(open(cache))
    assert entries[0] == {'file_name': first.names[0], 'labels': (first.targets[0] == 1).nonzero().flatten().tolist()}
    monkeypatch.setattr(coco, 'parse_annotations', lambda path: pytest.fail('cache not used'))
    assert (make(root).targets == first.targets).all()
    os.remove(annotations(root))  # the cache alone is enough, as in the official loader
    assert len(make(root)) == len(first)


def test_newer_annotations_rebuild_the_cache(root):
    make(root)
    ann = json.load(open(annotations(root)))
    ann['annotations'] = [a for a in ann['annotations'] if a['image_id'] != ann['images'][0]['id']]
    json.dump(ann, open(annotations(root), 'w'))
    future = time.time() + 10
    os.utime(annotations(root), (future, future))
    assert ann['images'][0]['file_name'] not in make(root).names


def test_malformed_annotations(root):
    path = annotations(root)
    text = open(path).read()
    open(path, 'w').write(text[:len(text) // 2])
    with pytest.raises(DatasetError, match=f'{path}:1: not valid JSON'):
        make(root)
    ann = json.loads(text)
    ann['categories'][0]['name'] = 'unicorn'
    json.dump(ann, open(path, 'w'))
    with pytest.raises(DatasetError, match='categories differ from the 80 COCO classes .*unicorn'):
        make(root)
    del ann['images']
    ann['categories'][0]['name'] = coco.CLASSES[0]
    json.dump(ann, open(path, 'w'))
    with pytest.raises(DatasetError, match="missing or malformed field 'images'"):
        make(root)


def test_empty_split(root):
    path = annotations(root, 'val')
    ann = json.load(open(path))
    ann['annotations'] = []
    json.dump(ann, open(path, 'w'))
    with pytest.raises(DatasetError, match='no images in COCO 2014 val'):
        make(root, 'val')


def test_downloads_the_zips(synthetic, tmp_path, http_server, monkeypatch):
    src = synthetic('coco')['root']
    for part, folder in (('train', 'train2014'), ('annotations', 'annotations')):
        zip_path = tmp_path / f'{part}.zip'
        with zipfile.ZipFile(zip_path, 'w') as z:
            for name in sorted(os.listdir(os.path.join(src, folder))):
                z.write(os.path.join(src, folder, name), f'{folder}/{name}')
        data = zip_path.read_bytes()
        http_server.files[f'/{part}.zip'] = data
        monkeypatch.setitem(coco.ARCHIVES, part, Archive(
            (http_server.url(f'/{part}.zip'),), len(data), hashlib.sha256(data).hexdigest()))
    root = str(tmp_path / 'fresh')
    ds = coco.COCO2014(root, phase='train', inp_name=os.path.join(src, 'coco_glove_word2vec.pkl'))
    assert ds.names == make(src).names
    assert sorted(os.listdir(root)) == ['annotations', 'cache', 'downloads', 'train2014']
    with pytest.raises(DatasetError, match='val2014: not found; extract val2014.zip'):
        make(root, 'val')


def test_missing_annotation_file_without_cache(root):
    os.remove(annotations(root, 'val'))
    shutil.rmtree(os.path.join(root, 'cache'), ignore_errors=True)
    with pytest.raises(DatasetError) as e:
        make(root, 'val')
    assert str(e.value) == (f'{annotations(root, "val")}: not found; extract annotations_trainval2014.zip into {root}, '
                            f'or drop --no-download to let the script download it')

import hashlib
import json
import os
import shutil
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


def test_edited_annotations_rebuild_the_cache_even_with_size_and_time_unchanged(root):
    first = make(root)
    path = annotations(root)
    text = open(path).read()
    ann = json.loads(text)
    assert json.dumps(ann) == text  # so that a rewrite changes only what is edited
    # move one annotation of the first image to a category it lacks, with an id of as many digits
    image = ann['images'][0]
    edit = next(a for a in ann['annotations'] if a['image_id'] == image['id'])
    taken = {a['category_id'] for a in ann['annotations'] if a['image_id'] == image['id']}
    old = edit['category_id']
    edit['category_id'] = next(c['id'] for c in ann['categories']
                               if c['id'] not in taken and len(str(c['id'])) == len(str(old)))
    edited = json.dumps(ann)
    assert len(edited) == len(text)
    stat = os.stat(path)
    with open(path, 'w') as f:
        f.write(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as an edit within the same clock tick
    name_of = {c['id']: c['name'] for c in ann['categories']}
    row = make(root).targets[first.names.index(image['file_name'])]
    assert row[coco.CLASSES.index(name_of[edit['category_id']])] == 1
    assert row[coco.CLASSES.index(name_of[old])] == -1


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

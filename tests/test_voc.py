import hashlib
import os
import shutil
import tarfile

import pytest

import voc
from download import Archive, DownloadError
from errors import DatasetError


def make(root, split='trainval', **kw):
    return voc.Voc2007Classification(root, split, inp_name=os.path.join(root, 'voc_glove_word2vec.pkl'),
                                     download=kw.pop('download', False), **kw)


@pytest.fixture
def root(synthetic, tmp_path):
    return shutil.copytree(synthetic('voc')['root'], str(tmp_path / 'voc'))


def label_file(root, cls, split='trainval'):
    return os.path.join(root, 'VOCdevkit', 'VOC2007', 'ImageSets', 'Main', f'{cls}_{split}.txt')


def test_difficult_labels_and_names(root, synthetic):
    ds = make(root)
    assert (ds.targets == 0).any()  # the writer marks some small objects difficult
    assert ds.names[0] == '000001' and ds.paths[0].endswith(os.path.join('JPEGImages', '000001.jpg'))


def test_csv_cache_as_ml_gcn(root, monkeypatch):
    first = make(root)
    cache = os.path.join(root, 'files', 'VOC2007', 'classification_trainval.csv')
    lines = open(cache).read().splitlines()
    assert lines[0] == 'name,' + ','.join(voc.CLASSES) and len(lines) == len(first) + 1
    monkeypatch.setattr(voc, 'read_object_labels', lambda *a: pytest.fail('cache not used'))
    assert (make(root).targets == first.targets).all()
    monkeypatch.undo()

    # a label file edited after the cache was written wins, even with its size and time unchanged
    path = label_file(root, 'person')
    text = open(path).read()
    edited = text.replace('000001 -1', '000001  1').replace('000001  0', '000001  1')
    assert edited != text and len(edited) == len(text)
    stat = os.stat(path)
    with open(path, 'w') as f:
        f.write(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as an edit within the same clock tick
    assert make(root).targets[0, voc.CLASSES.index('person')] == 1
    assert read_cache_row(root, '000001')[voc.CLASSES.index('person')] == '1'  # and the cache was rewritten


def read_cache_row(root, name):
    with open(os.path.join(root, 'files', 'VOC2007', 'classification_trainval.csv')) as f:
        return next(line.rstrip('\n').split(',')[1:] for line in f if line.startswith(name + ','))


def test_cache_without_its_record_of_sources_is_rebuilt(root, monkeypatch):
    make(root)
    cache = os.path.join(root, 'files', 'VOC2007', 'classification_trainval.csv')
    os.remove(cache + '.sources.json')  # e.g. a cache that ML-GCN wrote
    parsed = []
    real = voc.read_object_labels
    monkeypatch.setattr(voc, 'read_object_labels', lambda *a: parsed.append(a) or real(*a))
    make(root)
    make(root)
    assert len(parsed) == 1 and os.path.isfile(cache + '.sources.json')


def test_malformed_label_file_names_file_and_line(root):
    path = label_file(root, 'dog')
    lines = open(path).read().splitlines()
    lines[4] = lines[4].split()[0] + ' maybe'
    open(path, 'w').write('\n'.join(lines) + '\n')
    with pytest.raises(DatasetError) as e:
        make(root)
    assert f'{path}:5: expected "<image id> <1|0|-1>"' in str(e.value)


def test_class_files_must_list_the_same_images(root):
    path = label_file(root, 'cat')
    lines = open(path).read().splitlines()
    open(path, 'w').write('\n'.join(lines[:-1]) + '\n')
    with pytest.raises(DatasetError, match='is missing .*the file is incomplete'):
        make(root)
    open(path, 'w').write('\n'.join(lines + ['999999 -1']) + '\n')
    with pytest.raises(DatasetError, match=f'{len(lines) + 1}: image 999999 is not listed in'):
        make(root)


def test_corrupt_cache_says_delete_it(root):
    make(root)
    cache = os.path.join(root, 'files', 'VOC2007', 'classification_trainval.csv')
    lines = open(cache).read().splitlines()
    lines[3] = lines[3] + ',7'
    open(cache, 'w').write('\n'.join(lines) + '\n')
    with pytest.raises(DatasetError, match=f'{cache}:4: .*delete it'):
        make(root)


def test_empty_split(root):
    for cls in voc.CLASSES:
        open(label_file(root, cls), 'w').close()
    with pytest.raises(DatasetError, match='no images in VOC 2007 trainval'):
        make(root)


def test_missing_label_files_without_download(root):
    os.remove(label_file(root, 'sofa', 'test'))
    with pytest.raises(DatasetError) as e:
        make(root, 'test')
    assert label_file(root, 'sofa', 'test') in str(e.value) and 'VOCtest_06-Nov-2007.tar' in str(e.value)


def test_root_given_too_deep_is_not_downloaded_into(root):
    for inner in ('VOCdevkit', os.path.join('VOCdevkit', 'VOC2007')):
        with pytest.raises(DatasetError, match='pass the folder that holds VOCdevkit/'):
            make(os.path.join(root, inner), download=True)


@pytest.fixture
def served_tars(synthetic, tmp_path, http_server, monkeypatch):
    """The synthetic VOC as the two official tars on the local server, pinned in voc.ARCHIVES."""
    src = synthetic('voc')['root']
    main = os.path.join('VOCdevkit', 'VOC2007', 'ImageSets', 'Main')
    for split in voc.SETS:
        tar_path = tmp_path / f'{split}.tar'
        with tarfile.open(tar_path, 'w') as t:
            for name in sorted(os.listdir(os.path.join(src, main))):
                if name.endswith(f'_{split}.txt') or name == f'{split}.txt':
                    t.add(os.path.join(src, main, name), os.path.join(main, name))
            for name in open(os.path.join(src, main, f'{split}.txt')).read().split():
                rel = os.path.join('VOCdevkit', 'VOC2007', 'JPEGImages', name + '.jpg')
                t.add(os.path.join(src, rel), rel)
        data = tar_path.read_bytes()
        http_server.files[f'/{split}.tar'] = data
        monkeypatch.setitem(voc.ARCHIVES, split, Archive(
            (http_server.url(f'/{split}.tar'),), len(data), hashlib.sha256(data).hexdigest()))
    return src


def test_downloads_and_extracts_each_set_once(served_tars, tmp_path, http_server):
    root = str(tmp_path / 'fresh')
    word_file = os.path.join(served_tars, 'voc_glove_word2vec.pkl')
    for split in voc.SETS:
        ds = voc.Voc2007Classification(root, split, inp_name=word_file)
        reference = make(served_tars, split)
        assert ds.names == reference.names and (ds.targets == reference.targets).all()
    assert sorted(os.listdir(os.path.join(root, 'downloads'))) == ['test.tar', 'trainval.tar']
    assert sorted(os.listdir(root)) == ['VOCdevkit', 'downloads', 'files']
    requests = len(http_server.requests)
    voc.Voc2007Classification(root, 'test', inp_name=word_file)
    assert len(http_server.requests) == requests


def test_download_checksum_mismatch_leaves_root_clean(served_tars, tmp_path, http_server):
    http_server.files['/test.tar'] = http_server.files['/test.tar'][:-1] + b'!'
    root = tmp_path / 'fresh'
    with pytest.raises(DownloadError, match='sha256'):
        voc.Voc2007Classification(str(root), 'test', inp_name='unused.pkl')
    assert [str(p.relative_to(root)) for p in root.rglob('*')] == ['downloads']


def test_unwritable_cache_is_skipped_with_a_note(root, capsys):
    shutil.rmtree(os.path.join(root, 'files'), ignore_errors=True)
    with open(os.path.join(root, 'files'), 'w') as f:  # a file where the cache folder should go
        f.write('in the way')
    assert len(make(root)) == 160
    assert 'cannot write the cache' in capsys.readouterr().out

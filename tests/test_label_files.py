import hashlib
import os
import pickle

import numpy as np
import pytest

import label_files
from download import DownloadError
from errors import DatasetError
from label_files import LabelFileError, load_adjacency, load_image_labels, load_word_vectors
from tests.helpers import OFFICIAL_DATA, official_file

SHAPES = {'voc': 20, 'coco': 80, 'nuswide': 81, 'apparel': 11}


def test_label_file_error_is_a_dataset_error():
    assert issubclass(LabelFileError, DatasetError) and issubclass(DownloadError, DatasetError)


def test_pinned_sha256_match_the_official_sums():
    sums = official_file('SHA256SUMS')
    listed = dict(reversed(line.split()) for line in open(sums) if line.strip())
    for rel, sha in label_files.OFFICIAL_SHA256.items():
        assert listed[rel] == sha, rel
        assert hashlib.sha256(open(os.path.join(OFFICIAL_DATA, rel), 'rb').read()).hexdigest() == sha


@pytest.mark.parametrize('dataset', sorted(SHAPES))
def test_official_files_load_with_their_shapes(dataset):
    c = SHAPES[dataset]
    graph = load_adjacency(official_file(f'{dataset}/{dataset}_adj.pkl'), c)
    assert graph['adj'].shape == (c, c) and graph['nums'].shape == (c,)
    vectors = load_word_vectors(official_file(f'{dataset}/{dataset}_glove_word2vec.pkl'), c)
    assert vectors.shape == (c, 300) and vectors.dtype == np.float32


def test_official_image_labels_map_zero_to_present():
    labels = load_image_labels(official_file('apparel/image_label.pkl'), 11)
    raw = pickle.load(open(official_file('apparel/image_label.pkl'), 'rb'))
    assert list(labels) == list(raw) and len(labels) == 11384
    for name in list(raw)[:50]:
        assert ((labels[name] == 1) == (np.array(raw[name]) == 0)).all()
        assert (labels[name] == 1).sum() == 2  # a colour and a garment


@pytest.fixture
def data_dir(tmp_path, monkeypatch, http_server):
    """Point label_files at an empty data folder and the local server, with one pinned file."""
    content = pickle.dumps({'adj': np.ones((3, 3)), 'nums': np.ones(3)}, protocol=4)
    http_server.files['/data/voc/voc_adj.pkl'] = content
    monkeypatch.setattr(label_files, 'DATA_DIR', str(tmp_path / 'data'))
    monkeypatch.setattr(label_files, 'BASE_URL', http_server.url('/data'))
    monkeypatch.setitem(label_files.OFFICIAL_SHA256, 'voc/voc_adj.pkl', hashlib.sha256(content).hexdigest())
    return tmp_path / 'data'


def test_missing_default_file_is_downloaded_and_verified(data_dir):
    path = label_files.default_file('voc', 'graph')
    assert path == str(data_dir / 'voc' / 'voc_adj.pkl')
    assert load_adjacency(path, 3)['adj'].shape == (3, 3)
    assert os.listdir(data_dir / 'voc') == ['voc_adj.pkl']


def test_the_real_pinned_file_downloads(tmp_path, monkeypatch, http_server):
    official = official_file('voc/voc_glove_word2vec.pkl')
    http_server.files['/data/voc/voc_glove_word2vec.pkl'] = open(official, 'rb').read()
    monkeypatch.setattr(label_files, 'DATA_DIR', str(tmp_path))
    monkeypatch.setattr(label_files, 'BASE_URL', http_server.url('/data'))
    assert load_word_vectors(label_files.default_file('voc', 'word'), 20).shape == (20, 300)


def test_tampered_default_file_is_removed(data_dir, http_server):
    http_server.files['/data/voc/voc_adj.pkl'] += b'tampered'
    (data_dir / 'voc').mkdir(parents=True)
    (data_dir / 'voc' / 'mine.txt').write_text('keep')
    with pytest.raises(DownloadError, match='sha256'):
        load_adjacency(label_files.default_file('voc', 'graph'))
    assert os.listdir(data_dir / 'voc') == ['mine.txt']


def test_offline_says_where_to_get_and_put_the_file(data_dir, monkeypatch, http_server):
    http_server.hang_up.add('/data/voc/voc_adj.pkl')  # as a dead host: the connection closes unanswered
    monkeypatch.setattr(label_files, 'BASE_URL', http_server.url('/data'))
    path = label_files.default_file('voc', 'graph')
    with pytest.raises(DatasetError) as e:
        load_adjacency(path)
    msg = str(e.value)
    assert '\n' not in msg and http_server.url('/data/voc/voc_adj.pkl') in msg and f'save it as {path}' in msg
    with pytest.raises(LabelFileError, match='save it as'):
        load_adjacency(path, download=False)


def test_other_missing_paths_are_not_downloaded(data_dir, http_server):
    with pytest.raises(LabelFileError, match='file not found'):
        load_adjacency(str(data_dir / 'voc' / 'my_adj.pkl'))
    assert http_server.requests == []


@pytest.mark.parametrize('ext', ['.pkl', '.npz'])
def test_save_and_load_round_trip(tmp_path, ext):
    graph = {'adj': np.arange(9).reshape(3, 3), 'nums': np.array([1, 2, 3])}
    label_files.save(str(tmp_path / ('g' + ext)), graph)
    assert (load_adjacency(str(tmp_path / ('g' + ext)), 3)['adj'] == graph['adj']).all()
    vectors = np.random.default_rng(0).normal(size=(3, 300)).astype(np.float32)
    label_files.save(str(tmp_path / ('w' + ext)), vectors)
    assert (load_word_vectors(str(tmp_path / ('w' + ext)), 3) == vectors).all()


def test_word_vectors_of_wrong_shape(tmp_path):
    path = str(tmp_path / 'w.npy')
    np.save(path, np.zeros((5, 300), np.float32))
    with pytest.raises(LabelFileError, match='5 word vectors but the dataset has 20'):
        load_word_vectors(path, 20)
    np.save(path, np.zeros((20, 299), np.float32))
    with pytest.raises(LabelFileError, match=r'shape \[20, 299\], expected \[classes, 300\]'):
        load_word_vectors(path, 20)


def test_adjacency_of_wrong_shape(tmp_path):
    path = str(tmp_path / 'g.pkl')
    label_files.save(path, {'adj': np.zeros((4, 3)), 'nums': np.zeros(4)})
    with pytest.raises(LabelFileError, match=r'expected adj \[4, 4\]'):
        load_adjacency(path)
    label_files.save(path, {'adj': np.zeros((4, 4)), 'nums': np.zeros(4)})
    with pytest.raises(LabelFileError, match='graph has 4 classes but the dataset has 20'):
        load_adjacency(path, 20)


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ('echo pwned',)
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(LabelFileError, match='refusing to load'):
        load_adjacency(str(path))


def test_image_labels_with_one_for_present_are_refused(tmp_path):
    path = str(tmp_path / 'image_label.pkl')
    label_files.save(path, {'a.jpg': [1, -1, 0]})
    with pytest.raises(LabelFileError, match="'a.jpg'.*0 \\(present\\)"):
        load_image_labels(path, 3)
    label_files.save(path, {'a.jpg': [0, -1, 0], 'b.jpg': [-1, 0, -1]})
    labels = load_image_labels(path, 3)
    assert list(labels) == ['a.jpg', 'b.jpg'] and labels['b.jpg'].tolist() == [-1, 1, -1]

import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

import voc
from errors import DatasetError
from label_files import build_adjacency, class_words, glove_word_vectors, load_adjacency, load_word_vectors
from tools import build_adj, build_word2vec, synthetic_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_adjacency_counts_only_present_labels():
    targets = np.array([[1, 1, -1],
                        [1, 0, 1],   # 0 = difficult: not present
                        [-1, 1, 1],
                        [1, 1, 1]])
    graph = build_adjacency(targets)
    assert graph['adj'].tolist() == [[0, 2, 2], [2, 0, 2], [2, 2, 0]]
    assert graph['nums'].tolist() == [3, 3, 3] and graph['adj'].dtype == np.int64


def test_build_adj_script_on_synthetic_voc(synthetic, tmp_path):
    info = synthetic('voc')
    out = str(tmp_path / 'voc_adj.pkl')
    script = os.path.join(REPO, 'tools', 'build_adj.py')
    run = subprocess.run([sys.executable, script, 'voc', info['root'], out], capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    graph = load_adjacency(out, 20)
    present = info['targets']['trainval'] == 1
    assert graph['nums'].tolist() == present.sum(0).tolist()
    i, j = 0, 10  # class 0's partner in the synthetic data
    assert graph['adj'][i, j] == (present[:, i] & present[:, j]).sum() > 0
    bad = subprocess.run([sys.executable, script, 'voc', str(tmp_path / 'no'), out], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count('\n') == 1 and 'dataset folder not found' in bad.stderr


def test_build_adj_main_for_each_dataset(synthetic, tmp_path):
    for name, split in (('coco', 'train'), ('nuswide', 'train'), ('apparel', 'train')):
        out = str(tmp_path / f'{name}.npz')
        build_adj.main([name, synthetic(name)['root'], out])
        assert load_adjacency(out)['nums'].sum() > 0


@pytest.fixture
def glove(tmp_path):
    words = sorted({w for name in voc.CLASSES for w in class_words(name)} | {'the', 'of'})
    rng = np.random.default_rng(0)
    vectors = {w: rng.normal(size=300).astype(np.float32) for w in words}
    path = tmp_path / 'glove.txt'
    path.write_text(''.join(f'{w} ' + ' '.join(f'{x:.6f}' for x in v) + '\n' for w, v in vectors.items()))
    return str(path), vectors


def test_build_word2vec_averages_multi_word_names(glove, tmp_path):
    path, vectors = glove
    out = str(tmp_path / 'voc_glove_word2vec.pkl')
    build_word2vec.main(['voc', path, out])
    loaded = load_word_vectors(out, 20)
    assert np.allclose(loaded[voc.CLASSES.index('aeroplane')], vectors['aeroplane'], atol=1e-6)
    assert np.allclose(loaded[voc.CLASSES.index('diningtable')], (vectors['dining'] + vectors['table']) / 2, atol=1e-6)


def test_glove_word_vectors_report_missing_words_and_check_the_length(glove):
    path, _ = glove
    _, missing, blind = glove_word_vectors(['a b', 'tv', 'cat a'], path)
    assert (missing, blind) == (['a', 'b'], ['a b'])
    with pytest.raises(DatasetError, match="expected \"<word> <50 numbers>\" for 'cat', found 300 numbers"):
        glove_word_vectors(['cat'], path, dim=50)


def test_synthetic_data_is_deterministic(tmp_path):
    a = synthetic_data.write_voc(str(tmp_path / 'a'), n_trainval=8, n_test=4, seed=3)
    b = synthetic_data.write_voc(str(tmp_path / 'b'), n_trainval=8, n_test=4, seed=3)
    c = synthetic_data.write_voc(str(tmp_path / 'c'), n_trainval=8, n_test=4, seed=4)
    images = os.path.join('VOCdevkit', 'VOC2007', 'JPEGImages')
    names = sorted(os.listdir(tmp_path / 'a' / images))
    assert filecmp.cmpfiles(tmp_path / 'a' / images, tmp_path / 'b' / images, names, shallow=False)[0] == names
    assert filecmp.cmp(a['graph_file'], b['graph_file'], shallow=False)
    assert not (a['targets']['trainval'] == c['targets']['trainval']).all()


def hue_histogram(path):
    hsv = np.asarray(Image.open(path).convert('HSV'), np.float32)
    coloured = hsv[..., 1] > 100
    hist = np.histogram2d(hsv[..., 0][coloured], hsv[..., 2][coloured], bins=(40, 2), range=((0, 256), (0, 256)))[0]
    return np.log1p(hist.ravel())


def test_synthetic_voc_is_learnable_and_correlated(synthetic):
    """A linear model on colour histograms separates the classes on the held-out split, far above
    the chance mAP; and partner classes co-occur far more often than independent labels would."""
    info = synthetic('voc')
    sets = {s: voc.Voc2007Classification(info['root'], s, inp_name=info['word_file'], download=False)
            for s in voc.SETS}
    x = {s: np.stack([hue_histogram(p) for p in ds.paths]) for s, ds in sets.items()}
    y = {s: ds.targets.numpy() for s, ds in sets.items()}
    aps = []
    for c in range(20):
        keep = y['test'][:, c] != 0
        if (y['test'][keep, c] == 1).any():
            model = LogisticRegression(max_iter=1000).fit(x['trainval'], y['trainval'][:, c] == 1)
            scores = model.decision_function(x['test'])
            aps.append(average_precision_score(y['test'][keep, c] == 1, scores[keep]))
    chance = (y['test'] == 1).mean()
    assert len(aps) >= 15 and np.mean(aps) > 0.8 > 4 * chance

    present = y['trainval'] == 1
    partner = np.mean([present[present[:, c], (c + 10) % 20].mean() for c in range(20) if present[:, c].any()])
    assert partner > 3 * present.mean()

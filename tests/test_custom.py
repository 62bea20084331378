"""Your own data (custom.py, demo_custom_gcn.py): the CSV layout, classes, bad input, the label
graph and word vectors made for you, and the tools on this layout."""
import csv
import json
import re
import shutil
import unicodedata

import numpy as np
import pytest
import torch

import custom
import demo_custom_gcn
import label_files
import predict
from errors import DatasetError
from tests.helpers import assert_one_line_error, custom_argv, run_demo, run_main, run_script
from tools import build_adj, build_word2vec, synthetic_data

CLASSES = synthetic_data.CUSTOM_CLASSES
SMALL = dict(n_train=24, n_val=12)  # for the training runs: a 1-epoch run only has to work
SORTED = sorted(CLASSES)
# GloVe words of the synthetic classes, 'umbrella' left out so that one class has no vector
GLOVE_WORDS = ['traffic', 'light', 'café', 'dog', 'bicycle', 'tree', 'the', 'of']


@pytest.fixture(autouse=True)
def fresh_word_cache():
    """The word-vector cache prints its line once per process; each test sees it anew."""
    label_files._text_or_fallback_vectors.cache_clear()


def write_glove(path, words=GLOVE_WORDS, dim=300):
    rng = np.random.default_rng(0)
    vectors = {w: rng.normal(size=dim).astype(np.float32) for w in words}
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(f'{w} ' + ' '.join(f'{x:.6f}' for x in v) + '\n' for w, v in vectors.items())
    return str(path), vectors


def copy_data(synthetic, tmp_path):
    info = synthetic('custom')
    root = tmp_path / 'data'
    shutil.copytree(info['root'], root)
    return info, root


def in_sorted_order(targets):
    return targets[:, [CLASSES.index(name) for name in SORTED]]


# ---------------------------------------------------------------------------------------------
# The loader

def test_loader_reads_the_layout_with_sorted_training_labels(synthetic, capsys):
    info = synthetic('custom')
    train = custom.CustomClassification(info['root'], 'train')
    val = custom.CustomClassification(info['root'], 'val')
    assert train.classes == val.classes == SORTED
    for ds, split in ((train, 'train'), (val, 'val')):
        assert (ds.targets.numpy() == in_sorted_order(info['targets'][split])).all()
    assert (val.targets == -1).all(1).any()  # rows with an empty labels field
    assert val.names[0] == 'images/val/0000.jpg' and val.paths[0].endswith('images/val/0000.jpg')
    (image, name, words), target = val[0]
    assert name == val.names[0] and image.size == (64, 64) and target.shape == (6,)
    assert torch.equal(words, torch.from_numpy(label_files.fallback_word_vectors(SORTED)))
    out = capsys.readouterr().out
    assert out.count('[words] no word file: each class gets a fixed random unit vector') == 1


def test_classes_txt_fixes_the_order(synthetic):
    info = synthetic('custom', classes_txt=True)
    val = custom.CustomClassification(info['root'], 'val')
    assert val.classes == CLASSES and (val.targets.numpy() == info['targets']['val']).all()


def test_explicit_classes_override_classes_txt(synthetic):
    info = synthetic('custom', classes_txt=True)
    given = CLASSES[::-1] + ['zebra']   # e.g. a checkpoint's, with a class this data never uses
    val = custom.CustomClassification(info['root'], 'val', classes=given)
    assert val.classes == given
    assert (val.targets.numpy()[:, :6] == info['targets']['val'][:, ::-1]).all() and (val.targets[:, 6] == -1).all()
    with pytest.raises(DatasetError, match=r"val.csv:\d+: label '.*' is not a class: it is not among the 2 classes "
                                           r"given \(the checkpoint's\)"):
        custom.CustomClassification(info['root'], 'val', classes=['dog', 'tree'])


def test_names_are_stripped_and_nfc_normalised_bom_and_header_case_accepted(synthetic, tmp_path):
    _, root = copy_data(synthetic, tmp_path)
    decomposed = unicodedata.normalize('NFD', 'café')
    assert decomposed != 'café'
    (root / 'val.csv').write_text(f'\ufeffFilepath, Labels\nimages/val/0000.jpg, {decomposed} | dog \n'
                                  f'images/val/0001.jpg,\n', encoding='utf-8')
    val = custom.CustomClassification(str(root), 'val')
    assert val.targets.tolist() == [[-1, 1, 1, -1, -1, -1], [-1] * 6]


def test_a_class_name_may_start_with_a_bracket(synthetic, tmp_path):
    """['a', 'b'] lists are read only in the one-CSV (ASL) form."""
    _, root = copy_data(synthetic, tmp_path)
    edit_line(root / 'train.csv', 2, 'images/train/0000.jpg,[misc]|dog')
    assert custom.CustomClassification(str(root), 'train').classes == ['[misc]'] + SORTED


def test_single_csv_form_matches_the_nuswide_loader(synthetic):
    """The ASL/NUS-WIDE form (one CSV: filepath,label,split_name with ['a', 'b'] labels)."""
    import nuswide
    info = synthetic('nuswide')
    mine = custom.CustomClassification(info['root'], 'val', classes=nuswide.CLASSES)
    theirs = nuswide.NusWideClassification(info['root'], 'val', inp_name=info['word_file'])
    assert mine.paths == theirs.paths and torch.equal(mine.targets, theirs.targets)
    assert mine.source.endswith(nuswide.CSV_NAME)
    # without given classes, a val label that no training row has is named with its line
    with pytest.raises(DatasetError, match=r"nus_wid_data.csv:\d+: label '\w+' is not a class: it never occurs "
                                           r"in the train rows of nus_wid_data.csv"):
        custom.CustomClassification(info['root'], 'val')


def edit_line(path, lineno, text):
    lines = path.read_text(encoding='utf-8').splitlines()
    lines[lineno - 1] = text
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')


def val_label_never_in_training(root):
    edit_line(root / 'val.csv', 4, 'images/val/0002.jpg,dog|zebra')


def val_image_absent(root):
    (root / 'images' / 'val' / '0004.jpg').unlink()


# (mutation of a copy of the synthetic folder, the error it must give)
BAD_INPUTS = {
    'val label never in training': (
        val_label_never_in_training,
        r"val.csv:4: label 'zebra' is not a class: it never occurs in train.csv \(the 6 classes: 'bicycle', 'café'"),
    'train label not in classes.txt': (
        lambda root: (root / 'classes.txt').write_text('\n'.join(SORTED[1:]) + '\n', encoding='utf-8'),
        r"train.csv:\d+: label 'bicycle' is not a class: it is not in .*classes.txt"),
    'val image absent': (val_image_absent, r'val.csv:6: image images/val/0004.jpg not found in .*\(1 of 30 listed'),
    'duplicated image row': (
        lambda root: edit_line(root / 'val.csv', 5, 'images/val/0001.jpg,dog'),
        r'val.csv:5: image images/val/0001.jpg is already listed on line 3'),
    'misspelled header': (
        lambda root: edit_line(root / 'val.csv', 1, 'filepath,label'),
        r"val.csv:1: header is 'filepath,label', expected \"filepath,labels\""),
    'missing header': (
        lambda root: edit_line(root / 'train.csv', 1, 'images/train/0000.jpg,dog'),
        r"train.csv:1: header is 'images/train/0000.jpg,dog', expected \"filepath,labels\""),
    'empty val split': (
        lambda root: (root / 'val.csv').write_text('filepath,labels\n'),
        r'val.csv: no images in data val'),
    'empty train split': (
        lambda root: (root / 'train.csv').write_text('filepath,labels\n'),
        r'train.csv: no images in train'),
    'val.csv not UTF-8': (
        lambda root: (root / 'val.csv').write_bytes(
            (root / 'val.csv').read_text(encoding='utf-8').encode('latin-1')),
        r'val.csv:\d+: not UTF-8 text \(byte 0xe9\)'),
    'classes.txt not UTF-8': (
        lambda root: (root / 'classes.txt').write_bytes('dog\ncafé\n'.encode('cp1252')),
        r'classes.txt:2: not UTF-8 text'),
    'wrong field count': (
        lambda root: edit_line(root / 'val.csv', 3, 'images/val/0001.jpg,dog,tree'),
        r'val.csv:3: expected 2 fields \(filepath,labels\), found 3; separate labels with "\|"'),
    'a row short of the extra columns': (
        lambda root: (edit_line(root / 'val.csv', 1, 'filepath,labels,dog,tree'),
                      edit_line(root / 'val.csv', 3, 'images/val/0001.jpg,dog,0.9')),
        r'val.csv:2: expected 4 fields \(filepath,labels,...\), found 2; write each row as "filepath,labels,..."'),
    'semicolon-separated val.csv': (
        lambda root: (root / 'val.csv').write_text(
            (root / 'val.csv').read_text(encoding='utf-8').replace(',', ';'), encoding='utf-8'),
        r"val.csv:1: header is 'filepath;labels': fields are separated by ';', but the separator must be a comma"),
    'tab-separated train.csv': (
        lambda root: (root / 'train.csv').write_text(
            (root / 'train.csv').read_text(encoding='utf-8').replace(',', '\t'), encoding='utf-8'),
        r"train.csv:1: header is 'filepath\\tlabels': fields are separated by tabs, but the separator must be a comma"),
    'semicolon in one row': (
        lambda root: edit_line(root / 'val.csv', 3, 'images/val/0001.jpg;dog'),
        r"val.csv:3: expected 2 fields \(filepath,labels\), found 1; fields are separated by ';', but the separator "
        r"must be a comma"),
    'train labels differ in case': (
        lambda root: edit_line(root / 'train.csv', 2, 'images/train/0000.jpg,Dog'),
        r"train.csv:\d+: label 'dog' differs only in case from 'Dog' on line 2, which would make them two classes; "
        r"unify the spelling"),
    'val label differs in case': (
        lambda root: edit_line(root / 'val.csv', 3, 'images/val/0001.jpg,Dog'),
        r"val.csv:3: label 'Dog' is not a class: it never occurs in train.csv; class 'dog' differs only in case: "
        r"unify the spelling$"),
    'classes.txt names differ in case': (
        lambda root: (root / 'classes.txt').write_text('\n'.join(SORTED + ['Tree']) + '\n', encoding='utf-8'),
        r"classes.txt:7: class 'Tree' differs only in case from 'tree' on line 5"),
    'train label holds a comma': (
        lambda root: edit_line(root / 'train.csv', 2, 'images/train/0000.jpg,"dog, tree"'),
        r"train.csv:2: label 'dog, tree' holds a comma; separate labels with \"\|\" \(dog\|tree\): a class name "
        r"cannot hold a comma"),
    'val label holds a comma': (
        lambda root: edit_line(root / 'val.csv', 3, 'images/val/0001.jpg,"dog,tree"'),
        r"val.csv:3: label 'dog,tree' is not a class: it never occurs in train.csv; separate labels with \"\|\" "
        r"\(dog\|tree\)"),
    'classes.txt name holds a comma': (
        lambda root: (root / 'classes.txt').write_text('dog,tree\n', encoding='utf-8'),
        r"classes.txt:1: class 'dog,tree' holds a comma; list one class per line"),
    'windows path not found either way': (
        lambda root: (val_image_absent(root), edit_line(root / 'val.csv', 6, 'images\\val\\0004.jpg,dog')),
        r'val.csv:6: image images\\val\\0004.jpg not found in .*; filepath is relative to the dataset folder, '
        r'with "/" or "\\" between folders'),
    'empty label name': (
        lambda root: edit_line(root / 'val.csv', 3, 'images/val/0001.jpg,dog||tree'),
        r"val.csv:3: empty label name in 'dog\|\|tree'"),
    'class listed twice': (
        lambda root: (root / 'classes.txt').write_text('\n'.join(SORTED + ['dog']) + '\n', encoding='utf-8'),
        r"classes.txt:7: class 'dog' is already listed on line 3"),
    'no val.csv': (lambda root: (root / 'val.csv').unlink(), r'val.csv: not found; expected val.csv with header'),
}


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file(case, synthetic, tmp_path):
    _, root = copy_data(synthetic, tmp_path)
    mutate, pattern = BAD_INPUTS[case]
    mutate(root)
    with pytest.raises(DatasetError) as error:
        for split in ('train', 'val'):
            custom.CustomClassification(str(root), split)
    assert re.search(pattern, error.value.line) and '\n' not in str(error.value), str(error.value)


def test_windows_paths_are_found(synthetic, tmp_path):
    _, root = copy_data(synthetic, tmp_path)
    expected = custom.CustomClassification(str(root), 'val')
    text = (root / 'val.csv').read_text(encoding='utf-8')
    (root / 'val.csv').write_text(text.replace('images/val/', 'images\\val\\'), encoding='utf-8')
    val = custom.CustomClassification(str(root), 'val')
    assert val.paths == expected.paths and torch.equal(val.targets, expected.targets)
    assert val.names[0] == 'images\\val\\0000.jpg'  # as listed


def shared_warnings(out):
    return [line for line in out.splitlines() if line.startswith('[dataset] warning:')]


def test_an_image_in_both_splits_is_a_warning(synthetic, tmp_path, capsys):
    _, root = copy_data(synthetic, tmp_path)
    custom.CustomClassification(str(root), 'train')
    custom.CustomClassification(str(root), 'val')
    assert shared_warnings(capsys.readouterr().out) == []
    with open(root / 'val.csv', 'a', encoding='utf-8') as f:  # 4 training images, one with the other separator
        f.write('images/train/0000.jpg,dog\nimages/train/0001.jpg,\n./images/train/0002.jpg,tree\n'
                'images\\train\\0003.jpg,dog\n')
    val = custom.CustomClassification(str(root), 'val')
    assert len(val) == 34
    assert shared_warnings(capsys.readouterr().out) == [
        '[dataset] warning: 4 of the 34 images of val.csv are also in train.csv (images/train/0000.jpg, '
        'images/train/0001.jpg, ./images/train/0002.jpg, ...); scores on them do not measure generalisation: '
        'list each image in one split only']
    (root / 'train.csv').unlink()  # evaluating a checkpoint on val.csv alone: nothing to compare with
    custom.CustomClassification(str(root), 'val', classes=SORTED)
    assert shared_warnings(capsys.readouterr().out) == []


def test_an_image_in_both_splits_of_one_csv_is_a_warning(synthetic, tmp_path, capsys):
    import nuswide
    info = synthetic('nuswide')
    root = shutil.copytree(info['root'], tmp_path / 'data')
    csv_path = root / nuswide.CSV_NAME
    train_row = next(line for line in csv_path.read_text().splitlines() if line.endswith(',train'))
    with open(csv_path, 'a') as f:
        f.write(train_row[:-len('train')] + 'val\n')
    val = custom.CustomClassification(str(root), 'val', classes=nuswide.CLASSES)
    image = train_row.split(',')[0]
    assert val.names[-1] == image and shared_warnings(capsys.readouterr().out) == [
        f'[dataset] warning: 1 of the {len(val)} images of the val rows of {nuswide.CSV_NAME} are also in the train '
        f'rows of {nuswide.CSV_NAME} ({image}); scores on them do not measure generalisation: list each image in one '
        f'split only']


def test_a_checkpoints_classes_are_taken_as_they_are(synthetic, tmp_path):
    """Classes fixed before these checks (a checkpoint's) may differ in case or hold a comma."""
    _, root = copy_data(synthetic, tmp_path)
    with open(root / 'val.csv', 'w', encoding='utf-8', newline='') as f:
        csv.writer(f).writerows([custom.HEADER, ['images/val/0000.jpg', 'Dog|dog,tree'],
                                 ['images/val/0001.jpg', 'dog']])
    val = custom.CustomClassification(str(root), 'val', classes=['dog', 'Dog', 'dog,tree'])
    assert val.targets.tolist() == [[-1, 1, 1], [1, -1, -1]]


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_through_the_demo_script_writes_nothing(case, synthetic, tmp_path, capsys):
    _, root = copy_data(synthetic, tmp_path)
    mutate, pattern = BAD_INPUTS[case]
    mutate(root)
    before = sorted(p.relative_to(root) for p in root.rglob('*'))
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, custom_argv(root, tmp_path / 'out')) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and re.search(pattern, errors[0]), errors
    assert not (tmp_path / 'out').exists() and sorted(p.relative_to(root) for p in root.rglob('*')) == before


@pytest.mark.slow
def test_bad_val_input_as_a_process_exits_2_naming_val_csv(synthetic, tmp_path):
    """In a process of its own, as users run it (BAD_INPUTS run main in this process)."""
    _, root = copy_data(synthetic, tmp_path)
    val_label_never_in_training(root)
    result = run_script('demo_custom_gcn.py', *custom_argv(root, tmp_path / 'out'))
    assert_one_line_error(result, r'^error: .*val\.csv:\d+: ')


@pytest.mark.slow
def test_labels_differing_in_case_as_a_process_exit_2(synthetic, tmp_path):
    _, root = copy_data(synthetic, tmp_path)
    BAD_INPUTS['train labels differ in case'][0](root)
    result = run_main('demo_custom_gcn.py', *custom_argv(root, tmp_path / 'out'))
    assert_one_line_error(result, r"^error: .*train\.csv:\d+: label 'dog' differs only in case from 'Dog' on line 2")


# ---------------------------------------------------------------------------------------------
# Word vectors

def test_fallback_vectors_are_unit_fixed_per_name_and_tell_classes_apart():
    vectors = label_files.fallback_word_vectors(SORTED)
    assert vectors.shape == (6, 300) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-6)
    # a class's vector depends on its name only, not on the other classes or their order
    assert np.array_equal(label_files.fallback_word_vectors(['zebra', 'café'])[1], vectors[SORTED.index('café')])
    cosines = vectors @ vectors.T - np.eye(6)
    assert np.abs(cosines).max() < 0.3


def test_glove_text_gives_mean_of_words_and_reports_missing(synthetic, tmp_path, capsys):
    info = synthetic('custom')
    path, glove = write_glove(tmp_path / 'glove.txt')
    train = custom.CustomClassification(info['root'], 'train', inp_name=path)
    custom.CustomClassification(info['root'], 'val', inp_name=path)
    words = train.inp.numpy()
    np.testing.assert_allclose(words[SORTED.index('traffic light')], (glove['traffic'] + glove['light']) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(words[SORTED.index('café')], glove['café'], atol=1e-6)
    # 'umbrella' has no vector: its fallback direction, at the mean norm of the others
    found = [SORTED.index(n) for n in SORTED if n != 'umbrella']
    umbrella = words[SORTED.index('umbrella')]
    assert np.linalg.norm(umbrella) == pytest.approx(np.linalg.norm(words[found], axis=1).mean(), rel=1e-5)
    np.testing.assert_allclose(umbrella / np.linalg.norm(umbrella), label_files.fallback_word_vectors(['umbrella'])[0],
                               atol=1e-6)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('[words]')]
    assert lines == [f"[words] 6 class vectors from the GloVe text file {path}; no vector for 'umbrella'; "
                     f"'umbrella' got the fallback vector (no word found)"]


def test_glove_text_errors(tmp_path):
    path, _ = write_glove(tmp_path / 'glove.txt', dim=50)
    with pytest.raises(DatasetError, match=r"glove.txt:4: expected \"<word> <300 numbers>\" for 'dog', found 50"):
        label_files.glove_word_vectors(['dog'], path)
    bad = tmp_path / 'latin1.txt'
    bad.write_bytes('dog 0.1\ncafé 0.2\n'.encode('latin-1'))
    with pytest.raises(DatasetError, match=r'latin1.txt:2: not UTF-8'):
        label_files.glove_word_vectors(['dog'], str(bad), dim=1)


def test_word_file_kinds_are_told_apart(tmp_path):
    vectors = np.ones((2, 300), np.float32)
    label_files.save(str(tmp_path / 'w.pkl'), vectors)
    label_files.save(str(tmp_path / 'w_pickle_no_ext'), vectors)
    np.save(tmp_path / 'w.npy', vectors)
    path, _ = write_glove(tmp_path / 'glove.6B.300d.txt')
    assert [label_files.is_glove_text(str(tmp_path / n)) for n in ('w.pkl', 'w_pickle_no_ext', 'w.npy')] == [False] * 3
    assert label_files.is_glove_text(path)
    for name in ('w.pkl', 'w_pickle_no_ext', 'w.npy'):
        assert np.array_equal(label_files.class_word_vectors(str(tmp_path / name), ['a', 'b']), vectors)


def test_glove_text_works_for_an_official_dataset_too(synthetic, tmp_path):
    import voc
    info = synthetic('voc')
    words = sorted({w for name in voc.CLASSES for w in label_files.class_words(name)})
    path, glove = write_glove(tmp_path / 'glove.txt', words)
    ds = voc.Voc2007Classification(info['root'], 'test', inp_name=path, download=False)
    np.testing.assert_allclose(ds.inp[voc.CLASSES.index('pottedplant')], (glove['potted'] + glove['plant']) / 2,
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The demo script end to end

def test_help_and_defaults_of_the_demo_script(capsys):
    import cli
    with pytest.raises(SystemExit):
        cli.get_args_parser(demo_custom_gcn.DATASET).parse_args(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'built from the training labels and saved as label_graph.npz in --save-dir' in text
    assert 'or a GloVe text file' in text
    args = cli.get_args_parser(demo_custom_gcn.DATASET).parse_args(['somewhere'])
    assert args.graph_file is None and args.word_file is None and args.pool_ratio == 0.2


@pytest.fixture(scope='module')
def glove_trained(tmp_path_factory, synthetic):
    """The same with -word_file pointing at a GloVe text file."""
    info = synthetic('custom', **SMALL)
    label_files._text_or_fallback_vectors.cache_clear()
    root = tmp_path_factory.mktemp('custom_glove_run')
    path, _ = write_glove(root / 'glove.6B.300d.txt')
    code, out = run_demo(demo_custom_gcn, custom_argv(info['root'], root / 'out', '-word_file', path))
    assert code == 0, out
    return info, root / 'out', out, path


def evaluate_argv(info, save, out_dir):
    """-e --resume with no data or model flags: only the folder and run options."""
    return [info['root'], '-e', '--resume', save / 'model_best.pth.tar', '-j', '0', '--device', 'cpu',
            '--save-dir', out_dir]


@pytest.mark.slow
def test_training_builds_the_graph_names_the_classes_and_announces_the_vectors(custom_run):
    info, save, out = custom_run
    graph_file = save / custom.GRAPH_NAME
    assert f'saved to {graph_file}' in out and out.count('[graph]') == 1
    assert out.count('[words] no word file') == 1
    graph = label_files.load_adjacency(str(graph_file), 6)
    expected = label_files.build_adjacency(in_sorted_order(info['targets']['train']))
    assert np.array_equal(graph['adj'], expected['adj']) and np.array_equal(graph['nums'], expected['nums'])
    record = json.loads((save / 'eval_epoch001.json').read_text())
    assert [row['class'] for row in record['per_class_ap']] == SORTED


@pytest.mark.slow
def test_evaluate_with_no_data_flags(custom_run, tmp_path):
    info, save, _ = custom_run
    code, out = run_demo(demo_custom_gcn, evaluate_argv(info, save, tmp_path))
    assert code == 0, out
    evaluated = json.loads((tmp_path / 'eval_model_best.json').read_text())
    trained_record = json.loads((save / 'eval_epoch001.json').read_text())
    assert [row['class'] for row in evaluated['per_class_ap']] == SORTED
    assert evaluated['mAP'] == pytest.approx(trained_record['mAP'], abs=1e-6)


@pytest.mark.slow
def test_predict_names_the_custom_classes(custom_run, capsys):
    info, save, _ = custom_run
    image = f"{info['root']}/images/val/0000.jpg"
    assert predict.main([image, '--resume', str(save / 'model_best.pth.tar'), '--threshold', '0', '--top-k', '6',
                         '--device', 'cpu', '--no-download']) == 0
    shown = [line[2:].rsplit(' ', 1)[0].strip() for line in capsys.readouterr().out.splitlines()
             if line.startswith('  ')]
    assert sorted(shown) == SORTED


@pytest.mark.slow
def test_predictions_csv_feeds_back_as_training_data(custom_run, tmp_path, monkeypatch):
    """docs/using.md: predict.py --out writes the train.csv format, so its CSV, run in the data folder
    on paths relative to it, is train.csv and val.csv of a new run (the probability columns ignored)."""
    info, save, _ = custom_run
    root = tmp_path / 'reviewed'
    shutil.copytree(f"{info['root']}/images", root / 'images')
    monkeypatch.chdir(root)
    for split in ('train', 'val'):   # threshold 0: every class is a label, so every class is in train.csv
        assert predict.main([f'images/{split}', '--resume', str(save / 'model_best.pth.tar'), '--out', f'{split}.csv',
                             '--threshold', '0', '-j', '0', '--device', 'cpu', '--no-download']) == 0
    header = (root / 'train.csv').read_text(encoding='utf-8').splitlines()[0]
    assert header == 'filepath,labels,' + ','.join(SORTED)
    code, out = run_demo(demo_custom_gcn, custom_argv(root, tmp_path / 'run'))
    assert code == 0, out
    for split in ('train', 'val'):   # said once per file, though each is read several times
        assert out.count(f'[dataset] {root / split}.csv: reading filepath,labels; the 6 other columns '
                         f'({",".join(SORTED[:3])},...) are ignored') == 1, out
    record = json.loads((tmp_path / 'run' / 'eval_epoch001.json').read_text())
    assert [row['class'] for row in record['per_class_ap']] == SORTED
    assert record['num_samples'] == len(list((root / 'images' / 'val').iterdir()))


@pytest.mark.slow
def test_training_with_a_glove_text_file(glove_trained):
    _, save, out, path = glove_trained
    assert f"[words] 6 class vectors from the GloVe text file {path}; no vector for 'umbrella'" in out
    record = json.loads((save / 'eval_epoch001.json').read_text())
    assert [row['class'] for row in record['per_class_ap']] == SORTED


@pytest.mark.slow
def test_glove_run_evaluates_with_its_own_vectors(glove_trained, tmp_path):
    """-e --resume without -word_file (nor even the dataset folder) uses the vectors the model was
    trained with: the checkpoint's."""
    info, save, _, _ = glove_trained
    code, out = run_demo(demo_custom_gcn, evaluate_argv(info, save, tmp_path)[1:])
    assert code == 0, out
    trained_ap = [row['ap'] for row in json.loads((save / 'eval_epoch001.json').read_text())['per_class_ap']]
    evaluated_ap = [row['ap'] for row in json.loads((tmp_path / 'eval_model_best.json').read_text())['per_class_ap']]
    assert evaluated_ap == pytest.approx(trained_ap, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Tools

def test_build_adj_and_build_word2vec_on_the_custom_layout(synthetic, tmp_path, capsys):
    info = synthetic('custom')
    build_adj.main(['custom', info['root'], str(tmp_path / 'adj.npz')])
    graph = label_files.load_adjacency(str(tmp_path / 'adj.npz'), 6)
    assert graph['nums'].tolist() == (in_sorted_order(info['targets']['train']) == 1).sum(0).tolist()
    path, _ = write_glove(tmp_path / 'glove.txt')
    build_word2vec.main(['custom', path, str(tmp_path / 'words.npy'), '--data', info['root']])
    assert f'{path}: no vector for umbrella; fallback vector for umbrella' in capsys.readouterr().out
    loader = custom.CustomClassification(info['root'], 'val', inp_name=path)
    assert np.array_equal(label_files.load_word_vectors(str(tmp_path / 'words.npy'), 6), loader.inp.numpy())
    with pytest.raises(SystemExit):
        build_word2vec.main(['custom', path, str(tmp_path / 'w.npy')])  # no --data


def test_synthetic_custom_layout(tmp_path):
    a = synthetic_data.write_custom(str(tmp_path / 'a'), n_train=8, n_val=4, seed=1)
    synthetic_data.write_custom(str(tmp_path / 'b'), n_train=8, n_val=4, seed=1)   # the same again
    assert any(' ' in c for c in a['classes']) and any(not c.isascii() for c in a['classes'])
    train = (tmp_path / 'a' / 'train.csv').read_text(encoding='utf-8')
    assert train == (tmp_path / 'b' / 'train.csv').read_text(encoding='utf-8')
    assert train.splitlines()[0] == 'filepath,labels' and len(train.splitlines()) == 9
    assert not (tmp_path / 'a' / 'classes.txt').exists()
    synthetic_data.main(['custom', str(tmp_path / 'c'), '--seed', '1'])
    assert (tmp_path / 'c' / 'val.csv').is_file()

import csv
import os
import shutil

import pytest

import nuswide
from errors import DatasetError


def make(root, split='train'):
    return nuswide.NusWideClassification(root, split, inp_name=os.path.join(root, 'nuswide_glove_word2vec.pkl'),
                                         download=False)


@pytest.fixture
def root(synthetic, tmp_path):
    return shutil.copytree(synthetic('nuswide')['root'], str(tmp_path / 'nus'))


def rows(root):
    return list(csv.reader(open(os.path.join(root, nuswide.CSV_NAME), newline='')))


def write_rows(root, table):
    with open(os.path.join(root, nuswide.CSV_NAME), 'w', newline='') as f:
        csv.writer(f).writerows(table)


def test_every_row_counts_and_empty_label_lists_are_images(root):
    table = rows(root)
    assert table[0] == ['filepath', 'label', 'split_name']
    for split in nuswide.SPLITS:
        ds = make(root, split)
        assert ds.names == [r[0] for r in table[1:] if r[2] == split]  # the first row of a split included
    empty = [r[0] for r in table[1:] if r[1] == '[]' and r[2] == 'train']
    assert empty, 'the writer should produce some unlabelled images'
    ds = make(root)
    assert (ds.targets[ds.names.index(empty[0])] == -1).all()


def test_concepts_in_the_official_order(root):
    table = rows(root)
    ds = make(root)
    first = table[1] if table[1][2] == 'train' else next(r for r in table[1:] if r[2] == 'train')
    wanted = nuswide.parse_label_list(first[1])
    assert [nuswide.CLASSES[i] for i in (ds.targets[0] == 1).nonzero().flatten()] == \
        sorted(wanted, key=nuswide.CLASSES.index)
    assert nuswide.CLASSES[:3] == ['clouds', 'sky', 'person'] and nuswide.CLASSES[-1] == 'map'


def test_file_without_header_keeps_its_first_row(root):
    table = rows(root)
    write_rows(root, table[1:])
    assert make(root, table[1][2]).names[0] == table[1][0]


@pytest.mark.parametrize('row, why', [
    (['images/x.jpg', "['sky']"], 'expected "image path'),
    (['images/x.jpg', "['sky'", 'train'], 'expected "image path'),
    (['images/x.jpg', "['sky']", 'test'], 'expected "image path'),
    (['images/x.jpg', "['sky', 'unicorns']", 'train'], "unknown concept 'unicorns'"),
])
def test_malformed_row_names_file_and_line(root, row, why):
    table = rows(root)
    table.insert(4, row)
    write_rows(root, table)
    with pytest.raises(DatasetError) as e:
        make(root)
    assert f'{os.path.join(root, nuswide.CSV_NAME)}:5: {why}' in str(e.value) and '\n' not in str(e.value)


def test_missing_csv_and_empty_split(root):
    table = rows(root)
    write_rows(root, [r for r in table if r[2] != 'val'])
    with pytest.raises(DatasetError, match='no images in NUS-WIDE val'):
        make(root, 'val')
    os.remove(os.path.join(root, nuswide.CSV_NAME))
    with pytest.raises(DatasetError, match='nus_wid_data.csv: not found; get the ASL distribution'):
        make(root)

"""predict.py: files, folders and lists of images, batched, printed or written to CSV; bad input."""
import csv
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import attention_sheet
import label_files
import predict
import voc
from dataset_base import read_image
from models import MSRN
from util import eval_transform

SIZE = 64


@pytest.fixture(scope='module')
def trained_checkpoint(tmp_path_factory):
    """A checkpoint with the official keys only (as the released ones), ResNet-18, synthetic VOC graph."""
    from tools.synthetic_data import write_voc
    root = tmp_path_factory.mktemp('predict')
    info = write_voc(str(root / 'voc'), n_trainval=20, n_test=3, image_size=96)
    graph = label_files.load_adjacency(info['graph_file'], 20)
    torch.manual_seed(0)
    model = MSRN(20, 0.2, 'resnet18', graph)
    path = root / 'checkpoint.pth.tar'
    torch.save({'epoch': 1, 'arch': 'resnet18', 'state_dict': model.state_dict(), 'best_score': 50.0}, path)
    images = sorted((root / 'voc' / 'VOCdevkit' / 'VOC2007' / 'JPEGImages').iterdir())[:2]
    return info, path, images, model.eval()


def run(checkpoint, *argv):
    info, path = checkpoint[:2]
    return predict.main([*map(str, argv), '--resume', str(path), '-graph_file', info['graph_file'], '-word_file',
                         info['word_file'], '--image-size', str(SIZE), '-j', '0', '--device', 'cpu'])


@pytest.fixture(scope='module')
def ours(custom_run):
    """A checkpoint of ours (custom_run's best: 6 classes, 64 px), its classes and the model and word
    vectors it holds, and two of the dataset's images."""
    info, save, _ = custom_run
    path = save / 'model_best.pth.tar'
    state = torch.load(path, weights_only=True)
    graph = {k: state[k].numpy() for k in ('adj', 'nums')}
    model = MSRN(len(state['classes']), 0.2, 'resnet18', graph).eval()
    model.load_state_dict(state['state_dict'])
    images = [os.path.join(info['root'], 'images', 'val', f'{i:04d}.jpg') for i in range(2)]
    return path, state['classes'], model, state['word_vectors'], images


def run_ours(ours, *argv):
    return predict.main([*map(str, argv), '--resume', str(ours[0]), '-j', '0', '--device', 'cpu'])


def model_probabilities(model, words, image_path):
    """The model's probabilities for one image, computed here as evaluation does."""
    transform = eval_transform(SIZE, model.image_normalization_mean, model.image_normalization_std)
    with torch.no_grad():
        logits, _ = model(transform(read_image(str(image_path)))[None], words[None])
    return torch.sigmoid(logits[0])


def test_prints_each_images_top_labels_and_writes_attention_maps(trained_checkpoint, tmp_path, capsys):
    images = trained_checkpoint[2]
    assert run(trained_checkpoint, *images, '--threshold', '0', '--top-k', '3', '--attention', tmp_path / 'maps') == 0
    out = capsys.readouterr().out
    blocks = out.split(str(images[1]))
    assert str(images[0]) in blocks[0]
    shown = re.findall(r'^  (\w+)\s+(\d\.\d{3})$', blocks[0], re.M)
    info, _, _, model = trained_checkpoint
    words = torch.from_numpy(label_files.load_word_vectors(info['word_file']))
    expected = model_probabilities(model, words, images[0]).argsort(descending=True)[:3]
    assert [name for name, _ in shown] == [voc.CLASSES[i] for i in expected]  # the model's own top 3
    for image in images:
        png = tmp_path / 'maps' / f'{image.name}.attention.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        # threshold 0: a row for each of the 20 labels, the image and its three levels side by side, the legend
        width, height = Image.open(image).size
        tile = attention_sheet.TILE
        assert Image.open(png).size == (4 * tile, 20 * (attention_sheet.CAPTION_HEIGHT + round(height * tile / width))
                                        + attention_sheet.LEGEND_HEIGHT)
    assert f"=> attention maps in {tmp_path / 'maps'}/" in out


def test_attention_maps_are_distributions_over_positions(trained_checkpoint):
    info, _, _, model = trained_checkpoint
    words = torch.from_numpy(label_files.load_word_vectors(info['word_file']))
    with torch.no_grad():
        features = model.resnet_101(torch.randn(2, 3, 128, 128))
        maps = model.attention_maps(features, words, [3, 7, 11])
    assert [tuple(m.shape) for m in maps] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    for m in maps:
        torch.testing.assert_close(m.sum((-1, -2)), torch.ones(2, 3))


def test_attention_maps_of_images_with_the_same_name_do_not_overwrite_each_other(ours, tmp_path, capsys):
    source = np.asarray(read_image(ours[4][0]))
    for name in ('a/x.png', 'b/x.png', 'a/x.jpg'):
        (tmp_path / 'pics' / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source).save(tmp_path / 'pics' / name)
    assert run_ours(ours, tmp_path / 'pics', '--attention', tmp_path / 'maps') == 0
    written = sorted(str(p.relative_to(tmp_path / 'maps')) for p in (tmp_path / 'maps').rglob('*.png'))
    assert written == ['a/x.jpg.attention.png', 'a/x.png.attention.png', 'b/x.png.attention.png']


def test_no_label_reaching_the_threshold_says_so(ours, capsys):
    assert run_ours(ours, ours[4][0], '--threshold', '1') == 0
    assert re.search(r'no label reaches its threshold; best: [\w ]+ \d\.\d{3}', capsys.readouterr().out)


@pytest.fixture(scope='module')
def photo_folder(ours, tmp_path_factory):
    """104 images in nested folders (from the synthetic images, flipped and cropped), one corrupt,
    one truncated, and a text file; returns (folder, readable images in walk order)."""
    root = tmp_path_factory.mktemp('photos')
    sources = [np.asarray(read_image(p)) for p in ours[4]]
    rng = np.random.default_rng(0)
    for i in range(104):
        pixels = sources[i % 2][:, ::-1] if i % 3 else sources[i % 2]
        top, left = rng.integers(0, 14, 2)
        folder = root / ('holiday' if i < 50 else 'work/2024')
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(pixels[top:top + 50, left:left + 50])).save(folder / f'img_{i:03d}.jpg')
    (root / 'holiday' / 'img_007.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    truncated = (root / 'work/2024/img_090.jpg').read_bytes()
    (root / 'work/2024/img_090.jpg').write_bytes(truncated[:len(truncated) // 2])
    (root / 'holiday' / 'notes.txt').write_text('not an image')
    readable = [os.path.join(folder, name) for folder, _, names in sorted(os.walk(root)) for name in sorted(names)
                if name.endswith('.jpg') and name not in ('img_007.jpg', 'img_090.jpg')]
    return root, readable


def read_csv(path):
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_a_folder_to_csv_in_batches(ours, photo_folder, tmp_path, capsys):
    root, readable = photo_folder
    assert run_ours(ours, root, '--out', tmp_path / 'b16.csv', '-b', '16') == 0
    out, err = capsys.readouterr()
    header, rows = read_csv(tmp_path / 'b16.csv')
    assert header == ['filepath', 'labels', *ours[1]]
    assert [row[0] for row in rows] == sorted(readable) and len(rows) == 102
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and warnings[0].startswith(f"warning: skipped {root / 'holiday' / 'img_007.jpg'}: ")
    assert warnings[1].startswith(f"warning: skipped {root / 'work' / '2024' / 'img_090.jpg'}: ")
    assert 'truncated' in warnings[1].lower()
    assert '=> 102 images predicted' in out and '=> 2 of 104 images skipped' in out
    for row in rows:   # labels: the classes at or above 0.5, most probable first
        probabilities = np.array(row[2:], dtype=float)
        assert all(re.fullmatch(r'\d\.\d{6}', p) for p in row[2:])
        above = [ours[1][k] for k in np.argsort(-probabilities, kind='stable') if probabilities[k] >= 0.5]
        assert row[1].split('|') == above if above else row[1] == ''
    expected = model_probabilities(ours[2], ours[3], rows[5][0]).numpy()
    np.testing.assert_allclose(np.array(rows[5][2:], dtype=float), expected, atol=1e-5)

    assert run_ours(ours, root, '--out', tmp_path / 'b1.csv', '-b', '1') == 0
    _, rows_b1 = read_csv(tmp_path / 'b1.csv')
    assert [row[:2] for row in rows_b1] == [row[:2] for row in rows]   # batch size changes nothing
    np.testing.assert_allclose(np.array([row[2:] for row in rows_b1], dtype=float),
                               np.array([row[2:] for row in rows], dtype=float), atol=1e-5)


def test_a_list_of_paths_relative_to_the_list(ours, photo_folder, tmp_path, capsys):
    root, readable = photo_folder
    listed = readable[10:13]
    (root / 'batch.txt').write_text('\n'.join(os.path.relpath(p, root) for p in listed) + '\n\n')
    assert run_ours(ours, f"@{root / 'batch.txt'}", ours[4][0], '--out', tmp_path / 'l.csv') == 0
    _, rows = read_csv(tmp_path / 'l.csv')
    assert [row[0] for row in rows] == [os.path.join(str(root), os.path.relpath(p, root)) for p in listed] + \
        [ours[4][0]]


@pytest.mark.parametrize('argv, message', [
    (['--threshold', '-0.2'], r'--threshold -0.2 is not a probability: give a value in \[0, 1\]'),
    (['--threshold', '0.3', '--thresholds', 'thresholds.json'], r'give --threshold .* or --thresholds .*not both'),
], ids=['threshold', 'both'])
def test_bad_thresholds_are_one_line(ours, argv, message, capsys):
    assert run_ours(ours, ours[4][0], *argv) == 2
    assert re.fullmatch(f'error: {message}.*\n', capsys.readouterr().err)


def test_amp_dtype_turns_autocast_on_as_in_training(ours, tmp_path, capsys):
    image = ours[4][0]
    assert run_ours(ours, image, '--amp-dtype', 'float16') == 2
    assert capsys.readouterr().err == ('error: --amp in float16 needs CUDA; on the CPU use --amp-dtype bfloat16, '
                                       'or leave --amp out\n')
    assert run_ours(ours, image, '--out', tmp_path / 'f32.csv') == 0
    assert run_ours(ours, image, '--amp-dtype', 'bfloat16', '--out', tmp_path / 'bf16.csv') == 0
    (_, f32), (_, bf16) = read_csv(tmp_path / 'f32.csv'), read_csv(tmp_path / 'bf16.csv')
    f32, bf16 = (np.array(rows[0][2:], dtype=float) for rows in (f32, bf16))
    assert 0 < np.abs(f32 - bf16).max() < 0.05   # autocast on: bfloat16 rounding, and no more


def test_missing_or_empty_inputs_are_one_line(ours, tmp_path, capsys):
    assert run_ours(ours, tmp_path / 'nope.jpg') == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.jpg'}: no such image or folder; check the path (a " \
                                      'list of paths: @FILE)\n'
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('no images here')
    assert run_ours(ours, tmp_path / 'empty') == 2
    assert capsys.readouterr().err.startswith(f"error: no image found in {tmp_path / 'empty'}")
    assert run_ours(ours, f"@{tmp_path / 'list.txt'}") == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'list.txt'}: cannot read the list of images")


def test_only_unreadable_images_is_an_error_after_the_warnings(ours, tmp_path, capsys):
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    assert run_ours(ours, tmp_path / 'broken.jpg', '--out', tmp_path / 'out.csv') == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: skipped {tmp_path / 'broken.jpg'}: ") and len(err[0]) > 60
    assert err[1:] == ['error: none of the 1 images could be read: nothing predicted (see the warnings)']
    assert not (tmp_path / 'out.csv').exists()

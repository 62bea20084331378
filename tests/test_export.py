"""ONNX export (export.py): the exported module, the file's logits and metadata against PyTorch, the
command line on a released VOC checkpoint and on one of ours, bad input, and the docs' example."""
import contextlib
import csv
import io
import json
import os
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import checkpoint as ckpt
import export
import label_files
import predict
import voc
from attention import plain_label_attention
from dataset_base import read_image
from models import MSRN, WORD_DIM
from tests.helpers import REPO, official_checkpoint, random_graph, small_model
from tools.synthetic_data import CUSTOM_CLASSES
from util import eval_transform

SIZE = 64


def onnx_example(model_path, image_path):
    """The onnxruntime example of docs/using.md, run as written on these files: {class: probability}."""
    with open(os.path.join(REPO, 'docs', 'using.md'), encoding='utf-8') as f:
        code = next(block for block in re.findall(r'```python\n(.*?)```', f.read(), re.S) if 'onnxruntime' in block)
    scope = {}
    exec(code.replace("'model.onnx'", repr(str(model_path))).replace("'photo.jpg'", repr(str(image_path))), scope)
    return scope['probabilities']


def assert_same_logits(path, model, words, batch_sizes=(1, 3), atol=1e-4):
    """onnxruntime on the file gives the model's logits, on random images of each batch size."""
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in batch_sizes:
        images = torch.randn(batch, 3, SIZE, SIZE)
        got = session.run(['logits'], {'images': images.numpy()})[0]
        np.testing.assert_allclose(got, pytorch_logits(model, words, images), atol=atol, rtol=0)


def pytorch_logits(model, words, images):
    with torch.no_grad():
        return model.eval()(images, torch.as_tensor(words).expand(len(images), -1, -1))[0].numpy()


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def main_difference(out):
    """The largest difference that ``export.main`` prints."""
    return float(re.search(r'largest logit difference: (\S+)', out).group(1))


# ---------------------------------------------------------------------------------------------
# The exported module and the file

@pytest.mark.parametrize('chunk', [1 << 20, 37 * 16 * 3])   # one chunk; chunks of 3 nodes, the last of 1
def test_onnx_attention_is_the_official_formula(monkeypatch, chunk):
    monkeypatch.setattr(export, 'CHUNK_ELEMENTS', chunk)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 16, 37, generator=gen, dtype=torch.float64) * 3).transpose(1, 2)   # (B, P, D) as in the model
    nodes = torch.randn(7, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(export.onnx_label_attention(x, nodes), plain_label_attention(x, nodes),
                               rtol=1e-12, atol=1e-12)


def test_exported_module_equals_the_model():
    model = small_model().eval()
    words = torch.randn(5, WORD_DIM)
    exported = export.ExportedMSRN(model, words)
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), model(images, words.expand(2, -1, -1))[0], atol=1e-5, rtol=0)
    local, group, _, _ = model.label_semantics(words)
    assert exported.nodes.shape == (5 + 2, 512) and torch.equal(exported.nodes, torch.cat([local, group]))


def test_export_onnx_file_logits_and_metadata(tmp_path):
    model, words = small_model(seed=1).eval(), torch.randn(5, WORD_DIM)
    path = tmp_path / 'small.onnx'
    export.export_onnx(model, words, path, SIZE, list('abcde'), [0.5, 0.4, 0.3], [0.2, 0.2, 0.25])
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (images_in,), (logits_out,) = session.get_inputs(), session.get_outputs()
    assert (images_in.name, images_in.shape) == ('images', ['batch', 3, SIZE, SIZE])
    assert (logits_out.name, logits_out.shape) == ('logits', ['batch', 5])
    assert_same_logits(path, model, words)
    assert export.check_onnx(path, model, words, SIZE) < 1e-4
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta['class_names']) == list('abcde') and int(meta['image_size']) == SIZE
    assert json.loads(meta['mean']) == [0.5, 0.4, 0.3] and json.loads(meta['std']) == [0.2, 0.2, 0.25]
    assert 'resize to 64x64 bilinear' in meta['preprocessing'] and 'sigmoid' in meta['output']
    # the label side is folded in: no word-vector-sized weight (fc_label, the graph attention layers)
    weights = proto.graph.initializer
    assert not [w.name for w in weights if WORD_DIM in w.dims]
    kept = [model.resnet_101, *model.ProjectM, model.fc1, model.fc2]
    assert sum(np.prod(w.dims) for w in weights) <= sum(p.numel() for m in kept for p in m.state_dict().values()) + \
        7 * 512


def test_weights_over_the_limit_go_to_a_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export, 'SINGLE_FILE_LIMIT', 0)
    model, words = small_model(seed=2).eval(), torch.randn(5, WORD_DIM)
    path = tmp_path / 'big.onnx'
    export.export_onnx(model, words, path, SIZE, list('abcde'), model.image_normalization_mean,
                       model.image_normalization_std)
    assert (tmp_path / 'big.onnx.data').stat().st_size > 4 * 10 ** 7 > path.stat().st_size
    assert export.check_onnx(path, model, words, SIZE) < 1e-4
    assert json.loads(metadata(path)['class_names']) == list('abcde')


# ---------------------------------------------------------------------------------------------
# The command line on checkpoints

@pytest.fixture(scope='module')
def custom_export(tmp_path_factory):
    """A checkpoint of ours for custom classes (random weights, the settings a run stores), exported
    by ``export.main`` with --resume alone: (onnx path, model, word vectors, printed output)."""
    folder = tmp_path_factory.mktemp('custom')
    graph = random_graph(len(CUSTOM_CLASSES), seed=5)
    torch.manual_seed(5)
    model = MSRN(len(CUSTOM_CLASSES), 0.2, 'resnet18', graph).eval()
    words = np.random.default_rng(5).normal(size=(len(CUSTOM_CLASSES), WORD_DIM)).astype(np.float32)
    args = {'backbone': 'resnet18', 'pool_ratio': 0.2, 'image_size': SIZE, 'data': str(folder / 'data')}
    torch.save({'epoch': 1, 'arch': 'resnet18', 'state_dict': model.state_dict(), 'best_score': 50.0,
                **ckpt.RunSettings(args=args, classes=CUSTOM_CLASSES, graph=graph, word_vectors=words).entries()},
               folder / 'model_best.pth.tar')
    path = folder / 'custom.onnx'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert export.main(['--resume', str(folder / 'model_best.pth.tar'), '--onnx', str(path),
                            '--device', 'cpu']) == 0
    return path, model, words, out.getvalue()


def test_custom_checkpoint_exports_with_its_settings(custom_export):
    path, model, words, out = custom_export
    assert 'image_size=64' in out and 'backbone=resnet18' in out
    assert main_difference(out) < 1e-4
    assert_same_logits(path, model, words)
    meta = metadata(path)
    assert json.loads(meta['class_names']) == CUSTOM_CLASSES and meta['image_size'] == str(SIZE)
    assert json.loads(meta['mean']) == model.image_normalization_mean
    assert json.loads(meta['std']) == model.image_normalization_std


@pytest.mark.slow
def test_released_voc_checkpoint_exports_with_the_given_label_files(tmp_path, capsys):
    """A released (weights-only) VOC checkpoint: recognised by its 20 classes, files given."""
    graph = random_graph(20, seed=6)
    official_checkpoint(str(tmp_path / 'voc.pth'), 20, 0.2, 'resnet18', graph)
    words = np.random.default_rng(6).normal(size=(20, WORD_DIM)).astype(np.float32)
    label_files.save(str(tmp_path / 'graph.npz'), graph)
    label_files.save(str(tmp_path / 'words.npy'), words)
    path = tmp_path / 'voc.onnx'
    assert export.main(['--resume', str(tmp_path / 'voc.pth'), '--onnx', str(path), '--image-size', str(SIZE),
                        '-graph_file', str(tmp_path / 'graph.npz'), '-word_file', str(tmp_path / 'words.npy'),
                        '--backbone', 'resnet18', '--no-download', '--device', 'cpu']) == 0
    assert main_difference(capsys.readouterr().out) < 1e-4  # export.py's own onnxruntime check
    assert json.loads(metadata(path)['class_names']) == voc.CLASSES


def test_docs_example_gives_the_probabilities_of_the_repository_transform(custom_export, tmp_path):
    path, model, words, _ = custom_export
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, 97)[None, :, None] * np.linspace(0.2, 1, 61)[:, None, None]
    pixels = np.clip(ramp + rng.normal(0, 20, (61, 97, 3)), 0, 255).astype(np.uint8)   # 97 x 61: warped
    Image.fromarray(pixels).save(tmp_path / 'photo.jpg', quality=90)
    got = onnx_example(str(path), str(tmp_path / 'photo.jpg'))
    transform = eval_transform(SIZE, model.image_normalization_mean, model.image_normalization_std)
    images = transform(read_image(tmp_path / 'photo.jpg'))[None]
    expected = torch.sigmoid(torch.from_numpy(pytorch_logits(model, words, images)[0]))
    assert list(got) == CUSTOM_CLASSES
    np.testing.assert_allclose(list(got.values()), expected.numpy(), atol=1e-4, rtol=0)


def test_docs_example_reproduces_predict_csv(custom_export, tmp_path):
    """The exported model, preprocessed as the docs say, gives predict.py --out's probabilities."""
    path = custom_export[0]
    rng = np.random.default_rng(8)
    for i, (w, h) in enumerate([(64, 64), (90, 50), (33, 120)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f'{i}.jpg')
    assert predict.main([str(tmp_path), '--resume', str(path.parent / 'model_best.pth.tar'), '--out',
                         str(tmp_path / 'p.csv'), '-j', '0', '--device', 'cpu']) == 0
    with open(tmp_path / 'p.csv', newline='', encoding='utf-8') as f:
        header, *rows = list(csv.reader(f))
    assert len(rows) == 3
    for row in rows:
        got = onnx_example(path, row[0])
        np.testing.assert_allclose([got[name] for name in header[2:]], np.array(row[2:], dtype=float), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# What cannot be exported: one line, exit code 2, no file

def bad_checkpoint(path, nan=False):
    torch.manual_seed(0)
    model = MSRN(3, 0.4, 'resnet18', random_graph(3))
    state = model.state_dict()
    if nan:
        state['fc2.bias'][0] = float('nan')
    words = np.ones((3, WORD_DIM), np.float32)
    torch.save({'state_dict': state, **ckpt.RunSettings(
        args={'backbone': 'resnet18', 'pool_ratio': 0.4, 'image_size': SIZE}, classes=['a', 'b', 'c'],
        graph=random_graph(3), word_vectors=words).entries()}, path)
    return str(path)


@pytest.mark.parametrize('case,message', [
    ('small', r'image size 32 is too small: MSRN needs at least 33 px \(--image-size\)'),
    ('opset', r'ONNX opset 9 cannot be written: choose 11 to 20 \(--opset\)'),
    ('folder', r'is a folder; give the ONNX file to write'),
    ('nan', r'the model gives NaN or infinite logits'),
    ('missing', r'checkpoint not found'),
])
def test_what_cannot_be_exported_is_a_one_line_error(tmp_path, capsys, case, message):
    resume = bad_checkpoint(tmp_path / 'ckpt.pth', nan=case == 'nan')
    argv = ['--resume', resume, '--onnx', str(tmp_path / 'out.onnx'), '--device', 'cpu']
    argv += {'small': ['--image-size', '32'], 'opset': ['--opset', '9'], 'folder': ['--onnx', str(tmp_path)],
             'missing': ['--resume', str(tmp_path / 'none.pth')]}.get(case, [])
    assert export.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and err.startswith('error: ') and '\n' not in err
    assert not (tmp_path / 'out.onnx').exists()

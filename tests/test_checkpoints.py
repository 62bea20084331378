"""Loading released/our checkpoints strictly, and ImageNet trunk weights with download."""
import copy
import functools
import hashlib

import pytest
import torch
import torchvision

import checkpoint
from checkpoint import load_checkpoint, load_imagenet_trunk
from errors import CheckpointError
from models import MSRN
from tests.helpers import random_graph


@pytest.fixture(scope='module')
def built_pair():
    """Two differently initialised small models of the same config, built once (slow to build)."""
    torch.manual_seed(0)
    a = MSRN(5, 0.4, 'resnet18', random_graph(5))
    torch.manual_seed(1)
    b = MSRN(5, 0.4, 'resnet18', random_graph(5))
    return a, b


@pytest.fixture
def pair(built_pair):
    """Fresh copies of ``built_pair`` for each test, so no test sees weights another one loaded."""
    source, target = copy.deepcopy(built_pair)
    assert not same_weights(source, target)
    return source, target


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def official_checkpoint(model, prefix=''):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    return {'epoch': 20, 'arch': None, 'state_dict': state, 'best_score': torch.tensor(94.8)}


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_official_checkpoint_file_loads_strictly(pair, tmp_path, prefix):
    source, target = pair
    path = tmp_path / 'voc_checkpoint.pth.tar'
    torch.save(official_checkpoint(source, prefix), path)
    checkpoint = load_checkpoint(target, str(path))
    assert checkpoint['epoch'] == 20 and float(checkpoint['best_score']) == pytest.approx(94.8)
    assert same_weights(source, target)


def test_raw_state_dict_file_loads(pair, tmp_path):
    source, target = pair
    path = tmp_path / 'raw.pth'
    torch.save(source.state_dict(), path)
    load_checkpoint(target, path)
    assert same_weights(source, target)


def test_missing_and_unexpected_keys_are_named(pair):
    source, target = pair
    checkpoint = official_checkpoint(source)
    del checkpoint['state_dict']['fc_label.bias']
    checkpoint['state_dict']['extra.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r'missing \[fc_label.bias\]; unexpected \[extra.weight\]'):
        load_checkpoint(target, checkpoint)


def test_wrong_pool_ratio_is_diagnosed(pair):
    source, _ = pair
    other = MSRN(5, 0.2, 'resnet18', random_graph(5))   # K = 1 instead of 2
    with pytest.raises(CheckpointError, match=r'shape mismatch \[.*fc1.weight.*\].*2 label groups, the model 1.*--pool_ratio'):
        load_checkpoint(other, official_checkpoint(source))


def test_wrong_class_count_is_diagnosed(pair):
    source, _ = pair
    other = MSRN(6, 0.4, 'resnet18', random_graph(6))
    with pytest.raises(CheckpointError, match='checkpoint has 5 classes, the model 6'):
        load_checkpoint(other, official_checkpoint(source))


def test_long_key_lists_are_truncated(pair):
    _, target = pair
    with pytest.raises(CheckpointError, match=r'and \d+ more') as info:
        load_checkpoint(target, {'state_dict': {'x': torch.zeros(1)}})
    assert len(str(info.value).splitlines()) == 1


def test_missing_corrupt_and_unsafe_files_are_errors(pair, tmp_path):
    _, target = pair
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(target, str(tmp_path / 'nope.pth.tar'))
    corrupt = tmp_path / 'corrupt.pth.tar'
    corrupt.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        load_checkpoint(target, str(corrupt))
    unsafe = tmp_path / 'unsafe.pth.tar'
    torch.save({'state_dict': {}, 'payload': functools.partial(print, 'hi')}, unsafe)
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        load_checkpoint(target, str(unsafe))


def test_nothing_is_changed_when_loading_fails(pair):
    source, target = pair
    before = copy.deepcopy(target)
    checkpoint = official_checkpoint(source)
    del checkpoint['state_dict']['fc2.bias']
    with pytest.raises(CheckpointError):
        load_checkpoint(target, checkpoint)
    assert same_weights(target, before)
    load_checkpoint(target, official_checkpoint(source))  # the same checkpoint, complete, does load
    assert same_weights(target, source)


# ---------------------------------------------------------------------------------------------
# ImageNet trunk

def imagenet_file(directory, seed=0):
    """torchvision resnet18 weights (with fc) saved under the official naming scheme name-<sha256[:8]>.pth."""
    torch.manual_seed(seed)
    tmp = directory / 'weights.pth'
    torch.save(torchvision.models.resnet18().state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = directory / f'resnet18-{digest[:8]}.pth'
    tmp.rename(path)
    return path


def test_imagenet_weights_load_into_trunk_but_not_conv_buffers(tmp_path):
    source = imagenet_file(tmp_path)
    model = MSRN(5, 0.4, 'resnet18', random_graph(5))
    buffer_before = model.resnet_101.conv_buffer1.weight.clone()
    load_imagenet_trunk(model, str(source), 'resnet18')
    weights = torch.load(source, weights_only=True)
    assert torch.equal(model.resnet_101.layer3[1].conv2.weight, weights['layer3.1.conv2.weight'])
    assert torch.equal(model.resnet_101.bn1.running_var, weights['bn1.running_var'])
    assert torch.equal(model.resnet_101.conv_buffer1.weight, buffer_before)


def test_missing_imagenet_file_is_downloaded_with_hash_check(http_server, tmp_path):
    served = imagenet_file(tmp_path)
    http_server.files['/' + served.name] = served.read_bytes()
    target = tmp_path / 'pretrained' / 'resnet18.pth.tar'
    model = MSRN(5, 0.4, 'resnet18', random_graph(5))
    load_imagenet_trunk(model, str(target), 'resnet18', url=http_server.url('/' + served.name))
    assert target.read_bytes() == served.read_bytes()
    assert torch.equal(model.resnet_101.conv1.weight, torch.load(served, weights_only=True)['conv1.weight'])


def test_download_with_wrong_hash_leaves_no_file(http_server, tmp_path):
    served = imagenet_file(tmp_path)
    http_server.files['/resnet18-00000000.pth'] = served.read_bytes()
    target = tmp_path / 'pretrained' / 'resnet18.pth.tar'
    model = MSRN(5, 0.4, 'resnet18', random_graph(5))
    with pytest.raises(CheckpointError, match=f'save it as {target}'):
        load_imagenet_trunk(model, str(target), 'resnet18', url=http_server.url('/resnet18-00000000.pth'))
    assert list(target.parent.iterdir()) == []


def test_offline_download_says_where_to_put_the_file(http_server, tmp_path):
    http_server.hang_up.add('/resnet18-5c106cde.pth')  # as a dead mirror: the connection closes unanswered
    target = tmp_path / 'resnet101.pth.tar'
    model = MSRN(5, 0.4, 'resnet18', random_graph(5))
    with pytest.raises(CheckpointError, match=f'{target} not found and downloading .* failed .* save it as {target}'):
        load_imagenet_trunk(model, str(target), 'resnet18', url=http_server.url('/resnet18-5c106cde.pth'))
    assert http_server.requests and not target.exists()


def test_weights_of_another_depth_are_rejected(tmp_path):
    source = imagenet_file(tmp_path)
    model = MSRN(5, 0.4, 'resnet34', random_graph(5))
    with pytest.raises(CheckpointError, match='not resnet34 ImageNet weights'):
        load_imagenet_trunk(model, str(source), 'resnet34')


def test_default_pretrained_path_is_in_the_repo():
    assert checkpoint.default_pretrained_path('resnet101').endswith('pretrained/resnet101.pth.tar')

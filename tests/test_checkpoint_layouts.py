"""Checkpoint layouts beyond the current official one: the first release's, our settings entries,
and partial loading for --finetune."""
import numpy as np
import pytest
import torch

from checkpoint import RunSettings, load_checkpoint, load_matching
from errors import CheckpointError
from models import MSRN
from tests.helpers import random_graph


def small(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return MSRN(num_classes, 0.4, 'resnet18', random_graph(num_classes))


def first_release(model):
    """The first official release's layout: an extra unused ProjectMs (Linear 512->512), no W / B."""
    state = {k: v.clone() for k, v in model.state_dict().items() if k not in ('W', 'B')}
    state['ProjectMs.weight'], state['ProjectMs.bias'] = torch.randn(512, 512), torch.randn(512)
    return {'epoch': 20, 'arch': None, 'state_dict': state, 'best_score': torch.tensor(94.0)}


def test_first_release_layout_loads_every_used_weight(capsys):
    source, target = small(seed=0), small(seed=1)
    w_before, b_before = target.W.clone(), target.B.clone()
    assert not torch.equal(source.fc1.weight, target.fc1.weight)
    load_checkpoint(target, first_release(source))
    for name, value in source.state_dict().items():
        if name not in ('W', 'B'):
            assert torch.equal(target.state_dict()[name], value), name
    assert torch.equal(target.W, w_before) and torch.equal(target.B, b_before)   # as the constructor made them
    assert capsys.readouterr().out.count('first-release checkpoint layout') == 1


@pytest.mark.parametrize('change', ['wrong ProjectMs shape', 'other extra key', 'used weight missing'])
def test_only_the_dead_parameters_may_differ(change):
    source, target = small(seed=0), small(seed=1)
    checkpoint = first_release(source)
    state = checkpoint['state_dict']
    if change == 'wrong ProjectMs shape':
        state['ProjectMs.weight'] = torch.randn(512, 256)
    elif change == 'other extra key':
        state['ProjectN.weight'] = torch.randn(3)
    else:
        del state['fc_label.weight']
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match='does not fit the model'):
        load_checkpoint(target, checkpoint)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_load_matching_takes_every_weight_that_fits():
    source, target = small(num_classes=5, seed=0), small(num_classes=7, seed=1)
    loaded, fresh = load_matching(target, {'state_dict': source.state_dict()})
    assert fresh == ['W', 'B', 'fc1.weight', 'fc2.weight', 'fc2.bias']   # K = int(0.4 x C) is 2 for both
    assert loaded == [k for k in target.state_dict() if k not in fresh]
    for name in loaded:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name]), name


def test_load_matching_with_nothing_in_common_is_an_error():
    with pytest.raises(CheckpointError, match='no weight of the checkpoint fits'):
        load_matching(small(), {'state_dict': {'other.weight': torch.zeros(2)}})


def test_settings_round_trip_through_a_weights_only_file(tmp_path):
    graph = {'adj': np.array([[0, 3], [2, 0]]), 'nums': np.array([5, 4])}
    words = np.arange(600, dtype=np.float32).reshape(2, 300)
    entries = RunSettings(args={'lr': 0.1, 'epoch_step': [30, 40], 'device': torch.device('cpu')},
                          classes=['traffic light', 'café'], graph=graph, word_vectors=words).entries()
    assert sorted(entries) == ['adj', 'args', 'classes', 'nums', 'word_vectors']   # the keys the format names
    torch.save(entries, tmp_path / 'c.pth')
    settings = RunSettings.read(torch.load(tmp_path / 'c.pth', weights_only=True))
    assert settings.args == {'lr': 0.1, 'epoch_step': [30, 40], 'device': 'cpu'}
    assert settings.classes == ['traffic light', 'café']
    assert np.array_equal(settings.graph['adj'], graph['adj']) and np.array_equal(settings.word_vectors, words)
    assert RunSettings.read({'epoch': 1, 'state_dict': {}}) == RunSettings()   # a released checkpoint has none

"""MSRN model: parameter layout, forward pass against references, label graph (attention: test_attention.py)."""
import json
import math

import numpy as np
import pytest
import torch

import models
from models import MSRN, MSGDN, label_graph
from tests.helpers import REFERENCE, meta_model, needs_reference, random_graph, small_model
from tests.reference import plain_graph_attention, plain_head, plain_label_graph

CONFIGS = {'voc': (20, 0.2), 'coco': (80, 0.05), 'coco_pool0.2': (80, 0.2), 'nuswide': (81, 0.05), 'apparel': (11, 0.2)}


def describe_state_dict(model):
    params = dict(model.named_parameters())
    return [{'key': k, 'shape': list(v.shape), 'dtype': str(v.dtype).removeprefix('torch.'),
             'kind': 'parameter' if k in params else 'buffer'} for k, v in model.state_dict().items()]


# ---------------------------------------------------------------------------------------------
# Parameter layout

@needs_reference
@pytest.mark.parametrize('config', CONFIGS)
def test_state_dict_matches_official_layout(config):
    reference = json.loads((REFERENCE / f'state_dict_{config}.json').read_text())
    model = meta_model(*CONFIGS[config])
    assert describe_state_dict(model) == reference['entries']
    assert sum(p.numel() for p in model.parameters()) == reference['num_parameters']
    assert model.num_node == reference['num_node']


@pytest.mark.parametrize('num_classes,pool_ratio,groups', [(20, 0.2, 4), (80, 0.05, 4), (81, 0.05, 4), (11, 0.2, 2)])
def test_state_dict_layout_from_torchvision(num_classes, pool_ratio, groups):
    """Same checks without ../shared: torchvision keys minus fc, conv_buffers, C- and K-dependent shapes."""
    model = meta_model(num_classes, pool_ratio)
    entries = describe_state_dict(model)
    keys = [e['key'] for e in entries]
    shapes = {e['key']: e['shape'] for e in entries}
    with torch.device('meta'):
        tv_keys = [k for k in torchvision_resnet101().state_dict() if not k.startswith('fc.')]
    trunk = [k.removeprefix('resnet_101.') for k in keys if k.startswith('resnet_101.')]
    assert trunk == tv_keys + [f'conv_buffer{i}.{p}' for i in range(3) for p in ('weight', 'bias')]
    assert keys[:2] == ['W', 'B'] and len(keys) == 652
    assert [k.split('.')[0] for k in keys[2 + len(trunk):]] == (
        ['label_embed'] * 4 + ['group_embed'] * 4 + ['ProjectM'] * 6 + ['fc_label'] * 2 + ['fc1'] * 2 + ['fc2'] * 2)
    assert model.num_node == groups
    assert shapes['W'] == [num_classes, 3072] and shapes['B'] == [num_classes]
    assert shapes['group_embed.layers.0.assign_mat.W'] == [512, groups]
    assert shapes['group_embed.layers.0.assign_mat.a'] == [2 * groups, 1]
    assert shapes['fc1.weight'] == [2048, 1536 * (num_classes + groups)]
    assert shapes['fc2.weight'] == [num_classes, 2048]
    assert {e['dtype'] for e in entries} == {'float32', 'int64'}


def torchvision_resnet101():
    import torchvision
    return torchvision.models.resnet101()


def test_official_class_name_is_the_same_model():
    assert MSGDN is MSRN


def test_pool_ratio_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match='pool_ratio'):
        MSRN(20, 0.01, 'resnet18', random_graph(20))


def test_unknown_attention_lists_choices():
    with pytest.raises(ValueError, match='auto, fused, chunked, plain'):
        MSRN(20, 0.2, 'resnet18', random_graph(20), attention='flash')


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match='resnet101'):
        MSRN(20, 0.2, 'vgg16', random_graph(20))


# ---------------------------------------------------------------------------------------------
# Forward pass against the official outputs and the plain reference

@needs_reference
def test_head_reproduces_official_fixture():
    fixture = torch.load(REFERENCE / 'head_fixture_small.pt', weights_only=True)
    config = fixture['config']
    model = MSRN(config['num_classes'], config['pool_ratio'], 'resnet50',  # resnet101's channels, smaller
                 {k: v.numpy() for k, v in fixture['adj'].items()}).eval()
    head_state = {k: v.float() for k, v in fixture['head_state_dict'].items()}
    result = model.load_state_dict(head_state, strict=False)
    assert not result.unexpected_keys and all(k.startswith('resnet_101.') for k in result.missing_keys)

    a, adj = label_graph(fixture['adj']['adj'].numpy(), fixture['adj']['nums'].numpy())
    inter = fixture['intermediates']
    torch.testing.assert_close(torch.from_numpy(a).float(), inter['A'], atol=1e-6, rtol=0)
    torch.testing.assert_close(adj, inter['adj_normalized'], atol=1e-6, rtol=0)
    with torch.no_grad():
        local, group, assign, group_loss = model.label_semantics(fixture['word_vectors'])
        logits, group_loss2 = model.head(fixture['features'], fixture['word_vectors'])
    torch.testing.assert_close(model.fc_label(fixture['word_vectors']).detach(), inter['fc_label'], atol=1e-5, rtol=0)
    torch.testing.assert_close(local, inter['label_embed'], atol=1e-5, rtol=0)
    torch.testing.assert_close(group, inter['group_embed'], atol=1e-5, rtol=2e-6)  # values ~14: float32 rounding
    torch.testing.assert_close(assign, inter['assign_mat'], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, fixture['logits'], atol=1e-5, rtol=0)
    torch.testing.assert_close(group_loss2, fixture['group_loss'], atol=1e-5, rtol=0)


def test_head_matches_plain_reference_on_random_weights():
    model = small_model(num_classes=6, pool_ratio=0.5).eval()
    torch.manual_seed(1)
    features = [torch.randn(3, c, s, s) * 0.1 for c, s in zip(model.resnet_101.out_channels, (5, 3, 2))]
    words = torch.randn(6, 300)
    with torch.no_grad():
        logits, group_loss = model.head(features, words)
        expected, expected_loss = plain_head(model.state_dict(), features, words, model.adj_mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(group_loss, expected_loss, atol=1e-7, rtol=1e-5)


def test_graph_attention_layer_matches_pair_tensor_formula():
    torch.manual_seed(0)
    layer = models.GraphAttentionLayer(7, 9).double()
    x = torch.randn(6, 7, dtype=torch.float64)
    mask = (torch.rand(6, 6) > 0.5) | torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(layer(x, mask), plain_graph_attention(x, mask, layer.W, layer.a))


# ---------------------------------------------------------------------------------------------
# Label graph

def test_label_graph_matches_formula_and_is_asymmetric():
    graph = random_graph(12, seed=3)
    a, adj = label_graph(graph['adj'], graph['nums'])
    torch.testing.assert_close(adj, plain_label_graph(graph['adj'], graph['nums']).float())
    mask = adj > 0
    assert mask.diagonal().all()
    cond = graph['adj'] / graph['nums'][:, None]
    # the layers' edges are the transpose of the binarised P(j | i) >= t
    assert torch.equal(mask & ~torch.eye(12, dtype=torch.bool), torch.from_numpy((cond >= 0.4).T) & ~torch.eye(12, dtype=torch.bool))
    # class 0 always comes with class 1 (P(1|0) = 1), class 1 seldom with class 0 (P(0|1) = 0.1)
    _, adj = label_graph(np.array([[0, 5, 0], [5, 0, 0], [0, 0, 0]]), np.array([5, 50, 10]))
    assert adj[1, 0] > 0 and adj[0, 1] == 0


def test_label_graph_with_a_class_that_never_occurs_is_defined():
    graph = random_graph(6, seed=1)
    graph['nums'][2] = 0
    graph['adj'][2, :] = 0
    graph['adj'][:, 2] = 0
    a, adj = label_graph(graph['adj'], graph['nums'])
    assert np.isfinite(a).all() and torch.isfinite(adj).all()
    assert (adj[2] > 0).sum() == 1 and adj[2, 2] > 0      # only its self loop
    model = MSRN(6, 0.4, 'resnet18', graph).eval()
    with torch.no_grad():
        logits, loss = model(torch.randn(2, 3, 64, 64), torch.randn(2, 6, 300))
    assert torch.isfinite(logits).all() and torch.isfinite(loss)


def test_graph_is_built_once_and_not_saved(monkeypatch):
    builds = []
    monkeypatch.setattr(models, 'label_graph', lambda *a, **k: builds.append(a) or label_graph(*a, **k))
    model = small_model()
    mask = model.adj_mask
    with torch.no_grad():
        for mode in (model.train, model.eval):
            mode()(torch.randn(2, 3, 64, 64), torch.randn(2, 5, 300))
    model.load_state_dict(model.state_dict())
    assert len(builds) == 1 and model.adj_mask is mask
    assert 'adj_mask' not in model.state_dict()
    assert model.adj_mask.dtype == torch.bool and model.adj_mask.shape == (5, 5)


# ---------------------------------------------------------------------------------------------
# Whole model: trunk, shapes, gradients, precision

@pytest.mark.parametrize('size,shapes', [(33, [(2, 2), (1, 1), (1, 1)]), (64, [(4, 4), (2, 2), (1, 1)]),
                                         (224, [(14, 14), (7, 7), (3, 3)])])
def test_trunk_pyramid_shapes(size, shapes):
    trunk = models.PyramidResNet('resnet18').eval()
    with torch.no_grad():
        feats = trunk(torch.randn(1, 3, size, size))
    assert [tuple(f.shape[2:]) for f in feats] == shapes
    assert [f.shape[1] for f in feats] == [128, 256, 512] == list(trunk.out_channels)


@pytest.mark.parametrize('backbone,channels', [('resnet34', (128, 256, 512)), ('resnet50', (512, 1024, 2048))])
def test_backbones_adapt_channel_counts(backbone, channels):
    model = meta_model(20, 0.2, backbone)
    assert model.resnet_101.out_channels == channels
    assert [m.in_channels for m in model.ProjectM] == list(channels)
    assert model.resnet_101.conv_buffer1.in_channels == channels[0]


def test_forward_shapes_and_gradients_reach_every_trainable_parameter():
    model = small_model().train()
    logits, group_loss = model(torch.randn(2, 3, 96, 96), torch.randn(2, 5, 300))
    assert logits.shape == (2, 5) and group_loss.shape == ()
    (logits.sum() + group_loss).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad == {'W', 'B', 'resnet_101.conv_buffer0.weight', 'resnet_101.conv_buffer0.bias'}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_auto_and_plain_attention_give_the_same_model_output():
    auto = small_model(seed=4).eval()
    plain = small_model(seed=4, attention='plain').eval()
    plain.load_state_dict(auto.state_dict())
    img, inp = torch.randn(2, 3, 128, 128), torch.randn(2, 5, 300)
    with torch.no_grad():
        torch.testing.assert_close(auto(img, inp)[0], plain(img, inp)[0], atol=1e-5, rtol=1e-5)


def test_cpu_autocast_forward_and_backward():
    model = small_model().train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, group_loss = model(torch.randn(2, 3, 64, 64), torch.randn(2, 5, 300))
    (logits.float().sum() + group_loss).backward()
    assert torch.isfinite(logits).all() and group_loss.dtype == torch.float32


def test_smallest_images():
    model = small_model().eval()
    with torch.no_grad():
        logits, _ = model(torch.randn(1, 3, 33, 40), torch.randn(1, 5, 300))
        assert torch.isfinite(logits).all()
        with pytest.raises(ValueError, match='at least 33 px'):
            model(torch.randn(1, 3, 32, 32), torch.randn(1, 5, 300))


def test_word_vectors_of_wrong_shape_are_rejected():
    model = small_model()
    with pytest.raises(ValueError, match=r'expected \[batch, 5, 300\]'):
        model(torch.randn(1, 3, 64, 64), torch.randn(1, 4, 300))


def test_config_optim_groups():
    model = small_model()
    groups = model.get_config_optim(0.1)
    assert [g['lr'] for g in groups] == [pytest.approx(0.01), 0.1]
    trunk_ids = {id(p) for p in groups[0]['params']}
    head_ids = {id(p) for p in groups[1]['params']}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trunk_ids | head_ids == trainable and not trunk_ids & head_ids
    assert trunk_ids == {id(p) for p in model.resnet_101.parameters() if p.requires_grad}
    assert id(model.W) not in trainable and id(model.B) not in trainable


def test_fresh_init_follows_official_distributions():
    model = small_model(num_classes=20, pool_ratio=0.2)
    conv = model.resnet_101.conv_buffer2.weight
    assert conv.std().item() == pytest.approx(math.sqrt(2 / conv.shape[0]), rel=0.05)
    bound = 1 / math.sqrt(3072)
    assert model.W.abs().max() <= bound and model.W.abs().max() > 0.9 * bound
    gat = model.label_embed.layers[0].W
    xavier = 1.414 * math.sqrt(6 / (gat.shape[0] + gat.shape[1]))
    assert gat.abs().max() <= xavier and gat.abs().max() > 0.9 * xavier

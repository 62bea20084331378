"""MSRN: a ResNet trunk with label-guided attention at three depths (docs/model.md).

Parameter names, shapes and the forward pass match the official ``MSGDN`` so that the released
checkpoints load strictly and give the same outputs.

Shape legend: B batch, C classes, K global nodes (label groups), N nodes attended to (C or K,
or C+K), D = 512 label dimension, E = 300 word-vector dimension, P = H·W feature positions.
"""
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# before torchvision, whose import probes Triton: attention.py makes a broken one look absent
from attention import ATTENTIONS
import torchvision

from errors import UsageError

LABEL_DIM = 512
WORD_DIM = 300
NUM_LEVELS = 3
GRAPH_THRESHOLD = 0.4   # t: keep edges with P(j | i) >= t
GRAPH_REWEIGHT = 0.25   # p: weight given to neighbours against the self loop
GROUP_LOSS_WEIGHT = 1e-4
MIN_IMAGE_SIZE = 33     # layer4 output is ceil(H / 32) and must be >= 2 for the final 2×2 max-pool

DEFAULT_BACKBONE = 'resnet101'  # the paper's
RESNET_LAYOUTS = {
    'resnet18': (torchvision.models.resnet.BasicBlock, [2, 2, 2, 2]),
    'resnet34': (torchvision.models.resnet.BasicBlock, [3, 4, 6, 3]),
    'resnet50': (torchvision.models.resnet.Bottleneck, [3, 4, 6, 3]),
    'resnet101': (torchvision.models.resnet.Bottleneck, [3, 4, 23, 3]),
    'resnet152': (torchvision.models.resnet.Bottleneck, [3, 8, 36, 3]),
}


# --------------------------------------------------------------------------------------------
# Trunk

class PyramidResNet(torchvision.models.ResNet):
    """torchvision ResNet (same keys, no fc) returning three max-pooled feature maps."""

    def __init__(self, backbone=DEFAULT_BACKBONE):
        if backbone not in RESNET_LAYOUTS:
            raise ValueError(f'unknown backbone {backbone!r}; choose one of {", ".join(RESNET_LAYOUTS)}')
        block, layers = RESNET_LAYOUTS[backbone]
        super().__init__(block, layers)
        del self.fc, self.avgpool
        c1, c2, c3, c4 = (width * block.expansion for width in (64, 128, 256, 512))
        self.conv_buffer0 = nn.Conv2d(c1, c1, 1)  # quirk: in every checkpoint, never used
        self.conv_buffer1 = nn.Conv2d(c2, c2, 1)
        self.conv_buffer2 = nn.Conv2d(c3, c3, 1)
        for conv in (self.conv_buffer0, self.conv_buffer1, self.conv_buffer2):
            nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
        self.conv_buffer0.requires_grad_(False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.out_channels = (c2, c3, c4)

    def forward(self, img):
        """img (B, 3, H, W) -> [(B, c2, H/16, W/16), (B, c3, H/32, W/32), (B, c4, H/64, W/64)]."""
        if min(img.shape[-2:]) < MIN_IMAGE_SIZE:  # layer4 would be 1×1 and the last 2×2 pool empty
            raise UsageError(f'images of {img.shape[-2]}×{img.shape[-1]} px are too small: MSRN needs at least '
                             f'{MIN_IMAGE_SIZE} px per side (the released models use 448)')
        x = self.maxpool(self.relu(self.bn1(self.conv1(img))))
        x = self.layer2(self.layer1(x))                 # (B, c2, H/8, W/8)
        f1 = self.pool(self.conv_buffer1(x))
        x = self.layer3(x)                              # (B, c3, H/16, W/16)
        f2 = self.pool(self.conv_buffer2(x))
        f3 = self.pool(self.layer4(x))
        return [f1, f2, f3]


# --------------------------------------------------------------------------------------------
# Label graph and label semantics

def label_graph(adj, nums, t=GRAPH_THRESHOLD, p=GRAPH_REWEIGHT):
    """Official ML-GCN/MSRN graph from co-occurrence counts.

    Returns (A, adj_normalized): A (C, C) float64 = binarised P(j|i), re-weighted, plus identity;
    adj_normalized (C, C) float32 = D·Aᵀ·D. A class with nums == 0 never occurred: it gets no
    edges (only its self loop) instead of the official NaN row.
    """
    adj = np.asarray(adj, dtype=np.float64)
    nums = np.asarray(nums, dtype=np.float64).reshape(-1, 1)
    cond = np.divide(adj, nums, out=np.zeros_like(adj), where=nums > 0)   # (C, C) P(j | i)
    a = (cond >= t).astype(np.float64)
    a = a * p / (a.sum(0, keepdims=True) + 1e-6) + np.identity(len(a))
    a32 = torch.from_numpy(a).float()
    d = torch.diag(a32.sum(1).pow(-0.5))
    return a, (a32 @ d).t() @ d


class GraphAttentionLayer(nn.Module):
    """GAT layer over the label graph: out = ELU(softmax_masked(e) @ h + h)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_features, out_features))
        self.a = nn.Parameter(torch.empty(2 * out_features, 1))
        nn.init.xavier_uniform_(self.W, gain=1.414)
        nn.init.xavier_uniform_(self.a, gain=1.414)

    def forward(self, x, mask):
        """x (C, in), mask (C, C) bool -> (C, out)."""
        h = x @ self.W                                          # (C, out)
        out = h.shape[1]
        # [h_i ‖ h_j]·a = h_i·a_src + h_j·a_dst
        e = F.leaky_relu(h @ self.a[:out] + (h @ self.a[out:]).t(), 0.2)   # (C, C)
        attention = e.masked_fill(~mask, -1e12).softmax(dim=1)
        return F.elu(attention @ h + h)  # quirk: residual inside the ELU, as released


class LabelEmbed(nn.Module):
    """Local label semantics: two graph-attention layers E' -> 300 -> D."""

    def __init__(self, in_features):
        super().__init__()
        self.layers = nn.ModuleList([GraphAttentionLayer(in_features, 300),
                                     GraphAttentionLayer(300, LABEL_DIM)])

    def forward(self, x, mask):
        """x (C, in) -> L (C, D)."""
        for layer in self.layers:
            x = layer(x, mask)
        return x


class DiffPool(nn.Module):
    """One DiffPool layer: node embeddings Z and soft assignment S to K groups."""

    def __init__(self, in_features, num_groups, out_features):
        super().__init__()
        self.embed = GraphAttentionLayer(in_features, out_features)
        self.assign_mat = GraphAttentionLayer(in_features, num_groups)

    def forward(self, x, mask):
        """x (C, in) -> G (K, out), S (C, K)."""
        z = self.embed(x, mask)                                 # (C, out)
        s = self.assign_mat(x, mask).softmax(dim=-1)            # (C, K)
        return s.t() @ z, s


class GroupEmbed(nn.Module):
    """Global label semantics: the labels pooled into K groups."""

    def __init__(self, num_groups):
        super().__init__()
        self.layers = nn.ModuleList([DiffPool(LABEL_DIM, num_groups, LABEL_DIM)])

    def forward(self, x, mask):
        """x (C, D) -> G (K, D), S (C, K)."""
        return self.layers[0](x, mask)


# --------------------------------------------------------------------------------------------
# The model

class MSRN(nn.Module):
    """MSRN (official name ``MSGDN``): forward(img, inp) -> (logits (B, C), group_loss ())."""

    def __init__(self, num_classes, pool_ratio, backbone, graph, attention='auto', compile_trunk=False):
        """backbone: the trunk's name (a key of RESNET_LAYOUTS). graph: the label co-occurrence
        counts {'adj': (C, C), 'nums': (C,)} (``label_files.load_adjacency`` reads them from a file).

        attention: how the label-guided attention is computed (``attention.py``): 'auto' (default:
        the fused Triton kernels on CUDA once they pass a check in this process, the chunked PyTorch
        code otherwise), 'fused' (the kernels or an error), 'chunked', or 'plain' (the official
        formula and its (B, P, N, D) memory). compile_trunk: run the trunk through torch.compile
        (``features``).
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_node = int(pool_ratio * num_classes)  # floor, as official: fixes fc1's shape
        if self.num_node < 1:
            raise UsageError(f'pool_ratio {pool_ratio} gives {pool_ratio}·{num_classes} < 1 label group; '
                             f'use a pool ratio of at least {1 / num_classes:.3g}')
        if attention not in ATTENTIONS:
            raise ValueError(f'unknown attention {attention!r}; choose one of {", ".join(ATTENTIONS)}')
        self.attention = ATTENTIONS[attention]
        self.compile_trunk = compile_trunk
        self.image_normalization_mean = [0.485, 0.456, 0.406]
        self.image_normalization_std = [0.229, 0.224, 0.225]

        self.resnet_101 = PyramidResNet(backbone)  # official key name, whatever the depth
        self.label_embed = LabelEmbed(256)
        self.group_embed = GroupEmbed(self.num_node)
        self.ProjectM = nn.ModuleList(nn.Conv2d(c, LABEL_DIM, 1) for c in self.resnet_101.out_channels)
        self.fc_label = nn.Linear(WORD_DIM, 256)
        self.fc1 = nn.Linear(NUM_LEVELS * LABEL_DIM * (num_classes + self.num_node), 2048)
        self.fc2 = nn.Linear(2048, num_classes)
        # quirk: W and B are in every checkpoint but the forward pass never uses them
        self.W = nn.Parameter(torch.empty(num_classes, NUM_LEVELS * LABEL_DIM * 2), requires_grad=False)
        self.B = nn.Parameter(torch.empty(num_classes), requires_grad=False)
        bound = 1 / self.W.shape[1] ** 0.5
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.B, -bound, bound)

        if np.shape(graph['adj']) != (num_classes, num_classes) or np.shape(graph['nums']) != (num_classes,):
            raise ValueError(f"the label graph has shapes {list(np.shape(graph['adj']))} and "
                             f"{list(np.shape(graph['nums']))}, expected [{num_classes}, {num_classes}] and "
                             f'[{num_classes}]')
        _, adj = label_graph(graph['adj'], graph['nums'])
        self.register_buffer('adj_mask', adj > 0, persistent=False)   # (C, C) the layers' edges

    def label_semantics(self, words):
        """words (C, E) -> L (C, D), G (K, D), S (C, K), group_loss (); always in float32."""
        with torch.autocast(device_type=words.device.type, enabled=False):
            local = self.label_embed(self.fc_label(words.float()), self.adj_mask)   # (C, D)
            group, assign = self.group_embed(F.relu(local), self.adj_mask)         # (K, D), (C, K)
            nearest = group[assign.argmax(1)]                                       # (C, D)
            group_loss = GROUP_LOSS_WEIGHT * (local - nearest).norm(dim=1).sum()
        return local, group, assign, group_loss

    def head(self, features, words):
        """Everything after the trunk: features [f1, f2, f3], words (C, E) -> logits (B, C), group_loss ()."""
        local, group, _, group_loss = self.label_semantics(words)
        return self.classify(features, torch.cat([local, group])), group_loss

    def classify(self, features, nodes, attention=None):
        """The head given the label semantics: features [f1, f2, f3], nodes (C+K, D) = [L; G] -> logits (B, C).

        attention: another implementation of the model's (export.py passes one that ONNX can run).
        """
        attention = attention or self.attention
        levels = []
        for project, feature in zip(self.ProjectM, features):
            x = project(feature).flatten(2).transpose(1, 2)             # (B, P, D)
            levels.append(attention(x, nodes))                          # (B, C+K, D)
        z = torch.tanh(torch.cat(levels, -1))                           # (B, C+K, 3D)
        return self.fc2(F.leaky_relu(self.fc1(z.flatten(1))))           # (B, C)

    def attention_maps(self, features, words, labels):
        """Where each label looks: its attention over positions averaged over the D channels.

        features [f1, f2, f3] from the trunk, words (C, E), labels: class indices (L of them)
        -> [(B, L, h, w)] per level, each map summing to 1.
        """
        local = self.label_semantics(words)[0][list(labels)]                # (L, D)
        maps = []
        for project, feature in zip(self.ProjectM, features):
            x = project(feature).float()                                     # (B, D, h, w)
            b, _, h, w = x.shape
            scores = x.flatten(2).unsqueeze(1) * local[None, :, :, None]    # (B, L, D, P)
            maps.append(scores.softmax(-1).mean(2).view(b, len(local), h, w))
        return maps

    def forward(self, img, inp):
        """img (B, 3, H, W), inp (B, C, E) word vectors (only inp[0] is used) -> (B, C), ()."""
        if inp.dim() != 3 or inp.shape[1:] != (self.num_classes, WORD_DIM):
            raise ValueError(f'word vectors have shape {list(inp.shape)}, expected [batch, {self.num_classes}, {WORD_DIM}]')
        return self.head(self.features(img), inp[0])

    def features(self, img):
        """The trunk's feature maps [f1, f2, f3] of img (B, 3, H, W); through ``torch.compile`` when
        ``compile_trunk`` is set (the label attention, a custom autograd Function, stays eager)."""
        return compiled_trunk(self.resnet_101, img) if self.compile_trunk else self.resnet_101(img)

    def get_config_optim(self, lr):
        """SGD parameter groups: the trunk at lr·0.1, the rest at lr (unused W, B excluded)."""
        trunk = [p for p in self.resnet_101.parameters() if p.requires_grad]
        head = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith('resnet_101.')]
        return [{'params': trunk, 'lr': lr * 0.1}, {'params': head, 'lr': lr}]


MSGDN = MSRN  # the official class name

# torch.compile of a function that takes the trunk as an argument: a copy of the model (the EMA)
# gets its own compiled graph (the function's guards check which module it got), never the
# original's weights. None: not compiled yet; False: compiling failed, eager from then on.
_compiled_call = None
_backward_compiled = False  # set once a training step's backward went through the compiler


def compiled_trunk(trunk, img):
    """``trunk(img)`` through torch.compile; if compiling fails (no C compiler, an operation it does
    not support, an old torch), one warning line and eager mode for the rest of the process."""
    global _compiled_call
    if _compiled_call is None:
        _compiled_call = torch.compile(_call) if hasattr(torch, 'compile') else False
    if _compiled_call is False:
        return trunk(img)
    try:
        features = _compiled_call(trunk, img)
        if torch.is_grad_enabled() and not _backward_compiled:
            _compile_backward(trunk, features)
        return features
    except UsageError:   # bad input (images too small), not a compiler failure
        raise
    except Exception as e:  # torch.compile raises many kinds of errors
        _compiled_call = False
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'warning: torch.compile failed ({type(e).__name__}: {reason}); the trunk runs eagerly',
              file=sys.stderr, flush=True)
        return trunk(img)


def _call(module, x):
    return module(x)


def _compile_backward(trunk, features):
    """torch.compile compiles the backward at the first backward pass, inside the training loop:
    run one now (the trunk's gradients, thrown away; the graph kept for the real one), so that a
    failure there too falls back to eager mode."""
    global _backward_compiled
    params = [p for p in trunk.parameters() if p.requires_grad]
    if params:
        torch.autograd.grad(sum(f.float().sum() for f in features), params, retain_graph=True, allow_unused=True)
    _backward_compiled = True


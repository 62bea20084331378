"""Plain, literal implementations of MSRN formulas, used to check the optimised code.

Written straight from MSRN_SPEC.md, materialising every intermediate; slow and memory-hungry on
purpose. The label attention's literal formula lives beside its fast versions, as
``attention.plain_label_attention``. Shapes as in models.py: B batch, C classes, K label groups,
D = 512, P positions.
"""
import torch
import torch.nn.functional as F

from attention import plain_label_attention


def plain_graph_attention(x, mask, W, a):
    """Graph-attention layer with the explicit [h_i ‖ h_j] pair tensor; x (C, in) -> (C, out)."""
    h = x @ W                                               # (C, out)
    c = h.shape[0]
    pairs = torch.cat([h[:, None, :].expand(c, c, -1), h[None, :, :].expand(c, c, -1)], -1)   # (C, C, 2·out)
    e = F.leaky_relu((pairs @ a).squeeze(-1), 0.2)          # (C, C)
    e = torch.where(mask, e, torch.full_like(e, -1e12))
    return F.elu(F.softmax(e, dim=1) @ h + h)


def plain_label_graph(adj, nums, t=0.4, p=0.25):
    """Normalised adjacency D·Aᵀ·D from counts (all classes must occur); float64 numpy in, torch out."""
    a = torch.as_tensor(adj, dtype=torch.float64) / torch.as_tensor(nums, dtype=torch.float64)[:, None]
    a = (a >= t).double()
    a = a * p / (a.sum(0, keepdim=True) + 1e-6) + torch.eye(len(a), dtype=torch.float64)
    d = torch.diag(a.sum(1) ** -0.5)
    return d @ a.t() @ d


def plain_head(state, features, words, mask):
    """Everything after the trunk, from a head state_dict; returns logits (B, C), group_loss ()."""
    def gat(prefix, x):
        return plain_graph_attention(x, mask, state[prefix + '.W'], state[prefix + '.a'])

    x = words @ state['fc_label.weight'].t() + state['fc_label.bias']
    local = gat('label_embed.layers.1', gat('label_embed.layers.0', x))              # (C, D)
    z = gat('group_embed.layers.0.embed', F.relu(local))
    s = F.softmax(gat('group_embed.layers.0.assign_mat', F.relu(local)), dim=-1)    # (C, K)
    group = s.t() @ z                                                              # (K, D)
    group_loss = 1e-4 * sum(torch.dist(local[i], group[s[i].argmax()]) for i in range(len(local)))
    local_levels, group_levels = [], []
    for level, f in enumerate(features):
        proj = F.conv2d(f, state[f'ProjectM.{level}.weight'], state[f'ProjectM.{level}.bias'])
        x = proj.flatten(2).transpose(1, 2)                                        # (B, P, D)
        local_levels.append(plain_label_attention(x, local))
        group_levels.append(plain_label_attention(x, group))
    z = torch.tanh(torch.cat([torch.cat(local_levels, -1), torch.cat(group_levels, -1)], 1))
    hidden = F.leaky_relu(z.flatten(1) @ state['fc1.weight'].t() + state['fc1.bias'])
    return hidden @ state['fc2.weight'].t() + state['fc2.bias'], group_loss


def average_precision_loop(scores, targets, difficult_examples=True):
    """Plain-loop reference of :func:`average_precision`, element by element on tensors as the
    official meter does but with a stable sort (slow on COCO); ``bench/metrics.py`` times it too."""
    scores, targets = torch.as_tensor(scores).float(), torch.as_tensor(targets).long()
    ap = torch.full((scores.shape[1],), float('nan'), dtype=torch.float64)
    for k in range(scores.shape[1]):
        order = torch.sort(scores[:, k], descending=True, stable=True).indices
        positives, counted, total = 0.0, 0.0, 0.0
        for i in order:
            label = targets[i, k]
            if difficult_examples and label == 0:
                continue
            counted += 1
            if label == 1:
                positives += 1
                total += positives / counted
        if positives:
            ap[k] = total / positives
    return ap

"""Label-guided attention: V[b, n, d] = Σ_p α[b, p, n, d]·x[b, p, d], α = softmax over p of x[b, p, d]·l[n, d].

Every node (label or label group) n attends over the positions p, separately in each channel d,
with its own vector l as the query. Two implementations of the same function
(x (B, P, D), nodes (N, D)) -> (B, N, D):

- ``plain_label_attention``: the official formula, literally; builds (B, P, N, D) tensors.
- ``chunked_label_attention``: PyTorch, a few nodes at a time, closed-form backward.

``lean_label_attention`` (the model's default) computes in float32 (float64 if given) whatever the
autocast state, shifts the exponent arguments by max_p l·x_p (l·max_p x or l·min_p x by the sign
of l, per (b, d) and node) and floors them at EXP_FLOOR; its backward is closed-form:
dV/dl = E_α[x²] − V² and dV/dx_p = α_p·(1 + l·(x_p − V)), both on x centred per (b, d).

Shape legend (as in models.py): B batch, P = H·W feature positions, N nodes attended to (C labels,
K label groups, or C+K), D = 512 label dimension; lower case (b, n) for a chunk of B or N.
"""
import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = {'cpu': 1 << 20}   # work tensor size per step: fits the CPU's L2 cache
DEFAULT_CHUNK_ELEMENTS = 1 << 24    # accelerators: 64 MB steps, few kernel launches
# exp is several times slower on the CPU where its result underflows; e^-80 (1e-35) is already far
# below float32 resolution next to the largest weight, which is 1
EXP_FLOOR = -80.0


def plain_label_attention(x, nodes):
    """The official formula: x (B, P, D), nodes (N, D) -> (B, N, D) via the full (B, P, N, D) softmax."""
    scores = x[:, :, None, :] * nodes[None, None]           # (B, P, N, D)
    alpha = F.softmax(scores, dim=1)                        # softmax over positions
    return (alpha * x[:, :, None, :]).sum(1)                # (B, N, D)


# --------------------------------------------------------------------------------------------
# Chunked PyTorch (CPU)

def _chunks(batch, nodes, per_item, device_type):
    """Yield (batch slice, node slice) pairs whose work tensors hold about the budget of elements."""
    budget = CHUNK_ELEMENTS.get(device_type, DEFAULT_CHUNK_ELEMENTS)
    b_step = max(1, min(batch, budget // max(1, per_item * nodes)))
    n_step = max(1, min(nodes, budget // max(1, per_item * b_step)))
    for b in range(0, batch, b_step):
        for n in range(0, nodes, n_step):
            yield slice(b, b + b_step), slice(n, n + n_step)


def _attention_weights(xt, lt, xmax, xmin):
    """Unnormalised exp(l·x_p − max_p l·x_p): xt (b, D, P), lt (D, n) -> (b, D, n, P)."""
    lt = lt.unsqueeze(0)                                                # (1, D, n)
    shift = torch.where(lt >= 0, lt * xmax.unsqueeze(-1), lt * xmin.unsqueeze(-1))   # (b, D, n)
    logits = torch.addcmul(-shift.unsqueeze(-1), xt.unsqueeze(2), lt.unsqueeze(-1))  # (b, D, n, P)
    return logits.clamp_min_(EXP_FLOOR).exp_()


class _ChunkedAttention(torch.autograd.Function):
    """Never holds a (B, P, N, D) tensor: the weights are built chunk by chunk and reduced at once;
    backward recomputes them from the saved (B, D, N) moments."""

    @staticmethod
    def forward(ctx, x, nodes):
        batch, positions, dim = x.shape
        num_nodes = nodes.shape[0]
        xt = x.transpose(1, 2).contiguous()                  # (B, D, P)
        center = xt.mean(-1, keepdim=True)                   # (B, D, 1)
        xc = xt - center                                     # (B, D, P)
        moments = torch.stack([xc, torch.ones_like(xc), xc * xc], -1)   # (B, D, P, 3)
        xmax, xmin = xt.amax(-1), xt.amin(-1)                # (B, D)
        lt = nodes.t().contiguous()                          # (D, N)
        sums = x.new_empty(batch, dim, num_nodes, 3)         # (B, D, N, 3)
        for bs, ns in _chunks(batch, num_nodes, dim * positions, x.device.type):
            weights = _attention_weights(xt[bs], lt[:, ns], xmax[bs], xmin[bs])   # (b, D, n, P)
            sums[bs, :, ns] = weights @ moments[bs]
        total = sums[..., 1]                                 # (B, D, N)
        mean_c = sums[..., 0] / total                        # E_α[x − c]
        var = sums[..., 2] / total - mean_c * mean_c         # E_α[x²] − V²
        ctx.save_for_backward(xt, center, lt, mean_c, var, total)
        return (mean_c + center).transpose(1, 2)             # (B, N, D)

    @staticmethod
    def backward(ctx, grad_out):
        xt, center, lt, mean_c, var, total = ctx.saved_tensors
        g = grad_out.transpose(1, 2)                         # (B, D, N)
        grad_nodes = (g * var).sum(0).t()                    # (N, D)
        # grad_x[p] = Σ_n α_pn·g_n·(1 − l_n·V'_n) + x'_p·Σ_n α_pn·g_n·l_n, with x' = x − c, V' = V − c
        coeff = torch.stack([g * (1 - lt * mean_c), g * lt], -1) / total.unsqueeze(-1)   # (B, D, N, 2)
        xmax, xmin = xt.amax(-1), xt.amin(-1)
        acc = xt.new_zeros(*xt.shape, 2)                     # (B, D, P, 2)
        for bs, ns in _chunks(xt.shape[0], lt.shape[1], xt.shape[1] * xt.shape[2], xt.device.type):
            weights = _attention_weights(xt[bs], lt[:, ns], xmax[bs], xmin[bs])   # (b, D, n, P)
            acc[bs] += weights.transpose(-1, -2) @ coeff[bs, :, ns]               # (b, D, P, 2)
        grad_x = acc[..., 0] + (xt - center) * acc[..., 1]   # (B, D, P)
        return grad_x.transpose(1, 2), grad_nodes


def chunked_label_attention(x, nodes):
    """Label attention without (B, P, N, D) intermediates, in PyTorch; x (B, P, D), nodes (N, D) -> (B, N, D)."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, nodes.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _ChunkedAttention.apply(x.to(dtype), nodes.to(dtype))


lean_label_attention = chunked_label_attention


ATTENTIONS = {
    'lean': lean_label_attention,        # the default
    'plain': plain_label_attention,      # as the official code: (B, P, N, D) memory
    'chunked': chunked_label_attention,
}

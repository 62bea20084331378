"""Label-guided attention: V[b, n, d] = Σ_p α[b, p, n, d]·x[b, p, d], α = softmax over p of x[b, p, d]·l[n, d].

Every node (label or label group) n attends over the positions p, separately in each channel d,
with its own vector l as the query. Three implementations of the same function
(x (B, P, D), nodes (N, D)) -> (B, N, D):

- ``plain_label_attention``: the official formula, literally; builds (B, P, N, D) tensors.
- ``chunked_label_attention``: PyTorch, a few nodes at a time, closed-form backward; the CPU path.
- ``fused_label_attention``: Triton kernels that keep the exponentials and their sums in registers;
  the CUDA path.

``lean_label_attention`` picks the fused kernels on CUDA and the chunked code elsewhere. Both lean
versions compute in float32 (float64 if given) whatever the autocast state, shift the exponent
arguments by max_p l·x_p (l·max_p x or l·min_p x by the sign of l, per (b, d) and node) and floor
them at EXP_FLOOR, and share one backward: dV/dl = E_α[x²] − V² and dV/dx_p = α_p·(1 + l·(x_p − V)),
both on x centred per (b, d).

Shape legend (as in models.py): B batch, P = H·W feature positions, N nodes attended to (C labels,
K label groups, or C+K), D = 512 label dimension; lower case (b, n) for a chunk of B or N.
"""
import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the chunked code serves every device
    triton = None

CHUNK_ELEMENTS = {'cpu': 1 << 20}   # work tensor size per step: fits the CPU's L2 cache
DEFAULT_CHUNK_ELEMENTS = 1 << 24    # other devices without the kernels: 64 MB steps, few launches
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


# --------------------------------------------------------------------------------------------
# Fused Triton kernels (CUDA; on CPU tensors through Triton's interpreter, TRITON_INTERPRET=1)

FORWARD_BLOCKS = {'BLOCK_N': 16, 'BLOCK_D': 64, 'num_warps': 4}    # one program: (16 nodes, 64 channels)
BACKWARD_BLOCKS = {'BLOCK_P': 32, 'BLOCK_D': 64, 'num_warps': 4}   # one program: (32 positions, 64 channels)

if triton is not None:
    _FLOOR = tl.constexpr(EXP_FLOOR)  # kernels read only constexpr globals

    @triton.jit
    def _forward_kernel(x_ptr, l_ptr, stats_ptr, out_ptr, mean_ptr, var_ptr, total_ptr, P, N, D,
                        sxb, sxp, sxd, sln, sld, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """One program: batch item b, a (BLOCK_N, BLOCK_D) tile of nodes × channels, all P positions.

        Loops over p keeping the three moment sums Σ w, Σ w·x', Σ w·x'² (x' = x − c) of its tile
        in registers; writes V, E_α[x'], Var_α[x] and Σ w, each (B, N, D).
        """
        b = tl.program_id(2)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)               # (n,)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)               # (d,)
        d_ok = d < D
        tile_ok = (n < N)[:, None] & d_ok[None, :]
        l = tl.load(l_ptr + n[:, None] * sln + d[None, :] * sld, mask=tile_ok, other=0.0).to(tl.float32)
        center = tl.load(stats_ptr + (b * 3 + 0) * D + d, mask=d_ok, other=0.0)   # (d,) mean_p x
        xmax = tl.load(stats_ptr + (b * 3 + 1) * D + d, mask=d_ok, other=0.0)
        xmin = tl.load(stats_ptr + (b * 3 + 2) * D + d, mask=d_ok, other=0.0)
        # the position with the largest l·x_p: l·(x_p − peak) <= 0, and as exact as one product
        peak = tl.where(l >= 0, xmax[None, :], xmin[None, :])                 # (n, d)
        s0 = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
        s1 = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
        s2 = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
        x_row = x_ptr + b * sxb + d * sxd
        for p in range(P):
            xp = tl.load(x_row + p * sxp, mask=d_ok, other=0.0).to(tl.float32)   # (d,)
            w = tl.exp(tl.maximum(l * (xp[None, :] - peak), _FLOOR))          # (n, d)
            xc = (xp - center)[None, :]
            wx = w * xc
            s1 += w
            s0 += wx
            s2 += wx * xc
        mean_c = s0 / s1
        offsets = (b * N + n[:, None]) * D + d[None, :]                      # into (B, N, D) contiguous
        tl.store(out_ptr + offsets, mean_c + center[None, :], mask=tile_ok)
        tl.store(mean_ptr + offsets, mean_c, mask=tile_ok)
        tl.store(var_ptr + offsets, s2 / s1 - mean_c * mean_c, mask=tile_ok)
        tl.store(total_ptr + offsets, s1, mask=tile_ok)

    # not specialising the position strides on 1 keeps Triton from laying threads along p, which
    # would give each thread 16 channels and 16 copies of the per-(n, d) loads of every step
    @triton.jit(do_not_specialize=['sxp', 'sop'])
    def _backward_kernel(x_ptr, l_ptr, stats_ptr, g_ptr, mean_ptr, total_ptr, gx_ptr, P, N, D,
                         sxb, sxp, sxd, sln, sld, sgb, sgn, sgd, sob, sop, sod,
                         BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
        """One program: batch item b, a (BLOCK_P, BLOCK_D) tile of positions × channels, all N nodes.

        grad_x[p] = Σ_n w_pn·(c0_n + x'_p·c1_n) with c0 = g·(1 − l·E_α[x'])/Σw, c1 = g·l/Σw: the
        weights w are recomputed node by node and both sums stay in registers.
        """
        b = tl.program_id(2)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)               # (p,)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)               # (d,)
        d_ok = d < D
        tile_ok = (p < P)[:, None] & d_ok[None, :]
        center = tl.load(stats_ptr + (b * 3 + 0) * D + d, mask=d_ok, other=0.0)
        xmax = tl.load(stats_ptr + (b * 3 + 1) * D + d, mask=d_ok, other=0.0)
        xmin = tl.load(stats_ptr + (b * 3 + 2) * D + d, mask=d_ok, other=0.0)
        x = tl.load(x_ptr + b * sxb + p[:, None] * sxp + d[None, :] * sxd, mask=tile_ok, other=0.0).to(tl.float32)
        x = tl.where(tile_ok, x, xmin[None, :])   # padding inside [min, max]: its exponents stay <= 0
        acc0 = tl.full((BLOCK_P, BLOCK_D), 0.0, tl.float32)
        acc1 = tl.full((BLOCK_P, BLOCK_D), 0.0, tl.float32)
        for n in range(N):
            l = tl.load(l_ptr + n * sln + d * sld, mask=d_ok, other=0.0).to(tl.float32)   # (d,)
            g = tl.load(g_ptr + b * sgb + n * sgn + d * sgd, mask=d_ok, other=0.0).to(tl.float32)
            moment = (b * N + n) * D + d
            mean_c = tl.load(mean_ptr + moment, mask=d_ok, other=0.0)
            total = tl.load(total_ptr + moment, mask=d_ok, other=1.0)
            c1 = g * l / total
            c0 = g / total - c1 * mean_c
            peak = tl.where(l >= 0, xmax, xmin)
            w = tl.exp(tl.maximum(l[None, :] * (x - peak[None, :]), _FLOOR))   # (p, d)
            acc0 += w * c0[None, :]
            acc1 += w * c1[None, :]
        grad = acc0 + (x - center[None, :]) * acc1
        out = gx_ptr + b * sob + p[:, None] * sop + d[None, :] * sod
        tl.store(out, grad.to(gx_ptr.dtype.element_ty), mask=tile_ok)


class _FusedAttention(torch.autograd.Function):
    """One Triton kernel each way, one program per batch item and tile of (nodes × channels) forward,
    (positions × channels) backward; x is read in its own dtype and layout (float16 under autocast)
    and widened to float32 in registers. Saves x, (B, D) statistics and (B, N, D) moments."""

    @staticmethod
    def forward(ctx, x, nodes):
        batch, positions, dim = x.shape
        num_nodes = nodes.shape[0]
        xmin, xmax = torch.aminmax(x, dim=1)                                  # (B, D)
        center = x.sum(1, dtype=torch.float32) / positions                    # (B, D)
        stats = torch.stack([center, xmax.float(), xmin.float()], 1)          # (B, 3, D)
        out, mean_c, var, total = (x.new_empty(batch, num_nodes, dim, dtype=torch.float32) for _ in range(4))
        blocks = FORWARD_BLOCKS
        grid = (triton.cdiv(num_nodes, blocks['BLOCK_N']), triton.cdiv(dim, blocks['BLOCK_D']), batch)
        _forward_kernel[grid](x, nodes, stats, out, mean_c, var, total, positions, num_nodes, dim,
                              *x.stride(), *nodes.stride(), **blocks)
        ctx.save_for_backward(x, nodes, stats, mean_c, var, total)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, nodes, stats, mean_c, var, total = ctx.saved_tensors
        grad_x = grad_nodes = None
        if ctx.needs_input_grad[1]:
            grad_nodes = (grad_out * var).sum(0).to(nodes.dtype)             # (N, D)
        if ctx.needs_input_grad[0]:
            batch, positions, dim = x.shape
            grad_x = torch.empty_like(x)                                      # x's dtype and layout
            blocks = BACKWARD_BLOCKS
            grid = (triton.cdiv(positions, blocks['BLOCK_P']), triton.cdiv(dim, blocks['BLOCK_D']), batch)
            _backward_kernel[grid](x, nodes, stats, grad_out, mean_c, total, grad_x, positions, nodes.shape[0],
                                   dim, *x.stride(), *nodes.stride(), *grad_out.stride(), *grad_x.stride(),
                                   **blocks)
        return grad_x, grad_nodes


def fused_label_attention(x, nodes):
    """Label attention as two Triton kernels; x (B, P, D) float16, bfloat16 or float32 (any layout),
    nodes (N, D) -> (B, N, D) float32. Needs Triton; CUDA tensors (CPU ones under TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError('fused_label_attention needs Triton (pip install triton)')
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _FusedAttention.apply(x, nodes)


def lean_label_attention(x, nodes):
    """Label attention without (B, P, N, D) intermediates: the fused kernels for CUDA tensors below
    float64, the chunked PyTorch code otherwise; x (B, P, D), nodes (N, D) -> (B, N, D) float32 or float64."""
    if x.is_cuda and triton is not None and torch.float64 not in (x.dtype, nodes.dtype):
        return fused_label_attention(x, nodes)
    return chunked_label_attention(x, nodes)


ATTENTIONS = {
    'lean': lean_label_attention,        # the default
    'plain': plain_label_attention,      # as the official code: (B, P, N, D) memory
    'chunked': chunked_label_attention,  # lean, forced to one implementation (tests, benchmarks)
    'fused': fused_label_attention,
}

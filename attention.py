"""Label-guided attention: V[b, n, d] = Σ_p α[b, p, n, d]·x[b, p, d], α = softmax over p of x[b, p, d]·l[n, d].

Every node (label or label group) n attends over the positions p, separately in each channel d,
with its own vector l as the query. Three implementations of the same function
(x (B, P, D), nodes (N, D)) -> (B, N, D), and the default that picks one:

- ``plain_label_attention``: the official formula, literally; builds (B, P, N, D) tensors.
- ``chunked_label_attention``: PyTorch, a few nodes at a time, closed-form backward; the CPU path.
- ``fused_label_attention``: Triton kernels that keep the exponentials and their sums in registers;
  the CUDA path. Raises where the kernels cannot run.
- ``auto_label_attention`` (the default): the fused kernels for CUDA (or ROCm) tensors once they have
  passed a check in this process (``kernels_usable``), the chunked code otherwise.

Both lean versions compute in float32 (float64 if given) whatever the autocast state, and share one
formulation. Per (b, d) and node, each position enters through its offset y_p = x_p − peak from the
peak, the x_p with the largest l·x_p (max_p x or min_p x by the sign of l): the exponent arguments
l·y_p are <= 0 (floored at EXP_FLOOR). Forward takes two passes over the positions: about the peak
(Σ w, E_α[y], a first V), then about that V (its correction, and Var_α[y] = E_α[(x − V)²] with no
E[x²] − E[x]² to cancel); backward uses dV/dl = Var_α[y] and dV/dx_p = α_p·(1 + l·(y_p − E_α[y])).
Sums over positions are taken in pieces (torch's cascade sum; blocks of SUM_BLOCK positions in the
kernels), not as one running total of P terms. At full size, on inputs like a trained network's,
output and gradients stay within 1e-6 of the float64 formula, relative to each tensor's largest
value (tests/test_attention.py asserts 3e-5).

Shape legend (as in models.py): B batch, P = H·W feature positions, N nodes attended to (C labels,
K label groups, or C+K), D = 512 label dimension; lower case (b, n) for a chunk of B or N.
"""
import contextlib
import math
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# work tensor size per step; on the CPU per thread (up to 8): 2 MB each was the fastest on a
# 2-core EPYC, and fewer, larger steps synchronise the threads less often (costly on a busy machine)
CHUNK_ELEMENTS = {'cpu': 1 << 19}
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

def _chunk_steps(batch, nodes, per_item, device_type):
    """(batch step, node step) whose work tensors (b, D, n, P) hold about the budget of elements."""
    budget = CHUNK_ELEMENTS.get(device_type, DEFAULT_CHUNK_ELEMENTS)
    if device_type == 'cpu':
        budget *= min(torch.get_num_threads(), 8)
    b_step = max(1, min(batch, budget // max(1, per_item * nodes)))
    return b_step, max(1, min(nodes, budget // max(1, per_item * b_step)))


def _chunks(batch, nodes, steps):
    """(batch slice, node slice) pairs covering batch × nodes in the given steps."""
    b_step, n_step = steps
    return [(slice(b, b + b_step), slice(n, n + n_step)) for b in range(0, batch, b_step)
            for n in range(0, nodes, n_step)]


def _workspace(xt, num_nodes, count):
    """The chunks over (B, N) for xt (B, D, P) and ``count`` flat buffers that hold one work tensor
    each: reused from chunk to chunk, as a fresh large allocation costs page faults each time."""
    batch, dim, positions = xt.shape
    steps = _chunk_steps(batch, num_nodes, dim * positions, xt.device.type)
    return _chunks(batch, num_nodes, steps), xt.new_empty(count, steps[0] * steps[1] * dim * positions)


def _cut(buffer, shape):
    """The first elements of a flat buffer, as a tensor of ``shape``."""
    return buffer[:math.prod(shape)].view(shape)


def _peaks(lt, xmax, xmin):
    """x at the largest l·x_p: lt (D, n), xmax, xmin (b, D) -> (b, D, n)."""
    return torch.where(lt >= 0, xmax.unsqueeze(-1), xmin.unsqueeze(-1))


def _offsets_and_weights(xt, lt, peak, space):
    """Offsets from the peak y_p = x_p − peak and unnormalised weights exp(l·y_p), floored, in the
    buffers space[0] and space[1]: xt (b, D, P), lt (D, n), peak (b, D, n) -> both (b, D, n, P)."""
    shape = (xt.shape[0], xt.shape[1], lt.shape[1], xt.shape[2])
    y = torch.sub(xt.unsqueeze(2), peak.unsqueeze(-1), out=_cut(space[0], shape))   # l·y <= 0
    weights = torch.mul(y, lt.unsqueeze(-1), out=_cut(space[1], shape))
    return y, weights.clamp_min_(EXP_FLOOR).exp_()                        # clamp and exp keep NaN


class _ChunkedAttention(torch.autograd.Function):
    """Never holds a (B, P, N, D) tensor: the weights are built chunk by chunk and reduced at once;
    backward recomputes them from the saved (B, D, N) moments."""

    @staticmethod
    def forward(ctx, x, nodes, keep_var):
        batch, positions, dim = x.shape
        num_nodes = nodes.shape[0]
        xt = x.transpose(1, 2).contiguous()                  # (B, D, P)
        xmax, xmin = xt.amax(-1), xt.amin(-1)                # (B, D); NaN if any x is
        lt = nodes.t().contiguous()                          # (D, N)
        out, mean_y, var, total = (x.new_empty(batch, dim, num_nodes) for _ in range(4))   # (B, D, N)
        chunks, space = _workspace(xt, num_nodes, 3)
        for bs, ns in chunks:
            peak = _peaks(lt[:, ns], xmax[bs], xmin[bs])                   # (b, D, n)
            y, weights = _offsets_and_weights(xt[bs], lt[:, ns], peak, space)   # (b, D, n, P)
            t = total[bs, :, ns] = weights.sum(-1)
            first = peak + torch.mul(weights, y, out=_cut(space[2], y.shape)).sum(-1) / t   # V = peak + E_α[y]
            # second pass about that V: corrects it, and gives Var_α without E[y²] − E[y]² cancelling
            dev = torch.sub(xt[bs].unsqueeze(2), first.unsqueeze(-1), out=y)   # x_p − V
            weighted = weights.mul_(dev)
            shift = weighted.sum(-1) / t
            out[bs, :, ns] = first + shift
            mean_y[bs, :, ns] = (first - peak) + shift       # first as rounded: shift corrects that value
            if keep_var:
                var[bs, :, ns] = weighted.mul_(dev).sum(-1) / t - shift * shift
        ctx.save_for_backward(xt, lt, mean_y, var if keep_var else None, total)
        return out.transpose(1, 2)                           # (B, N, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xt, lt, mean_y, var, total = ctx.saved_tensors
        g = grad_out.transpose(1, 2)                         # (B, D, N)
        grad_x = grad_nodes = None
        if ctx.needs_input_grad[1]:
            grad_nodes = (g * var).sum(0).t()                # (N, D)
        if ctx.needs_input_grad[0]:
            # grad_x[p] = Σ_n α_pn·g_n·(1 + l_n·(y_pn − E_α[y]_n)) = Σ_n w_pn·(c0_n + c1_n·y_pn)
            c1 = g * lt / total                              # (B, D, N)
            c0 = g / total - c1 * mean_y
            xmax, xmin = xt.amax(-1), xt.amin(-1)
            acc = torch.zeros_like(xt)                       # (B, D, P)
            chunks, space = _workspace(xt, lt.shape[1], 3)
            for bs, ns in chunks:
                y, weights = _offsets_and_weights(xt[bs], lt[:, ns], _peaks(lt[:, ns], xmax[bs], xmin[bs]), space)
                terms = torch.addcmul(c0[bs, :, ns, None], y, c1[bs, :, ns, None], out=_cut(space[2], y.shape))
                b, dim, _, positions = y.shape               # y's buffer is free from here
                acc[bs] += torch.sum(terms.mul_(weights), 2, out=_cut(space[0], (b, dim, positions)))
            grad_x = acc.transpose(1, 2)
        return grad_x, grad_nodes, None


def chunked_label_attention(x, nodes):
    """Label attention without (B, P, N, D) intermediates, in PyTorch; x (B, P, D), nodes (N, D) -> (B, N, D)."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, nodes.dtype), torch.float32)
    keep_var = torch.is_grad_enabled() and nodes.requires_grad   # dV/dl's moment: not needed for eval
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _ChunkedAttention.apply(x.to(dtype), nodes.to(dtype), keep_var)


# --------------------------------------------------------------------------------------------
# Fused Triton kernels (CUDA; on CPU tensors through Triton's interpreter, TRITON_INTERPRET=1)

FORWARD_BLOCKS = {'BLOCK_N': 16, 'BLOCK_D': 64, 'num_warps': 4}    # one program: (16 nodes, 64 channels)
BACKWARD_BLOCKS = {'BLOCK_P': 32, 'BLOCK_D': 64, 'num_warps': 4}   # one program: (32 positions, 64 channels)
SUM_BLOCK = 32   # positions summed into a partial sum before it joins the total (forward kernel)


def _one_line(error):
    """'Type: first line of the message', short: a compiler's error runs to pages."""
    lines = str(error).strip().splitlines()
    text = type(error).__name__ + (f': {lines[0].strip()}' if lines else '')
    return text if len(text) <= 200 else text[:197] + '...'


try:  # missing or broken (any error: a failing import, no source for the JIT) only disables the kernels
    import triton
    import triton.language as tl

    _FLOOR = tl.constexpr(EXP_FLOOR)  # kernels read only constexpr globals

    @triton.jit
    def _moments(x_row, sxp, d_ok, l, peak, centre, P, SUM_BLOCK: tl.constexpr):
        """Σ_p w, Σ_p w·(x_p − c), Σ_p w·(x_p − c)² over one (n, d) tile's positions, with
        w = exp(l·(x_p − peak)) floored (a NaN stays NaN: tl.maximum alone would drop it) and c the
        centre; SUM_BLOCK positions at a time, as one running total would round each addition at
        the total's magnitude."""
        s0 = tl.zeros_like(peak)
        s1 = tl.zeros_like(peak)
        s2 = tl.zeros_like(peak)
        for start in range(0, P, SUM_BLOCK):
            t0 = tl.zeros_like(peak)
            t1 = tl.zeros_like(peak)
            t2 = tl.zeros_like(peak)
            for p in range(start, tl.minimum(start + SUM_BLOCK, P)):
                xp = tl.load(x_row + p * sxp, mask=d_ok, other=0.0).to(tl.float32)[None, :]   # (1, d)
                w = tl.exp(tl.maximum(l * (xp - peak), _FLOOR, propagate_nan=tl.PropagateNan.ALL))   # (n, d)
                dev = xp - centre
                wd = w * dev
                t0 += w
                t1 += wd
                t2 += wd * dev
            s0 += t0
            s1 += t1
            s2 += t2
        return s0, s1, s2

    @triton.jit
    def _forward_kernel(x_ptr, l_ptr, stats_ptr, out_ptr, mean_ptr, var_ptr, total_ptr, P, N, D,
                        sxb, sxp, sxd, sln, sld, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        SUM_BLOCK: tl.constexpr):
        """One program: batch item b, a (BLOCK_N, BLOCK_D) tile of nodes × channels, all P positions.

        Two passes over p, the moment sums of its tile in registers: about the peak (Σ w, E_α[y]:
        a first V), then about that V (its correction and Var_α, without E[y²] − E[y]² cancelling);
        writes V, E_α[y], Var_α[y] and Σ w, each (B, N, D).
        """
        b = tl.program_id(2)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)               # (n,)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)               # (d,)
        d_ok = d < D
        tile_ok = (n < N)[:, None] & d_ok[None, :]
        l = tl.load(l_ptr + n[:, None] * sln + d[None, :] * sld, mask=tile_ok, other=0.0).to(tl.float32)
        xmax = tl.load(stats_ptr + (b * 2 + 0) * D + d, mask=d_ok, other=0.0)   # (d,)
        xmin = tl.load(stats_ptr + (b * 2 + 1) * D + d, mask=d_ok, other=0.0)
        peak = tl.where(l >= 0, xmax[None, :], xmin[None, :])                 # (n, d)
        x_row = x_ptr + b * sxb + d * sxd
        total, s1, _ = _moments(x_row, sxp, d_ok, l, peak, peak, P, SUM_BLOCK)
        first = peak + s1 / total                                             # V = peak + E_α[y], first pass
        _, r1, r2 = _moments(x_row, sxp, d_ok, l, peak, first, P, SUM_BLOCK)
        shift = r1 / total
        offsets = (b * N + n[:, None]) * D + d[None, :]                      # into (B, N, D) contiguous
        tl.store(out_ptr + offsets, first + shift, mask=tile_ok)
        tl.store(mean_ptr + offsets, (first - peak) + shift, mask=tile_ok)   # shift corrects first as rounded
        tl.store(var_ptr + offsets, r2 / total - shift * shift, mask=tile_ok)
        tl.store(total_ptr + offsets, total, mask=tile_ok)

    # not specialising the position strides on 1 keeps Triton from laying threads along p, which
    # would give each thread 16 channels and 16 copies of the per-(n, d) loads of every step
    @triton.jit(do_not_specialize=['sxp', 'sop'])
    def _backward_kernel(x_ptr, l_ptr, stats_ptr, g_ptr, mean_ptr, total_ptr, gx_ptr, P, N, D,
                         sxb, sxp, sxd, sln, sld, sgb, sgn, sgd, sob, sop, sod,
                         BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
        """One program: batch item b, a (BLOCK_P, BLOCK_D) tile of positions × channels, all N nodes.

        grad_x[p] = Σ_n w_pn·(c0_n + c1_n·y_pn) with c1 = g·l/Σw, c0 = g/Σw − c1·E_α[y]: the
        weights w are recomputed node by node and the sum stays in registers.
        """
        b = tl.program_id(2)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)               # (p,)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)               # (d,)
        d_ok = d < D
        tile_ok = (p < P)[:, None] & d_ok[None, :]
        xmax = tl.load(stats_ptr + (b * 2 + 0) * D + d, mask=d_ok, other=0.0)
        xmin = tl.load(stats_ptr + (b * 2 + 1) * D + d, mask=d_ok, other=0.0)
        x = tl.load(x_ptr + b * sxb + p[:, None] * sxp + d[None, :] * sxd, mask=tile_ok, other=0.0).to(tl.float32)
        x = tl.where(tile_ok, x, xmin[None, :])   # padding inside [min, max]: its exponents stay <= 0
        acc = tl.full((BLOCK_P, BLOCK_D), 0.0, tl.float32)
        for n in range(N):
            l = tl.load(l_ptr + n * sln + d * sld, mask=d_ok, other=0.0).to(tl.float32)   # (d,)
            g = tl.load(g_ptr + b * sgb + n * sgn + d * sgd, mask=d_ok, other=0.0).to(tl.float32)
            moment = (b * N + n) * D + d
            mean_y = tl.load(mean_ptr + moment, mask=d_ok, other=0.0)
            total = tl.load(total_ptr + moment, mask=d_ok, other=1.0)
            c1 = g * l / total
            c0 = g / total - c1 * mean_y
            y = x - tl.where(l >= 0, xmax, xmin)[None, :]                      # (p, d)
            w = tl.exp(tl.maximum(l[None, :] * y, _FLOOR, propagate_nan=tl.PropagateNan.ALL))
            acc += w * (c0[None, :] + c1[None, :] * y)
        out = gx_ptr + b * sob + p[:, None] * sop + d[None, :] * sod
        tl.store(out, acc.to(gx_ptr.dtype.element_ty), mask=tile_ok)
except Exception as error:
    triton, TRITON_UNAVAILABLE = None, _one_line(error)
    if not isinstance(error, ImportError) and 'triton' not in sys.modules:
        # later imports find it absent instead of failing again: torch's own probe (run when
        # torchvision loads torch._dynamo) catches only ImportError
        sys.modules['triton'] = None
else:
    TRITON_UNAVAILABLE = None   # why the kernels cannot run here, when they cannot


def _launching_on(device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == 'cuda' else contextlib.nullcontext()


class _FusedAttention(torch.autograd.Function):
    """One Triton kernel each way, one program per batch item and tile of (nodes × channels) forward,
    (positions × channels) backward; x is read in its own dtype and layout (float16 under autocast)
    and widened to float32 in registers. Saves x, (B, 2, D) statistics and (B, N, D) moments."""

    @staticmethod
    def forward(ctx, x, nodes):
        batch, positions, dim = x.shape
        num_nodes = nodes.shape[0]
        xmin, xmax = torch.aminmax(x, dim=1)                                  # (B, D); NaN if any x is
        stats = torch.stack([xmax, xmin], 1).float()                          # (B, 2, D)
        out, mean_y, var, total = (x.new_empty(batch, num_nodes, dim, dtype=torch.float32) for _ in range(4))
        blocks = FORWARD_BLOCKS
        grid = (triton.cdiv(num_nodes, blocks['BLOCK_N']), triton.cdiv(dim, blocks['BLOCK_D']), batch)
        with _launching_on(x.device):
            _forward_kernel[grid](x, nodes, stats, out, mean_y, var, total, positions, num_nodes, dim,
                                  *x.stride(), *nodes.stride(), SUM_BLOCK=SUM_BLOCK, **blocks)
        ctx.save_for_backward(x, nodes, stats, mean_y, var, total)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, nodes, stats, mean_y, var, total = ctx.saved_tensors
        grad_x = grad_nodes = None
        if ctx.needs_input_grad[1]:
            grad_nodes = (grad_out * var).sum(0).to(nodes.dtype)             # (N, D)
        if ctx.needs_input_grad[0]:
            batch, positions, dim = x.shape
            grad_x = torch.empty_like(x)                                      # x's dtype and layout
            blocks = BACKWARD_BLOCKS
            grid = (triton.cdiv(positions, blocks['BLOCK_P']), triton.cdiv(dim, blocks['BLOCK_D']), batch)
            with _launching_on(x.device):
                _backward_kernel[grid](x, nodes, stats, grad_out, mean_y, total, grad_x, positions,
                                       nodes.shape[0], dim, *x.stride(), *nodes.stride(), *grad_out.stride(),
                                       *grad_x.stride(), **blocks)
        return grad_x, grad_nodes


def fused_label_attention(x, nodes):
    """Label attention as two Triton kernels; x (B, P, D) float16, bfloat16 or float32 (any layout),
    nodes (N, D) -> (B, N, D) float32. Needs Triton; CUDA tensors (CPU ones under TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError(f'fused_label_attention needs a working Triton (pip install triton): {TRITON_UNAVAILABLE}')
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _FusedAttention.apply(x, nodes)


# --------------------------------------------------------------------------------------------
# The default: the kernels where they apply and work, the chunked code otherwise

CHECK_SHAPE = (2, 37, 20, 80)   # (B, P, N, D): partial tiles of every kernel block
CHECK_TOLERANCE = 1e-4          # of each tensor's largest value; both sides compute in float32
_KERNELS_USABLE = {}            # device -> whether the kernels passed their check there


def _kernels_apply(x, nodes):
    """Whether the fused kernels are meant for these inputs: CUDA (or ROCm) tensors below float64."""
    return triton is not None and x.is_cuda and torch.float64 not in (x.dtype, nodes.dtype)


def _outputs_and_grads(fn, x, nodes, grad):
    """fn(x, nodes) and its gradients for the output gradient ``grad``."""
    x, nodes = x.detach().requires_grad_(), nodes.detach().requires_grad_()
    out = fn(x, nodes)
    return (out, *torch.autograd.grad(out, (x, nodes), grad))


def _check_kernels(device):
    """Why the fused kernels cannot serve ``device`` (one line), or None: they must compile, run
    forward and backward on a small input, and agree with the chunked code."""
    batch, positions, num_nodes, dim = CHECK_SHAPE
    gen = torch.Generator().manual_seed(0)
    # whatever the caller's mode (eval under no_grad or inference_mode, autocast), as in training
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        x = (torch.randn(batch, dim, positions, generator=gen) * 3).transpose(1, 2).to(device)   # the model's layout
        nodes = torch.randn(num_nodes, dim, generator=gen).to(device)
        grad = torch.randn(batch, num_nodes, dim, generator=gen).to(device)
        try:
            got = _outputs_and_grads(fused_label_attention, x, nodes, grad)
        except Exception as error:  # a compiler, a driver, a missing header...
            return _one_line(error)
        want = _outputs_and_grads(chunked_label_attention, x, nodes, grad)
    for name, g, w in zip(('output', 'grad_x', 'grad_nodes'), got, want):
        error = ((g - w).abs().max() / w.abs().max()).item()
        if not error <= CHECK_TOLERANCE:   # NaN fails too
            return f'their {name} differs from the chunked code by {error:.1e} of its largest value'
    return None


def kernels_usable(device):
    """Whether the fused kernels work on ``device``; checked the first time it is asked in this
    process. A failed check warns once (one line) and leaves the chunked code for good."""
    if device not in _KERNELS_USABLE:
        reason = _check_kernels(device)
        if reason:
            warnings.warn(f'label attention: the fused Triton kernels failed their check on {device} ({reason}); '
                          'using the chunked PyTorch code instead', RuntimeWarning, stacklevel=3)
        _KERNELS_USABLE[device] = reason is None
    return _KERNELS_USABLE[device]


def auto_label_attention(x, nodes):
    """The default: the fused kernels for CUDA (or ROCm) tensors below float64 once they have passed
    their check on that device (``kernels_usable``), the chunked code otherwise;
    x (B, P, D), nodes (N, D) -> (B, N, D) float32 or float64."""
    if _kernels_apply(x, nodes) and kernels_usable(x.device):
        return fused_label_attention(x, nodes)
    return chunked_label_attention(x, nodes)


ATTENTIONS = {
    'auto': auto_label_attention,        # the default
    'fused': fused_label_attention,      # the kernels or an error (no fallback)
    'chunked': chunked_label_attention,  # the CPU path, forced (tests, benchmarks)
    'plain': plain_label_attention,      # as the official code: (B, P, N, D) memory
}

"""One code path for 1 or N processes: torchrun's environment, rank-0-only output, and the
collectives the engine needs (a mean of scalars, an in-order gather of evaluation scores)."""
import builtins
import os

import torch
import torch.distributed as dist

from errors import UsageError


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def get_rank():
    return dist.get_rank() if is_dist() else 0


def is_main_process():
    return get_rank() == 0


def _print_only_on_main():
    """Silence ``print`` on ranks > 0 (``print(..., force=True)`` still prints), as DETR does."""
    builtin_print = builtins.print

    def print_(*args, force=False, **kwargs):
        if force or is_main_process():
            builtin_print(*args, **kwargs)

    builtins.print = print_


def init_distributed_mode(device='auto'):
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
    if any, and return this process's device.

    ``device``: 'auto' (CUDA when available), 'cuda' or 'cpu'. Backend: NCCL on CUDA, gloo on CPU.
    Without torchrun (or with WORLD_SIZE=1) nothing is initialised: a single process.
    """
    if device not in ('auto', 'cuda', 'cpu'):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', not {device!r}")
    if device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda was asked for, but CUDA is not available; use --device cpu')
    use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
    if int(os.environ.get('WORLD_SIZE', 1)) > 1 and not is_dist():
        if use_cuda:
            torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
        dist.init_process_group('nccl' if use_cuda else 'gloo', init_method='env://')
        _print_only_on_main()
    return torch.device('cuda', torch.cuda.current_device()) if use_cuda else torch.device('cpu')


def _collective_device():
    return torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')


def mean_over_processes(value):
    """Mean of a float over all processes (the value itself in a single process)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.item() / get_world_size()


def gather_in_order(tensor, num_samples):
    """All processes' rows, in the order of the sampler they came from, with padding dropped.

    ``tensor`` [n, ...] holds, in order, the rows of the indices a ``DistributedSampler``
    (``drop_last=False``) gave this rank: rank r gets positions r, r + W, r + 2W, ... of the
    sampler's list, padded by repeating its start up to a multiple of W. Interleaving the ranks'
    rows restores that list; its first ``num_samples`` rows are the dataset, each sample once (in
    dataset order when ``shuffle=False``), so metrics equal a single-process evaluation's.
    """
    if not is_dist():
        return tensor[:num_samples]
    device = _collective_device()
    local = tensor.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(parts, local)
    return torch.stack(parts, dim=1).flatten(0, 1)[:num_samples].to(tensor.device)


def all_gather_objects(obj):
    """Every process's ``obj`` (picklable), in rank order: ``[obj]`` in a single process."""
    if not is_dist():
        return [obj]
    objects = [None] * get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_buffers(module):
    """Give every process rank 0's buffers of ``module`` (no-op in a single process)."""
    if is_dist():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier():
    """Wait for every process (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def cleanup():
    """Leave the process group once every process got here (a rank that tears down gloo while
    another still talks to it can abort)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()

"""One code path for 1 or N processes: torchrun's environment, rank-0-only output, and the
collectives the engine needs (a mean of scalars, an agreement on stopping, an in-order gather of
scores).

Joining the process group survives torchrun's elastic restarts. torchrun's agent hosts one
TCPStore for its whole life, and every generation of workers meets in it under the same keys, so
a restarted worker could read the address of a dead one and wait for it forever, or be refused
(gloo's connectFullMesh). Each generation therefore agrees on a fresh key prefix first
(``_generation_prefix``), and joining is bounded in time: a restart that cannot connect fails
with one line.
"""
import builtins
import datetime
import os
import time
import uuid

import torch
import torch.distributed as dist

from errors import DistributedError, UsageError

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # once joined: a checkpoint write may keep the others waiting


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


def init_distributed_mode(device='auto', connect_timeout=120):
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
    if any, and return this process's device.

    ``device``: 'auto' (CUDA when available), 'cuda' or 'cpu'. Backend: NCCL on CUDA, gloo on CPU.
    Without torchrun (or with WORLD_SIZE=1) nothing is initialised: a single process.
    ``connect_timeout``: seconds to wait for every process to join; then a DistributedError.
    """
    if device not in ('auto', 'cuda', 'cpu'):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', not {device!r}")
    if device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda was asked for, but CUDA is not available; use --device cpu')
    use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
    if int(os.environ.get('WORLD_SIZE', 1)) > 1 and not is_dist():
        if use_cuda:
            torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
        _join('nccl' if use_cuda else 'gloo', connect_timeout)
        _print_only_on_main()
    return torch.device('cuda', torch.cuda.current_device()) if use_cuda else torch.device('cpu')


def _join(backend, connect_timeout):
    """init_process_group through torchrun's store, under a key prefix of this generation's own."""
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    timeout = datetime.timedelta(seconds=connect_timeout)
    deadline = time.monotonic() + connect_timeout
    try:
        # torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE); else rank 0 does
        hosted_by_agent = os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True'
        store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), world_size,
                              is_master=rank == 0 and not hosted_by_agent, timeout=timeout, wait_for_workers=False,
                              multi_tenant=True)
        run = dist.PrefixStore(f"msrn/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}", store)
        prefix = _generation_prefix(dist.PrefixStore('join', run), rank, world_size, deadline)
        dist.init_process_group(backend, store=dist.PrefixStore(prefix, run), rank=rank, world_size=world_size,
                                timeout=timeout)
    except (RuntimeError, TimeoutError, OSError) as e:   # what the store and gloo raise
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(
            f'process {rank} of {world_size} could not join the others within {connect_timeout} s ({reason}); '
            'check that every node started and reaches MASTER_ADDR / the rendezvous endpoint, or raise '
            '--connect-timeout') from e
    dist.set_timeout(COLLECTIVE_TIMEOUT)


def _generation_prefix(store, rank, world_size, deadline, poll=0.05):
    """A key prefix that every process of this generation agrees on, made fresh by rank 0.

    The store outlives the processes (torchrun's agent keeps it across restarts), so any value in
    it may be a dead generation's, and restart counts differ between machines. A value is trusted
    only when it carries a token this process has just made: rank r > 0 posts hello/r = its token;
    rank 0 answers every new hello with ack/r = 'hello:prefix'; rank r takes the prefix from the
    ack of its own token and confirms with done/r = 'token:prefix'; rank 0 goes on once every rank
    confirmed its prefix. torchrun starts a generation only after the last one has exited."""
    mine = uuid.uuid4().hex
    if rank > 0:
        store.set(f'hello/{rank}', mine)
        while True:
            if store.check([f'ack/{rank}']):
                hello, _, prefix = store.get(f'ack/{rank}').decode().partition(':')
                if hello == mine:
                    store.set(f'done/{rank}', f'{mine}:{prefix}')
                    return prefix
            if time.monotonic() > deadline:
                raise TimeoutError('process 0 of this generation did not answer')
            time.sleep(poll)
    answered, waiting = {}, set(range(1, world_size))
    while waiting:
        for r in sorted(waiting):
            if store.check([f'hello/{r}']):
                hello = store.get(f'hello/{r}').decode()
                if answered.get(r) != hello:
                    store.set(f'ack/{r}', f'{hello}:{mine}')
                    answered[r] = hello
            if store.check([f'done/{r}']) and store.get(f'done/{r}').decode().endswith(f':{mine}'):
                waiting.discard(r)
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f'processes {sorted(waiting)} did not join this generation')
        time.sleep(poll)
    return mine


def agree(*flags):
    """Whether any process raised each flag (one all-reduce; the flags themselves in a single process)."""
    if not is_dist():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(bool(f)) for f in flags], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


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
    another still talks to it can abort); a process that died is not waited for."""
    if is_dist():
        try:
            dist.barrier()
        except RuntimeError:   # a dead peer: its failure is reported already, by it and by torchrun
            pass
        dist.destroy_process_group()

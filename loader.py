"""What an epoch loads, in which order, and from where a resumed epoch goes on.

- ``EpochSampler``: this process's share of an epoch, dealt as DistributedSampler deals it (the
  same order), but able to start at any position of the epoch, so that a resume skips what was
  consumed by index, without loading it. A position counts samples of the whole epoch: after k
  steps of W processes with batches of B, the first k·B·W entries of the epoch's padded order.
- Augmentation seeds: in loader processes (``-j`` > 0) every sample is augmented with its own
  seed, a function of the run's loader seed, the epoch and the sample's position, so a resumed
  epoch draws what the interrupted one would have drawn. In the main process (``-j 0``) the
  augmentation draws from the process's generators, as the official code did; ``DataLoaderX``
  records their state after each batch for a mid-epoch checkpoint.
"""
import hashlib
import math
import queue
import random
import threading

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from util import get_rng_state, set_rng_state


def padded_order(permutation, world_size):
    """The epoch's order as DistributedSampler pads it: ``permutation`` repeated from its start
    up to a multiple of ``world_size``."""
    total = math.ceil(len(permutation) / world_size) * world_size
    return (permutation * math.ceil(total / max(len(permutation), 1)))[:total] if permutation else []


def sample_seed(loader_seed, epoch, position):
    """The augmentation seed of the sample at ``position`` of ``epoch`` (63 bits)."""
    digest = hashlib.blake2b(f'{loader_seed}/{epoch}/{position}'.encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') >> 1


class EpochSampler(Sampler):
    """This process's share (``rank`` of ``world_size``) of a dataset of ``size`` samples, shuffled by
    ``seed`` + epoch (``shuffle``) or in order, as DistributedSampler deals it: rank r takes the
    positions r, r + W, ... of the epoch's ``order`` (dataset indices, padded to a multiple of W),
    from position ``start`` on. The first ``real`` entries of the order are distinct, the rest
    padding. ``loader_seed`` not None: yields (index, augmentation seed) pairs, for ``SeededItems``."""

    def __init__(self, size, shuffle, seed, rank, world_size, loader_seed=None):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.loader_seed = rank, world_size, loader_seed
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """The epoch's whole order, from its start."""
        self.epoch = epoch
        self.order, self.start, self.real = padded_order(self.permutation(), self.world_size), 0, self.size

    def permutation(self):
        """The epoch's order of the dataset's indices, before padding (DistributedSampler's)."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def resume(self, order, start, real, world_size):
        """Go on with an interrupted epoch: its ``order`` from position ``start`` (``real``: its
        distinct entries), dealt among ``world_size`` processes then. Another process count now
        continues with the samples not yet consumed, padded anew (the same samples, not the same
        batches)."""
        if world_size != self.world_size:
            order, start, real = padded_order(list(order[start:real]), self.world_size), 0, max(real - start, 0)
        self.order, self.start, self.real = list(order), start, real

    @property
    def remaining(self):
        """Distinct samples still to come, every process together."""
        return max(self.real - self.start, 0)

    def positions(self):
        """The positions of the order this process takes, from ``start`` on."""
        return range(self.start + self.rank, len(self.order), self.world_size)

    def __iter__(self):
        for position in self.positions():
            index = self.order[position]
            yield index if self.loader_seed is None else (index, sample_seed(self.loader_seed, self.epoch, position))

    def __len__(self):
        return len(self.positions())


class SeededItems(Dataset):
    """``dataset``'s items for (index, seed) keys: Python's, numpy's and torch's generators of the
    loader process are seeded with ``seed`` before the item is made (its augmentation)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        return self.dataset[index]


class DataLoaderX(DataLoader):
    """DataLoader whose batches are fetched one ahead in a background thread (official), which
    records the process's random-generator state after each batch: ``rng_state`` is that of the
    batch last handed out (before the first: the state the iteration started from). ``restore_rng``
    (a state): set it once the next iteration's loader is made and before anything is fetched (a
    resume)."""

    restore_rng = None
    rng_state = None

    def __iter__(self):
        batches = super().__iter__()   # creating it draws the loader's base seed
        if self.restore_rng is not None:
            set_rng_state(self.restore_rng)
            self.restore_rng = None
        self.rng_state = get_rng_state(cuda=False)
        return _Prefetched(self, batches)


class _Prefetched:
    """Iterates ``batches`` one ahead in a thread, each batch with the generators' state after it.
    ``close()``: for an iteration left early (a stop, an error)."""

    _END = object()

    def __init__(self, loader, batches):
        self.loader, self.batches, self.queue, self.closed = loader, batches, queue.Queue(1), False
        self.thread = threading.Thread(target=self._fetch, daemon=True)
        self.thread.start()

    def _fetch(self):
        try:
            for batch in self.batches:
                if self.closed:
                    return
                self.queue.put((batch, get_rng_state(cuda=False)))
            self.queue.put((self._END, None))
        except BaseException as e:  # handed to the consumer, which raises it
            self.queue.put((e, None))

    def close(self):
        """Stop fetching: the thread ends and the loader processes stop (they would outlive the
        epoch, holding copies of the process's files)."""
        self.closed = True
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)   # unblocks a waiting put
            except queue.Empty:
                pass
        shutdown = getattr(self.batches, '_shutdown_workers', None)   # the multi-process iterator's
        if shutdown is not None:
            shutdown()

    def __iter__(self):
        return self

    def __next__(self):
        batch, state = self.queue.get()
        if batch is self._END:
            raise StopIteration
        if isinstance(batch, BaseException):
            raise batch
        self.loader.rng_state = state
        return batch

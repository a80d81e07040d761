r"""
# Batches

Batches are cut from the token ids of a split by index: each epoch draws a random offset for
every `seq_len` window, shuffles the windows, and gathers a whole batch with one indexing
operation. That is the sampling of labml_nn's `shuffled_train_loader`, without collating
samples one by one in Python.
"""

import itertools
from typing import Optional

import numpy as np
import torch

from . import distributed


class ShuffledWindows:
    r"""
    An epoch of `[seq_len, batch_size]` input and target batches from the token ids of a split.

    Window $i$ starts at $i \cdot \text{seq\_len} + r_i$ with a random offset
    $0 \le r_i < \text{seq\_len}$ (kept inside the text), so that every epoch sees different
    cuts of the same text; targets are the inputs shifted by one token.

    The offsets and the order come from `generator` (seeded, so that the data order repeats,
    and saved in checkpoints, so that a resumed run continues it). With several processes
    every rank draws the same windows and keeps slice `rank` of `world_size` equal slices of
    each batch; windows that do not split evenly at the end of an epoch are dropped.
    """

    def __init__(self, tokens, *, batch_size: int, seq_len: int, device: torch.device = None,
                 generator: Optional[torch.Generator] = None, rank: int = 0, world_size: int = 1):
        # A memory-mapped array stays on disk: each batch gathers its windows from it and only
        # the batch goes to `device`. Ids in memory go to the device once, as one tensor.
        self.on_disk = isinstance(tokens, np.memmap)
        if self.on_disk:
            self.tokens = tokens
            self.device = device if device is not None else torch.device('cpu')
        else:
            if isinstance(tokens, np.ndarray):
                tokens = torch.from_numpy(tokens.astype(np.int64))
            self.tokens = tokens.to(device) if device is not None else tokens
            self.device = self.tokens.device
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = generator
        self.rank = rank
        self.world_size = world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        # `[0, 1, ..., seq_len]`, added to each start to gather a window and its next token.
        self.span = torch.arange(seq_len + 1, device='cpu' if self.on_disk else self.device)

    def __len__(self):
        # Batches of an epoch; a last one that does not split over the processes is dropped
        last = self.n_windows % self.batch_size
        return self.n_windows // self.batch_size + (last - last % self.world_size > 0)

    def __iter__(self):
        starts = torch.arange(self.n_windows) * self.seq_len
        # The largest offset that keeps `start + seq_len` a valid target index.
        room = (len(self.tokens) - 1 - self.seq_len - starts).clamp(max=self.seq_len - 1)
        starts += (torch.rand(self.n_windows, generator=self.generator) * (room + 1)).long()
        starts = starts[torch.randperm(self.n_windows, generator=self.generator)].to(self.span.device)
        for batch_starts in starts.split(self.batch_size):
            if self.world_size > 1:
                batch_starts = batch_starts[:len(batch_starts) - len(batch_starts) % self.world_size]
                if not len(batch_starts):
                    break
                batch_starts = batch_starts.chunk(self.world_size)[self.rank]
            # `[batch_size, seq_len + 1]` -> sequence first `[seq_len + 1, batch_size]`
            index = batch_starts[:, None] + self.span
            if self.on_disk:
                windows = torch.from_numpy(self.tokens[index.numpy()].astype(np.int64)).to(self.device)
            else:
                windows = self.tokens[index]
            windows = windows.t().contiguous()
            yield windows[:-1], windows[1:]


def shuffled_windows(tokens, *, batch_size: int, seq_len: int, device: torch.device, seed: int) -> ShuffledWindows:
    """The batches of a split for this process, in an order of their own seeded generator."""
    w = distributed.world()
    return ShuffledWindows(tokens, batch_size=batch_size, seq_len=seq_len, device=device,
                           generator=torch.Generator().manual_seed(seed), rank=w.rank, world_size=w.size)
class RandomBatches:
    """
    `n` batches of `loader` drawn at random, afresh each time it is iterated: the first `n` of
    a new epoch of its shuffled windows (nanoGPT's `eval_iters` for validation).
    """

    def __init__(self, loader: ShuffledWindows, n: int):
        self.loader = loader
        self.n = n

    def __len__(self):
        return min(self.n, len(self.loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))

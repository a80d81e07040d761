"""
# Several processes: DistributedDataParallel under torchrun

```
torchrun --nproc_per_node=2 -m gpt_experiment.main configs/cpu_quick.yaml
```

torchrun starts one process per rank and tells each its place in `RANK`, `WORLD_SIZE`,
`LOCAL_RANK` and where to meet in `MASTER_ADDR`/`MASTER_PORT`. Each process here:

* joins the process group: `gloo` on CPU, `nccl` on CUDA, one GPU per local rank;
* shares one labml run uuid, made by rank 0 and broadcast, since labml asks for the same uuid
  on every rank (`experiment.create(uuid=..., distributed_rank=..., distributed_world_size=...)`);
* wraps the model in `DistributedDataParallel`, which averages the gradients over the ranks
  during the backward pass;
* draws the same shuffled windows as every other rank (the data order is seeded by `seed`) and
  keeps its own slice of each batch, so that `batch_size` stays the *global* batch: with
  equal slices the mean of the ranks' mean losses is the loss of the whole batch, and the
  update is the one a single process would make on it.

* agrees with the others, at every training step, whether any of them was asked to stop
  (Ctrl-C, SIGTERM) or is due a timed checkpoint (`agree_max`, over a CPU group even beside
  NCCL), so that a signal reaching any process stops all of them after the same step.

Only rank 0 prints, tracks, samples and writes checkpoints; the others are silent.
Without torchrun (`RANK` and `WORLD_SIZE` unset) everything here is a no-op and there is one process.
"""

import contextlib
import os
import sys
from typing import List, NamedTuple, Optional

import torch
import torch.distributed as dist

from .errors import UserError


class World(NamedTuple):
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # Whether this process joined torchrun's process group: under torchrun, even alone (one
    # process on one GPU still runs NCCL, DDP and the rank's run folder)
    is_distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()
# The CPU group of control messages beside NCCL; `None` is the default group (gloo on CPU)
_control = None


def world() -> World:
    """This process's place: rank 0 of 1 unless started by torchrun."""
    return _world


def setup() -> World:
    """Join torchrun's process group, once; silence stdout on the ranks other than 0."""
    global _world
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ or dist.is_initialized():
        return _world
    rank, size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group('nccl')
        # Small control messages (a stop, a checkpoint due) go through a CPU group beside NCCL,
        # so that agreeing on them at every step never waits for the GPU.
        global _control
        _control = dist.new_group(backend='gloo')
    else:
        dist.init_process_group('gloo')
    _world = World(rank, size, local_rank, is_distributed=True)
    if rank != 0:
        sys.stdout = open(os.devnull, 'w')
    return _world


def shared_uuid() -> Optional[str]:
    """One labml run uuid for all ranks: rank 0 makes it and sends it to the others."""
    if not _world.is_distributed:
        return None
    from labml.experiment import generate_uuid
    box = [generate_uuid() if _world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_batch(batch_size: int):
    """Each rank takes an equal slice of the global batch."""
    if batch_size % _world.size:
        raise UserError(f'batch_size={batch_size} must be a multiple of the number of processes ({_world.size})')


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model as the training step calls it: under DDP when there are several processes."""
    if not _world.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [_world.local_rank] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sync_gradients(model: torch.nn.Module, sync: bool):
    """
    A block whose backward pass averages the gradients over the ranks (`sync`), or only adds
    them up locally: DDP's `no_sync`, for every micro-batch of a batch but the last.
    """
    return model.no_sync() if not sync and hasattr(model, 'no_sync') else contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the ranks (in place); itself with one process."""
    if _world.is_distributed:
        dist.all_reduce(t)
    return t


def agree_max(values: List[int]) -> List[int]:
    """The largest of each value over the ranks (on the CPU, never waiting for a GPU); themselves with one process."""
    t = torch.tensor(values, dtype=torch.int64)
    if _world.is_distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return t.tolist()


def lost_a_rank(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another process is gone."""
    if not _world.is_distributed:
        return False
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return any(sign in text for sign in ('Connection closed by peer', 'Connection reset by peer', 'Broken pipe',
                                         'gloo', 'NCCL'))


def teardown():
    global _world, _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _world, _control = World(), None

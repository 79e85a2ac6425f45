"""Running under ``torchrun``: process group set-up, ranks and shards.

Outside torchrun every function here is a no-op answering as a single process would
(rank 0 of 1). Collectives on tensors go through Avalanche's ``DistributedHelper``.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting its variables) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def init_from_env(seed: int = 0, device: str = "cpu") -> bool:
    """Join the process group described by torchrun's environment, once per process.

    Gloo for ``device="cpu"``; for CUDA, NCCL with this process on GPU ``LOCAL_RANK``
    (Avalanche's ``DistributedHelper.init_distributed`` picks the GPU by *global* rank,
    which fails on every node but the first). Every rank is seeded with ``seed``.
    Returns whether the process is part of a group of more than one rank.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    from avalanche.training.determinism.rng_manager import RNGManager

    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    RNGManager.set_random_seeds(seed)
    return is_distributed()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_range(n_items: int, batch_size: int, shard: Optional[int] = None,
                n_shards: Optional[int] = None) -> Tuple[int, int]:
    """Contiguous ``[start, stop)`` of items that shard ``shard`` of ``n_shards`` owns.

    Shards are whole batches of ``batch_size`` (the last batch may be short), spread as
    evenly as possible, so every shard encodes exactly the batches a single process would:
    the concatenated result is bit-identical to a single-process pass.
    """
    shard = rank() if shard is None else shard
    n_shards = world_size() if n_shards is None else n_shards
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    n_batches = -(-n_items // batch_size)
    per_shard, extra = divmod(n_batches, n_shards)
    first = shard * per_shard + min(shard, extra)
    last = first + per_shard + (1 if shard < extra else 0)
    return min(first * batch_size, n_items), min(last * batch_size, n_items)


def cat_all_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order (``rows`` itself when not distributed).

    No gradient flows back through the other ranks' rows: this is for frozen inputs such
    as the image features a batch-context VGA attends over.
    """
    if not is_distributed():
        return rows
    from avalanche.distributed import DistributedHelper

    with torch.no_grad():
        gathered = DistributedHelper.cat_all(rows.detach().contiguous())
    return gathered


class EpochShuffledSampler(torch.utils.data.DistributedSampler):
    """A ``DistributedSampler`` that reshuffles on every pass, without ``set_epoch`` calls.

    Its seed is drawn from rank 0's torch RNG (every rank draws, so the ranks' RNGs stay
    in step), so a seeded run is reproducible. As every DistributedSampler, it pads the
    data with repeated samples to a multiple of the world size.
    """

    def __init__(self, dataset):
        seed = broadcast_object(int(torch.randint(0, 2 ** 31 - 1, ()).item()))
        super().__init__(dataset, shuffle=True, seed=seed)
        self._passes = 0

    def __iter__(self):
        self.set_epoch(self._passes)
        self._passes += 1
        return super().__iter__()


class _MethodForward(torch.nn.Module):
    """DDP hooks ``forward`` only: route another method of the model through it."""

    def __init__(self, model: torch.nn.Module, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x, *args):
        return getattr(self.model, self.method)(x, *args)


def data_parallel(model: torch.nn.Module, method: str = "forward"):
    """``DistributedDataParallel`` over ``model.<method>``, or None when not distributed.

    Parameters are registered as they are now (``requires_grad``), so build it again when
    what trains changes; every one of them must take part in each step. Buffers are
    synchronised once, not before every forward: the models here keep only frozen buffers
    (text features, a frozen encoder), identical on every rank.
    """
    if not is_distributed():
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(_MethodForward(model, method), device_ids=device_ids,
                                   forward_sync_buffers=False)

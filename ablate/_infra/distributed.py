"""The one device/rank/process-group service, and a sweep split across torchrun processes.

    torchrun --standalone --nproc_per_node 4 -m ablate.drop_blocks --model resnet110 ...

Every rank computes a round-robin share of the conditions still to run; rank 0 gathers the rows
in their original order and is the only one that writes files. Without torchrun (no WORLD_SIZE,
or WORLD_SIZE=1) every function is a no-op, and a sweep runs exactly as in one process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from ablate._infra.errors import UsageError

__all__ = [
    "broadcast", "device", "finish", "gather", "init", "is_main", "leave", "local_rank", "parts",
    "rank_world", "shard",
]

T = TypeVar("T")


def _env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's GPU on its machine under torchrun (LOCAL_RANK), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(cuda: bool | None = None) -> bool:
    """Join the process group torchrun describes, for the rest of the process (several commands
    may run in it one after another; it is left at exit, or by :func:`leave`): nccl on CUDA
    (default: when a GPU is visible), else gloo. True when this call joined it; a no-op without
    torchrun or when already joined."""
    if _env_world() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(leave)
    return True


def leave() -> None:
    """Leave the process group (no-op when not in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size): from the process group, else from torchrun's RANK/WORLD_SIZE (then the
    group is initialised), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if _env_world() > 1:
        init()
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank_world()[0] == 0


def device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device of this process, the one place a ``--device`` is read.

    ``auto`` (or None) is CUDA when a GPU is visible, else the CPU; a bare ``cuda`` is
    ``cuda:LOCAL_RANK`` (each torchrun process its own GPU); ``cuda:N`` is taken as given.
    CUDA without a GPU, or a name torch does not know, is a UsageError.
    """
    if spec is None or spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown --device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported --device {spec!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"CUDA was asked for (--device {spec}) but torch {torch.__version__} "
                             "sees no CUDA device: use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank())
    return dev


def shard(items: Sequence[T]) -> list[T]:
    """This rank's round-robin share of ``items``: items rank, rank + world, ..."""
    rank, world = rank_world()
    return list(items[rank::world])


def parts(items: Sequence[T], group: int) -> Iterator[list[T]]:
    """This rank's share of consecutive blocks of ``group * world`` items.

    Every rank sees the same number of blocks (some shares may be empty), so a collective such as
    :func:`gather` after each block matches up across ranks.
    """
    _, world = rank_world()
    step = max(1, group) * world
    for i in range(0, len(items), step):
        yield shard(items[i:i + step])


def gather(rows: Sequence[T]) -> list[T]:
    """All ranks' ``rows`` on rank 0 ([] on the others), undoing :func:`shard`'s round robin
    (when every rank returns one row per item of its share, the order is the original one)."""
    rank, world = rank_world()
    if world == 1:
        return list(rows)
    got: list[list[T] | None] = [None] * world
    dist.all_gather_object(got, list(rows))
    if rank != 0:
        return []
    lists = [g or [] for g in got]
    out: list[T] = []
    for i in range(max(len(g) for g in lists)):
        out += [g[i] for g in lists if i < len(g)]
    return out


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (e.g. the conditions still missing from its table)."""
    _, world = rank_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    """Wait until every rank is done (no-op when not distributed); the group is left at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()

"""Process-group setup from torchrun's environment, and the few collectives the trainer needs.

Works unchanged as one plain process (no torchrun, no process group): every helper degrades to the local value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from finetune_contract import names


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(timeout_minutes: int = 30) -> World:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK): NCCL on GPUs, gloo on CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and os.environ.get(names.ENV_DEVICE, "") != "cpu"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes), device_id=device if cuda else None)
    return World(rank=rank, local_rank=local_rank, size=size, device=device)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum of a Python float over all ranks (float64, so token-weighted sums stay exact enough)."""
    if not distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (e.g. one rank received SIGTERM)."""
    return all_reduce_sum(1.0 if flag else 0.0, device) > 0


def close_world(synchronize: bool) -> None:
    """Leave the process group. After a clean run every rank first meets at a barrier, so no rank tears its
    group down while a peer still has a collective (or a gloo send) in flight: that race aborted a rank with
    "terminate called without an active exception" after both had finished. After a failure no barrier: the
    failed peer may never arrive, and waiting for it would turn a clear failure into a 30-minute hang."""
    if not distributed():
        return
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()

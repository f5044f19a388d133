"""DistributedDataParallel plumbing for torchrun: gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from train.errors import UsageError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {choice} asked for, but this torch sees no CUDA GPU; use --device cpu or auto")
        return torch.device(choice if ":" in choice else f"cuda:{local_rank}")
    if choice != "cpu":
        raise UsageError(f"unknown --device {choice!r}; choose one of: auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


def setup(device_choice: str) -> Context:
    """Join the process group when started by torchrun; a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, device)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def gather(ctx: Context, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def all_sum(ctx: Context, values: list[float]) -> list[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()

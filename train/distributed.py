"""DistributedDataParallel plumbing for torchrun: gloo on CPU; on CUDA, nccl for tensors and gloo for objects."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pothole_edge.errors import UsageError


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
    """`cuda` (and `auto` on a GPU machine) means this process's own GPU, cuda:LOCAL_RANK."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {choice} asked for, but this torch sees no CUDA GPU; use --device cpu or auto")
        device = torch.device(choice if ":" in choice else f"cuda:{local_rank}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return device
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
            # CPU tensors and pickled objects go through gloo; NCCL rejects them
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
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
    """The sum over ranks, reduced on this rank's device (NCCL reduces device tensors only)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def every_rank_has(ctx: Context, present: bool) -> bool:
    """Whether every rank has a batch for this step. DDP's backward all-reduces across ranks: a rank that
    skipped its step alone would leave the others waiting forever, so a step is skipped by all or by none."""
    if not ctx.distributed:
        return present
    flag = torch.tensor([1.0 if present else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def on_main(ctx: Context, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 alone; a UsageError there reaches every rank, so none waits at a barrier forever."""
    error, result = None, None
    if ctx.is_main:
        try:
            result = fn()
        except UsageError as e:
            error = str(e)
    if ctx.distributed:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise UsageError(error)
    return result


def teardown(ctx: Context) -> None:
    """Leave the group. Not a barrier: after a failure on one rank the others must not wait for it."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()

"""The compute-bound reference: what SGEMM reaches on these cores, and how many FLOPs a model needs.

A convolutional network is mostly matrix products, so its batch-1 latency cannot beat
model FLOPs / SGEMM FLOP/s on the same cores; a backend's distance from that limit says how
much is left to gain.
"""

from __future__ import annotations

from typing import Any

from pothole_edge.timing import stats, timed_ms


def sgemm(threads: int, size: int = 1024, runs: int = 10) -> dict[str, Any]:
    """FP32 matrix product (size x size) @ (size x size) through PyTorch's BLAS, on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(3):
        torch.mm(a, b, out=out)
    timing = stats([timed_ms(lambda: torch.mm(a, b, out=out)) for _ in range(runs)])
    flops = 2.0 * size**3
    return {
        "size": size,
        "threads": threads,
        "flops_per_run": flops,
        "gflops": flops / (timing["p50_ms"] / 1000) / 1e9,
        "timing": timing,
    }


def model_flops(module: Any, example: Any) -> float:
    """FLOPs of one forward pass (a multiply-add counts as 2), as PyTorch's FLOP counter sees it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(example)
    return float(counter.get_total_flops())

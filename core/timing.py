"""The one latency timer. Every figure keeps the samples it came from, so a report can be checked."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

# what ONNX Runtime, CUDA and cuDNN say when a device allocation fails; ORT's own exception
# types derive from Exception, not RuntimeError, so the message is what identifies them
OOM_MESSAGES = (
    "out of memory",
    "failed to allocate",
    "bfcarena",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "cudaerrormemoryallocation",
)


def stats(samples_ms: list[float] | np.ndarray, keep_samples: bool = True) -> dict[str, Any]:
    a = np.asarray(samples_ms, float)
    out: dict[str, Any] = {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "runs": len(a),
    }
    if keep_samples:
        out["samples_ms"] = [float(x) for x in a]
    return out


def timed_ms(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def latency(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, Any]:
    """`warmup` untimed calls, then `runs` timed ones, in this process."""
    for _ in range(warmup):
        fn()
    return stats([timed_ms(fn) for _ in range(runs)])


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return any(m in text for m in OOM_MESSAGES)


def throughput(
    run_batch: Callable[[int], Any], batch_sizes: tuple[int, ...], reps: int, budget_s: float
) -> tuple[list[dict[str, Any]], str | None]:
    """Images per second at each batch size: a warm-up run, one untimed run, then `reps` timed ones.

    The warm-up is where a compiled backend (torch.compile, TensorRT) builds its kernels for a new shape; it
    counts against nothing. The sweep stops at the first batch size whose runs fail for lack of memory (host or
    device, from PyTorch or ONNX Runtime) or whose untimed run takes longer than `budget_s`; the reason is
    returned with the rows measured before it. Any other error is a bug and propagates.
    """
    rows: list[dict[str, Any]] = []
    for batch in sorted(batch_sizes):
        try:
            run_batch(batch)
            first_ms = timed_ms(lambda b=batch: run_batch(b))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            return rows, f"batch {batch} did not fit: {str(e).splitlines()[0][:120]}"
        if first_ms / 1000 > budget_s:
            return rows, f"batch {batch} took {first_ms / 1000:.1f} s, over the {budget_s:g} s budget per batch"
        samples = [timed_ms(lambda b=batch: run_batch(b)) for _ in range(reps)]
        rows.append(
            {"batch": batch, "images_per_s": batch * len(samples) / (sum(samples) / 1000), "samples_ms": samples}
        )
    return rows, None

"""ONNX Runtime sessions on the CPU execution provider, batched prediction and latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from export.inputs import batches


def cpu_session(path: Path | str, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # quantised graphs log harmless fusion notes
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(session: Any, inputs: np.ndarray, positive_index: int, batch_size: int = 16) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: b})[0][:, positive_index] for b in batches(inputs, batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def median_latency_ms(session: Any, example: np.ndarray, runs: int, warmup: int = 5) -> dict[str, float]:
    """Batch-1 latency over `runs` timed runs after `warmup` untimed ones, in one process."""
    name = session.get_inputs()[0].name
    feed = {name: example[:1]}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": runs}

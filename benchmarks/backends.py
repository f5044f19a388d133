"""The backends pt-bench compares. Each takes the same uint8 NHWC tile batch and returns positive-class probabilities.

A backend this machine cannot run raises Unavailable with the reason, which the report shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge.errors import UsageError
from pothole_edge.timing import latency


class Unavailable(Exception):
    """This backend cannot run here; the message says why."""


@dataclass
class Backend:
    name: str  # pytorch, onnxruntime, tensorrt
    precision: str  # fp32, int8, fp16
    device: str  # cpu, cuda
    model_file: str
    create_s: float
    run: Callable[[np.ndarray], np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision} {self.device}"


def pytorch(run_dir: Path, device: str, threads: int, example: np.ndarray) -> Backend:
    """PyTorch at its best on each device, so the comparison is fair.

    CPU: eager FP32, channels_last kept only where it measured faster. CUDA: AMP fp16 autocast,
    cudnn.benchmark and channels_last, and torch.compile where it compiles.
    """
    import torch

    from pothole_edge.train import checkpoint
    from pothole_edge.train.network import Deployable

    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device visible to PyTorch")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    ckpt = checkpoint.load(run_dir / "model.pt")
    pos = ckpt["spec"]["positive_index"]
    module = Deployable(checkpoint.model_from_checkpoint(ckpt)).eval().to(device)
    options: dict[str, Any] = {"threads": threads if device == "cpu" else None}
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        module = module.to(memory_format=torch.channels_last)
        options |= {"amp": "fp16", "cudnn_benchmark": True, "channels_last": True}
        try:
            compiled = torch.compile(module)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                compiled(torch.from_numpy(example).to(device))
            module, options["compiled"] = compiled, True
        except Exception as e:  # no triton, or an op the compiler cannot take: eager is still the baseline
            options["compiled"] = False
            options["compile_error"] = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        torch.cuda.synchronize()
    create_s = time.perf_counter() - start

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
            x = torch.from_numpy(batch).to(device, non_blocking=True)
            return module(x).float()[:, pos].cpu().numpy()  # .cpu() waits for the GPU

    if device == "cpu":
        # the module permutes NHWC input to NCHW, so the convolutions see channels_last strides either way;
        # what changes is the weights' layout
        contiguous_ms = latency(lambda: run(example), runs=5, warmup=1)["p50_ms"]
        module.to(memory_format=torch.channels_last)
        channels_last_ms = latency(lambda: run(example), runs=5, warmup=1)["p50_ms"]
        if channels_last_ms >= contiguous_ms:
            module.to(memory_format=torch.contiguous_format)
        options |= {
            "channels_last": channels_last_ms < contiguous_ms,
            "probe_ms": {"contiguous": round(contiguous_ms, 3), "channels_last": round(channels_last_ms, 3)},
        }
    return Backend(
        "pytorch", "fp16" if device == "cuda" else "fp32", device, str(run_dir / "model.pt"), create_s, run, options
    )


def onnxruntime(path: Path, precision: str, device: str, threads: int, max_batch: int = 32) -> Backend:
    """A session from the shared factory on one provider; a provider that does not start is Unavailable, never a
    silent CPU run."""
    import onnxruntime as ort

    from pothole_edge.session import PROVIDERS, Runner, open_session

    if not path.is_file():
        flag = {"int8": "--int8", "fp16": "--fp16", "int8-trt": "--int8-trt"}.get(precision, "")
        raise Unavailable(f"no {path.name}; make it with pt-export {flag}".rstrip())
    if PROVIDERS[device] not in ort.get_available_providers():
        raise Unavailable(f"this onnxruntime has no {PROVIDERS[device]} (pip install onnxruntime-gpu)")
    trt_precision = "fp16" if device == "tensorrt" and precision == "fp16" else "fp32"
    start = time.perf_counter()
    try:
        session = open_session(path, device, trt_precision, threads if device == "cpu" else None, max_batch=max_batch)
    except UsageError as e:
        raise Unavailable(str(e)) from None
    runner = Runner(session)
    create_s = time.perf_counter() - start
    name = "tensorrt" if device == "tensorrt" else "onnxruntime"
    options = {
        "provider": session.provider,
        "threads": threads if device == "cpu" else None,
        "nodes_per_provider": session.node_counts,
        "trt_cache": session.options.get("trt_cache"),
    }
    return Backend(name, precision, "cpu" if device == "cpu" else "cuda", str(path), create_s, runner.probs, options)

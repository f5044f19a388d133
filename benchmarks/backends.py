"""The backends pt-bench compares. Each takes the same uint8 NHWC batch and returns probabilities.

A backend this machine cannot run raises Unavailable with the reason, which the report shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import latency


class Unavailable(Exception):
    """This backend cannot run here; the message says why."""


@dataclass
class Backend:
    name: str  # pytorch, onnxruntime, tensorrt
    precision: str  # fp32, int8, fp16
    device: str  # cpu, cuda
    model_file: str
    create_s: float
    run: Callable[[np.ndarray], Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision} {self.device}"


def pytorch(run_dir: Path, device: str, threads: int, example: np.ndarray) -> Backend:
    """Eager FP32, the Deployable module pt-export exports: channels_last is kept only where it measured faster."""
    import torch

    from export.graph import Deployable
    from train import checkpoint

    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device visible to PyTorch")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    ckpt = checkpoint.load(run_dir / "model.pt")
    module = Deployable(checkpoint.model_from_checkpoint(ckpt), ckpt["preprocess"]).eval().to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    create_s = time.perf_counter() - start

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device, non_blocking=True)
            return module(x).cpu().numpy()  # .cpu() waits for the GPU

    # the module permutes NHWC input to NCHW, so the convolutions see channels_last strides either way;
    # what changes is the weights' layout
    contiguous_ms = latency(lambda: run(example), runs=5, warmup=1)["p50_ms"]
    module.to(memory_format=torch.channels_last)
    channels_last_ms = latency(lambda: run(example), runs=5, warmup=1)["p50_ms"]
    if channels_last_ms >= contiguous_ms:
        module.to(memory_format=torch.contiguous_format)
    options = {"channels_last": channels_last_ms < contiguous_ms, "probe_ms": {"contiguous": round(contiguous_ms, 3), "channels_last": round(channels_last_ms, 3)}, "threads": threads if device == "cpu" else None}
    return Backend("pytorch", "fp32", device, str(run_dir / "model.pt"), create_s, run, options)


def onnxruntime(path: Path, precision: str, provider: str, threads: int, cache_dir: Path | None = None, max_batch: int = 32) -> Backend:
    """An ONNX Runtime session on one provider; a provider that does not start is Unavailable, never a silent CPU run."""
    import onnxruntime as ort

    if not path.is_file():
        flag = {"int8": "--int8", "fp16": "--fp16"}.get(precision, "")
        raise Unavailable(f"no {path.name}; make it with pt-export {flag}".rstrip())
    if provider not in ort.get_available_providers():
        raise Unavailable(f"this onnxruntime has no {provider} (pip install onnxruntime-gpu)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers: list[Any] = [provider]
    if provider == "TensorrtExecutionProvider":
        from export import metadata

        spec = metadata.read(path)["input"]
        shape, name = f"{spec['height']}x{spec['width']}x3", spec["name"]
        trt = {
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir or path.parent / ".trt-cache"),
            # one engine for every batch size of the sweep instead of a rebuild per shape
            "trt_profile_min_shapes": f"{name}:1x{shape}",
            "trt_profile_opt_shapes": f"{name}:1x{shape}",
            "trt_profile_max_shapes": f"{name}:{max_batch}x{shape}",
        }
        providers = [(provider, trt), "CUDAExecutionProvider", "CPUExecutionProvider"]
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own types when a provider's libraries are missing
        raise Unavailable(f"{provider} did not start: {str(e).splitlines()[0][:160]}") from None
    create_s = time.perf_counter() - start
    if session.get_providers()[0] != provider:
        raise Unavailable(f"{provider} did not start (onnxruntime fell back to {session.get_providers()[0]})")
    name = session.get_inputs()[0].name
    device = "cpu" if provider == "CPUExecutionProvider" else "cuda"
    backend = "tensorrt" if provider == "TensorrtExecutionProvider" else "onnxruntime"
    return Backend(backend, precision, device, str(path), create_s, lambda batch: session.run(None, {name: batch})[0], {"provider": provider, "threads": threads if device == "cpu" else None})

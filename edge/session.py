"""The model on the dashcam: an ONNX Runtime session on the best provider, and its metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from export import metadata
from train.errors import UsageError

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
DEVICES = ("auto", *PROVIDERS)


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """Inference threads: every core but one, which the frame reader and decoder need."""
    return max(1, usable_cores() - 1)


def _provider_list(device: str, available: list[str], model_dir: Path) -> list[Any]:
    # GPU providers hand nodes they cannot run to the ones after them, ending with the CPU
    order = list(PROVIDERS) if device == "auto" else list(PROVIDERS)[list(PROVIDERS).index(device) :]
    wanted = [PROVIDERS[d] for d in order if PROVIDERS[d] in available]
    chosen: list[Any] = []
    for name in wanted:
        if name == PROVIDERS["tensorrt"]:
            # building an engine takes minutes on a board; cache it beside the model
            cache = model_dir / ".trt-cache"
            chosen.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": True}))
        else:
            chosen.append(name)
    return chosen


class EdgeModel:
    """Batch-1 inference with the metadata's positive class; IO binding on GPU providers."""

    def __init__(self, session: Any, meta: dict[str, Any], path: str) -> None:
        self.session = session
        self.meta = meta
        self.path = path
        self.provider = session.get_providers()[0]
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.positive_index = int(meta["positive_index"])
        self.crop = int(meta["preprocess"]["crop"])
        self._binding = session.io_binding() if self.provider != PROVIDERS["cpu"] else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Positive-class probabilities for a (N, crop, crop, 3) uint8 RGB batch."""
        if self._binding is None:
            out = self.session.run([self.output_name], {self.input_name: batch})[0]
        else:
            # one host-to-device copy in, and only the tiny probability tensor comes back
            self._binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
            self._binding.bind_output(self.output_name)
            self.session.run_with_iobinding(self._binding)
            out = self._binding.copy_outputs_to_cpu()[0]
        return out[:, self.positive_index].astype(np.float64)

    def warmup(self, runs: int = 5) -> None:
        """First runs allocate buffers, and TensorRT builds its engine; keep them out of the timings."""
        example = np.zeros((1, self.crop, self.crop, 3), np.uint8)
        for _ in range(runs):
            self.infer(example)


def open_model(path: str, device: str = "auto", allow_cpu_fallback: bool = False, threads: int | None = None) -> EdgeModel:
    """Open `path` on `device`; a GPU asked for by name that cannot be used is an error unless fallback is allowed."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise UsageError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    try:
        meta = metadata.read(path)
    except metadata.MetadataError as e:
        raise UsageError(str(e)) from None
    available = ort.get_available_providers()
    if device not in ("auto", "cpu") and PROVIDERS[device] not in available and not allow_cpu_fallback:
        raise UsageError(
            f"--device {device} needs {PROVIDERS[device]}, which this onnxruntime lacks (it has {', '.join(available)}); "
            "install onnxruntime-gpu (pip install .[edge-gpu]), or pass --device cpu or --allow-cpu-fallback"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = _provider_list(device, available, Path(path).resolve().parent)
    try:
        session = ort.InferenceSession(path, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UsageError(f"onnxruntime cannot load {path} on {device}: {str(e).splitlines()[0][:200]}") from None
    used = session.get_providers()[0]
    if device not in ("auto", "cpu") and used != PROVIDERS[device] and not allow_cpu_fallback:
        # onnxruntime falls back silently when CUDA or TensorRT libraries fail to load
        raise UsageError(f"--device {device} was asked for but onnxruntime started {used} (see its log for the missing library); fix the GPU install or pass --allow-cpu-fallback")
    return EdgeModel(session, meta, path)

"""The one ONNX Runtime session factory, for the parity gate, pt-eval, edge-run and pt-bench.

It picks the providers, threads and graph optimisation, gives TensorRT its options (precision,
an engine cache keyed on the weights, a profile for the batch sizes it will see), and checks that
the session really got the provider it asked for: a GPU named on purpose never quietly means CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import metadata
from pothole_edge.errors import UsageError
from pothole_edge.fileio import encodable
from pothole_edge.system import default_threads

log = logging.getLogger("pothole_edge")
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
DEVICES = ("auto", *PROVIDERS)
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class Variant:
    """What an exported variant is for: the providers that may run it, and how TensorRT must take it."""

    devices: tuple[str, ...]  # in PROVIDERS' order of preference
    trt_int8: bool = False  # TensorRT runs its QDQ nodes as explicit INT8


# The one table of variants, read by the session factory (edge-run, pt-bench, pt-eval) and the export's gates.
# The CPU's INT8 has unsigned, asymmetric activations that TensorRT cannot run as INT8: it is never offered to
# TensorRT; int8-trt is the model made for it.
VARIANTS = {
    "fp32": Variant(("tensorrt", "cuda", "cpu")),
    "fp16": Variant(("tensorrt", "cuda", "cpu")),
    "int8": Variant(("cuda", "cpu")),
    "int8-trt": Variant(("tensorrt", "cuda", "cpu"), trt_int8=True),
}


def parse_device(device: str) -> tuple[str, int]:
    """ "cuda:1" -> ("cuda", 1); "auto" and "cpu" take no index."""
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind in ("auto", "cpu") or not index.isdigit())):
        raise UsageError(
            f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}, or cuda:N / tensorrt:N for GPU N"
        )
    return kind, int(index or 0)


def variant_of(meta: dict[str, Any]) -> Variant:
    return VARIANTS.get(str(meta.get("variant", "fp32")), VARIANTS["fp32"])


def trt_cache_root() -> Path:
    """A writable per-user folder: the model's own folder may be read-only on a vehicle."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pothole-edge" / "tensorrt"


def trt_cache_dir(
    model_path: Path,
    meta: dict[str, Any],
    precision: str,
    opt_batch: int = 1,
    max_batch: int = 32,
    root: Path | None = None,
) -> Path:
    """Engines built from other weights, another variant, precision, profile or TensorRT never share a folder.

    TensorRT's own cache key covers the graph's shape, not its weights, so a re-exported model.onnx
    would otherwise run the old engine and the old weights; and whichever tool built first would decide the
    profile for the others.
    """
    sha = str(meta.get("checkpoint_sha256") or "unknown")[:16]
    key = f"{sha}-{meta.get('variant', 'fp32')}-{precision}-b{opt_batch}of{max_batch}-trt{_trt_version()}"
    return (root or trt_cache_root()) / key


def _trt_version() -> str:
    try:
        import tensorrt  # noqa: F401 - only its version

        return str(tensorrt.__version__)
    except ImportError:
        return "none"  # onnxruntime's TensorRT provider brings its own libraries


def _trt_options(
    model_path: Path,
    meta: dict[str, Any],
    precision: str,
    opt_batch: int,
    max_batch: int,
    device_id: int,
    cache_root: Path | None,
) -> dict[str, Any]:
    crop, name = meta["preprocess"]["crop"], meta["input"].get("name", "image")
    shape = f"{crop}x{crop}x3"
    cache = trt_cache_dir(model_path, meta, precision, opt_batch, max_batch, cache_root)
    return {
        "device_id": device_id,
        "trt_fp16_enable": precision == "fp16",
        # the QDQ model made for TensorRT carries its own scales: explicit INT8
        "trt_int8_enable": variant_of(meta).trt_int8,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache.parent),  # shared by every engine: timings are per GPU, not per model
        # one engine for every batch size up to max_batch, tuned for the batch it will see most: one frame's tiles
        "trt_profile_min_shapes": f"{name}:1x{shape}",
        "trt_profile_opt_shapes": f"{name}:{opt_batch}x{shape}",
        "trt_profile_max_shapes": f"{name}:{max_batch}x{shape}",
    }


def provider_list(
    device: str,
    available: list[str],
    model_path: Path,
    meta: dict[str, Any],
    precision: str = "fp32",
    max_batch: int = 32,
    opt_batch: int | None = None,
    cache_root: Path | None = None,
) -> list[Any]:
    """The providers to ask for, in order; GPU providers hand what they cannot run to the next. Only the
    providers the model's variant is made for are offered."""
    kind, device_id = parse_device(device)
    variant = variant_of(meta)
    if kind not in ("auto", "cpu") and kind not in variant.devices:
        raise UsageError(
            f"--device {device}: the {meta.get('variant')} model is not made for {PROVIDERS[kind]}; "
            + (
                "for TensorRT use model.int8-trt.onnx (pt-export --int8-trt)"
                if kind == "tensorrt"
                else "use --device cpu"
            )
        )
    order = list(PROVIDERS) if kind == "auto" else list(PROVIDERS)[list(PROVIDERS).index(kind) :]
    chosen: list[Any] = []
    for d in order:
        name = PROVIDERS[d]
        if name not in available or d not in variant.devices:
            continue
        if d == "tensorrt":
            batch = min(opt_batch or max_batch, max_batch)
            chosen.append((name, _trt_options(model_path, meta, precision, batch, max_batch, device_id, cache_root)))
        elif d == "cuda":
            chosen.append((name, {"device_id": device_id}))
        else:
            chosen.append(name)
    return chosen


@dataclass
class Session:
    """An ONNX Runtime session with the model's checked metadata and where its nodes run."""

    session: Any
    meta: dict[str, Any]
    path: str
    provider: str
    providers: list[str]
    node_counts: dict[str, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    @property
    def output_name(self) -> str:
        return self.session.get_outputs()[0].name


def _node_counts(session: Any) -> dict[str, int] | None:
    try:
        assigned = session.get_provider_graph_assignment_info()
    except (AttributeError, RuntimeError, Exception):  # older onnxruntime, or recording off
        return None
    counts: dict[str, int] = {}
    for subgraph in assigned:
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts or None


def open_session(
    model: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    max_batch: int = 32,
    opt_batch: int | None = None,
    trt_cache: str | Path | None = None,
    spin: bool = True,
) -> Session:
    """Open `model` (a file or a run directory) on `device` ("cuda:1" for the second GPU). TensorRT's profile
    is tuned for `opt_batch` (a frame's tiles) up to `max_batch`; its engines go under `trt_cache`. `spin`
    False stops the CPU threads from spin-waiting between runs, which leaves their cores to other threads (the
    edge's frame reader).

    A GPU named on purpose ("cuda", "tensorrt") that cannot start is a UsageError unless
    `allow_cpu_fallback`; "auto" takes the best that starts. With a GPU named and no fallback,
    ONNX Runtime may not place nodes on the CPU either (session.disable_cpu_ep_fallback).
    """
    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    path = metadata.resolve_model_path(model)
    meta = metadata.read(path)
    available = ort.get_available_providers()
    kind, _ = parse_device(device)
    named_gpu = kind not in ("auto", "cpu")
    if kind in PROVIDERS and PROVIDERS[kind] not in available and not allow_cpu_fallback:
        raise UsageError(
            f"--device {device} needs {PROVIDERS[kind]}, which this onnxruntime lacks (it has "
            f"{', '.join(available)}); "
            "install onnxruntime-gpu (pip install '.[edge-gpu]'), or pass --device cpu or --allow-cpu-fallback"
        )
    cache_root = Path(trt_cache) if trt_cache else None
    if opt_batch is None:
        from pothole_edge.view import tile_count

        opt_batch = tile_count(meta["view"])
    providers = provider_list(device, available, path, meta, precision, max_batch, opt_batch, cache_root)
    if not providers:
        providers = [PROVIDERS["cpu"]]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # quantised graphs log harmless fusion notes
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if named_gpu and not allow_cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        # onnxruntime takes str paths only when they encode: an undecodable file name goes in as bytes
        model_arg = str(path) if encodable(str(path)) else path.read_bytes()
        session = ort.InferenceSession(model_arg, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        hint = (
            "; pass --allow-cpu-fallback to let the CPU run what the GPU cannot"
            if named_gpu and not allow_cpu_fallback
            else ""
        )
        raise UsageError(f"onnxruntime cannot load {path} on {device}: {str(e).splitlines()[0][:200]}{hint}") from None
    used = session.get_providers()
    if named_gpu and used[0] != PROVIDERS[kind] and not allow_cpu_fallback:
        # onnxruntime falls back silently when CUDA or TensorRT libraries fail to load
        raise UsageError(
            f"--device {device} was asked for but onnxruntime started {used[0]} (its log names the missing library); "
            "fix the GPU install or pass --allow-cpu-fallback"
        )
    metadata.check_graph(meta, session, str(path))
    counts = _node_counts(session)
    opts: dict[str, Any] = {"threads": options.intra_op_num_threads, "spinning": spin, "device_asked": device}
    if used[0] == PROVIDERS["tensorrt"]:
        # --precision applies to TensorRT alone: CUDA and the CPU run the graph's own types
        trt = dict(providers[0][1])
        opts |= {"precision": precision, "trt_cache": trt["trt_engine_cache_path"]}
    return Session(session, meta, str(path), used[0], list(used), counts, opts)


class Runner:
    """Positive-class probabilities for uint8 NHWC batches.

    On a GPU provider, IO binding keeps one device buffer per batch shape: each call copies the
    frame's tiles in once, and only the (N, 2) probabilities come back.
    """

    def __init__(self, s: Session) -> None:
        self.s = s
        self.positive_index = int(s.meta["positive_index"])
        self.crop = int(s.meta["preprocess"]["crop"])
        self.on_gpu = s.provider != PROVIDERS["cpu"]
        self.device = "cuda"  # where the bound buffers live on a GPU provider
        self._bound: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _binding(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        import onnxruntime as ort

        if shape not in self._bound:
            binding = self.s.session.io_binding()
            x = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, self.device, 0)
            y = ort.OrtValue.ortvalue_from_shape_and_type((shape[0], 2), np.float32, self.device, 0)
            binding.bind_ortvalue_input(self.s.input_name, x)
            binding.bind_ortvalue_output(self.s.output_name, y)
            self._bound[shape] = (binding, x, y)
        return self._bound[shape]

    def probs(self, batch: np.ndarray) -> np.ndarray:
        if not self.on_gpu:
            out = self.s.session.run([self.s.output_name], {self.s.input_name: batch})[0]
        else:
            binding, x, y = self._binding(tuple(batch.shape))
            x.update_inplace(np.ascontiguousarray(batch))
            self.s.session.run_with_iobinding(binding)
            out = y.numpy()
        return out[:, self.positive_index].astype(np.float64)

    def probs_batched(self, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = [self.probs(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def warmup(self, tiles: int, runs: int = 3) -> None:
        """First runs allocate buffers, and TensorRT builds its engine; keep them out of the timings."""
        example = np.zeros((tiles, self.crop, self.crop, 3), np.uint8)
        for _ in range(runs):
            self.probs(example)

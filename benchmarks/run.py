"""pt-bench's library function: every backend this machine has, on each run's models, into one report."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import view as views
from pothole_edge.benchmarks import backends
from pothole_edge.benchmarks.compute import model_flops, sgemm
from pothole_edge.benchmarks.config import BenchConfig
from pothole_edge.benchmarks.env import environment
from pothole_edge.benchmarks.pipeline import edge_fps, synthetic_clip
from pothole_edge.benchmarks.report import write_report
from pothole_edge.errors import UsageError
from pothole_edge.fileio import ensure_writable_dir, next_free, write_json
from pothole_edge.system import usable_cores
from pothole_edge.timing import latency, throughput, timed_ms

log = logging.getLogger("pt-bench")
SCHEMA_VERSION = 2
# the parity report each CPU backend's accuracy comes from with --quick (written by pt-export)
PARITY_REPORTS = {("onnxruntime", "fp32"): "pytorch vs ort fp32", ("onnxruntime", "int8"): "pytorch vs ort int8"}
TARGETS = {
    "ort_fp32_speedup_over_pytorch": 1.8,
    "int8_speedup_over_ort_fp32": 1.6,
    "ort_fp32_latency_over_compute_limit": 1.3,
}
PLANS = (
    ("pytorch fp32 cpu", "model.pt", "cpu"),
    ("pytorch fp16 cuda", "model.pt", "cuda"),
    ("onnxruntime fp32 cpu", "model.onnx", "cpu"),
    ("onnxruntime int8 cpu", "model.int8.onnx", "cpu"),
    ("onnxruntime fp16 cuda", "model.fp16.onnx", "cuda"),
    ("tensorrt fp16 cuda", "model.onnx", "tensorrt"),
    ("tensorrt int8 cuda", "model.int8-trt.onnx", "tensorrt"),
)


def _check_run(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(
            f"{path} is not a run directory; pass the directories pt-train wrote (pt-bench runs/lite0 ...)"
        )
    missing = [name for name in ("model.pt", "model.onnx") if not (run_dir / name).is_file()]
    if missing:
        fix = "train it with pt-train" if "model.pt" in missing else f"export it with pt-export {path} --int8 --fp16"
        raise UsageError(f"{path} has no {' or '.join(missing)}; {fix}")
    return run_dir


def _make(
    label: str, file: str, device: str, run_dir: Path, threads: int, example: np.ndarray, max_batch: int
) -> backends.Backend:
    name, precision, _ = label.split()
    if name == "pytorch":
        return backends.pytorch(run_dir, device, threads, example)
    return backends.onnxruntime(
        run_dir / file, "int8-trt" if file == "model.int8-trt.onnx" else precision, device, threads, max_batch
    )


def _accuracy_from_parity(parity: dict[str, Any] | None, name: str, precision: str) -> dict[str, Any] | None:
    wanted = PARITY_REPORTS.get((name, precision))
    report = next((r for r in (parity or {}).get("reports", []) if r["name"] == wanted), None)
    if report is None:
        return None
    m = report["candidate_metrics"]
    return {"accuracy": m["accuracy"], "roc_auc": m["roc_auc"], "n": report["n"], "source": f"parity.json: {wanted}"}


def _accuracy_measured(
    backend: backends.Backend, test: tuple[np.ndarray, np.ndarray] | None, spec: dict[str, Any]
) -> dict[str, Any] | None:
    """The backend's own accuracy: the parity set's tiles through it, pooled as the edge pools them."""
    from pothole_edge.train.metrics import binary_metrics

    if test is None:
        return None
    labels, tiles = test
    flat = tiles.reshape(-1, *tiles.shape[2:])
    probs = np.concatenate([backend.run(flat[i : i + 16]) for i in range(0, len(flat), 16)]).reshape(tiles.shape[:2])
    frames = np.array([views.pool(row, spec["view"])[0] for row in probs])
    m = binary_metrics(labels, frames, spec["threshold"], spec["class_names"])
    return {
        "accuracy": m["accuracy"],
        "roc_auc": m["roc_auc"],
        "n": m["n"],
        "source": f"measured: the run's {len(labels)} test frames through this backend",
    }


def _test_set(run_dir: Path, ckpt: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    from pothole_edge.export.run import load_tiles, run_samples

    try:
        _, labels, tiles = load_tiles(run_samples(run_dir, ckpt, "test"), ckpt["spec"], "test frames")
    except UsageError as e:
        log.warning("accuracy not measured for %s: %s", run_dir, e)
        return None
    return labels, tiles


def _measure(
    backend: backends.Backend, example: np.ndarray, frame: np.ndarray, images: np.ndarray, config: BenchConfig
) -> dict[str, Any]:
    first_ms = timed_ms(lambda: backend.run(example))
    lat = latency(lambda: backend.run(example), config.runs, config.warmup)
    per_frame = latency(lambda: backend.run(frame), max(3, config.runs // 2), 1)
    rows, stopped = throughput(
        lambda b: backend.run(images[:b]), config.batch_sizes, config.throughput_reps, config.batch_budget_s
    )
    return {
        "create_s": backend.create_s,
        "first_inference_ms": first_ms,
        "latency": lat,
        "frame_latency": per_frame,
        "throughput": rows,
        "throughput_stopped": stopped,
    }


def _bench_model(
    run_dir: Path, config: BenchConfig, threads: int, gflops: float, out: Path, bar: Any
) -> dict[str, Any]:
    import torch

    from pothole_edge import metadata
    from pothole_edge.train import checkpoint

    meta = metadata.read(run_dir / "model.onnx")
    crop, tiles_per_frame = int(meta["preprocess"]["crop"]), views.tile_count(meta["view"])
    images = np.random.default_rng(0).integers(
        0, 256, (max(config.batch_sizes + (tiles_per_frame,)), crop, crop, 3), dtype=np.uint8
    )
    example, frame = images[:1], images[:tiles_per_frame]
    ckpt = checkpoint.load(run_dir / "model.pt")
    flops = model_flops(checkpoint.model_from_checkpoint(ckpt), torch.from_numpy(example))
    limit_ms = flops / (gflops * 1e9) * 1000
    parity_path = run_dir / "parity.json"
    parity = json.loads(parity_path.read_text()) if parity_path.is_file() else None
    test = _test_set(run_dir, ckpt)
    rows = []
    for label, file, device in PLANS:
        bar.set_postfix_str(f"{run_dir.name}: {label}")
        name, precision, dev = label.split()
        row: dict[str, Any] = {"backend": name, "precision": precision, "device": dev, "label": label}
        try:
            backend = _make(
                label, file, device, run_dir, threads, example, max(max(config.batch_sizes), tiles_per_frame)
            )
        except backends.Unavailable as e:
            rows.append(row | {"status": "skipped", "reason": str(e)})
            bar.update(1)
            continue
        row |= {"status": "ok", "model_file": backend.model_file, "options": backend.options} | _measure(
            backend, example, frame, images, config
        )
        if dev == "cpu":
            # how far batch-1 latency is from FLOPs / SGEMM rate; int8 is not bound by the FP32 rate
            row["latency_over_compute_limit"] = row["latency"]["p50_ms"] / limit_ms if precision == "fp32" else None
        quick_parity = _accuracy_from_parity(parity, name, precision) if config.quick and dev == "cpu" else None
        row["accuracy"] = quick_parity or _accuracy_measured(backend, test, meta)
        rows.append(row)
        del backend
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        bar.update(1)
    edge = []
    if config.edge:
        video = Path(config.video) if config.video else out / "clip.mp4"
        for name in ("model.onnx", "model.int8.onnx"):
            if (run_dir / name).is_file():
                bar.set_postfix_str(f"{run_dir.name}: edge-run {name}")
                edge.append(
                    edge_fps(
                        run_dir / name,
                        video,
                        next_free(out / "edge" / f"{run_dir.name}-{name.removesuffix('.onnx')}"),
                        config.edge_frames,
                    )
                )
                bar.update(1)
    return {
        "run_dir": str(run_dir),
        "name": run_dir.name,
        "arch": ckpt["spec"]["arch"],
        "input": f"{crop}x{crop} RGB uint8",
        "view": meta["view"],
        "tiles_per_frame": tiles_per_frame,
        "flops": flops,
        "compute_limit_ms": limit_ms,
        "backends": rows,
        "edge": edge,
        "ratios": ratios(rows),
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline ratios from batch-1 p50 latencies; None where a side was not measured."""
    p50 = {r["label"]: r["latency"]["p50_ms"] for r in rows if r["status"] == "ok"}
    ort, torch_cpu, int8 = p50.get("onnxruntime fp32 cpu"), p50.get("pytorch fp32 cpu"), p50.get("onnxruntime int8 cpu")
    limit = next(
        (r["latency_over_compute_limit"] for r in rows if r["label"] == "onnxruntime fp32 cpu" and r["status"] == "ok"),
        None,
    )
    values = {
        "ort_fp32_speedup_over_pytorch": torch_cpu / ort if ort and torch_cpu else None,
        "int8_speedup_over_ort_fp32": ort / int8 if ort and int8 else None,
        "ort_fp32_latency_over_compute_limit": limit,
    }
    met = {
        k: None if v is None else (v <= TARGETS[k] if k.endswith("compute_limit") else v >= TARGETS[k])
        for k, v in values.items()
    }
    return {"values": values, "targets": TARGETS, "met": met}


def _warn_if_noisy(report: dict[str, Any], spread: float = 1.5) -> None:
    """A loaded machine shows as a high load average before the start, or as repeats far apart: say so in the
    report, since every ratio in it is then suspect (pt-bench once printed ORT 49.9x faster than PyTorch)."""
    env = report["environment"]
    noisy = [
        f"{b['label']} p90 {b['latency']['p90_ms'] / b['latency']['p50_ms']:.1f}x its p50"
        for m in report["models"]
        for b in m["backends"]
        if b["status"] == "ok" and b["latency"]["p90_ms"] > spread * b["latency"]["p50_ms"]
    ]
    reasons = [env.get("busy")] + (["batch-1 repeats varied widely (" + ", ".join(noisy) + ")"] if noisy else [])
    env["busy"] = "; ".join(r for r in reasons if r) or None
    if env["busy"]:
        log.warning("the machine looked busy: %s; compare these figures with care", env["busy"])


def bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every backend on each run's models; write report.json, report.md, latency.png and throughput.png."""
    from tqdm import tqdm

    from pothole_edge.edge.photoclip import parse_size

    config = config.resolved()
    runs = [_check_run(m) for m in config.models]
    if config.video and not Path(config.video).is_file():
        raise UsageError(
            f"video {config.video} does not exist; pass --video with a video file, or leave it out for a synthetic clip"
        )
    clip_size = parse_size(config.clip_size)
    threads = config.threads or usable_cores()
    out = ensure_writable_dir(config.out or next_free(time.strftime("runs/bench/%Y%m%d-%H%M%S")))
    config = dataclasses.replace(config, out=str(out), threads=threads)
    write_json(out / "config.json", dataclasses.asdict(config))
    started = time.time()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "out": str(out),
        "command": " ".join(["pt-bench", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("pt-bench") else None,
        "config": dataclasses.asdict(config),
        "environment": environment(threads),
    }
    log.info("measuring SGEMM on %d threads", threads)
    report["sgemm"] = sgemm(threads, config.sgemm_size)
    if config.edge and not config.video:
        synthetic_clip(out / "clip.mp4", config.edge_frames, clip_size)
    edge_steps = (
        sum((r / name).is_file() for r in runs for name in ("model.onnx", "model.int8.onnx")) if config.edge else 0
    )
    with tqdm(
        total=len(runs) * len(PLANS) + edge_steps, desc="pt-bench", unit="backend", file=sys.stderr, disable=None
    ) as bar:
        report["models"] = [
            _bench_model(run_dir, config, threads, report["sgemm"]["gflops"], out, bar) for run_dir in runs
        ]
    report["wall_s"] = time.time() - started
    _warn_if_noisy(report)
    write_report(report, out)
    return report

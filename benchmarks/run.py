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

from benchmarks import backends
from benchmarks.compute import model_flops, sgemm
from benchmarks.config import BenchConfig
from benchmarks.env import environment
from benchmarks.pipeline import edge_fps, synthetic_clip
from benchmarks.report import write_report
from benchmarks.timing import latency, throughput, timed_ms
from edge.session import usable_cores
from train.errors import UsageError
from train.fileio import ensure_writable_dir, write_json

log = logging.getLogger("benchmarks")
SCHEMA_VERSION = 1
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# the parity report each precision's accuracy comes from (written by pt-export)
PARITY_REPORTS = {"fp32": "pytorch vs ort fp32", "int8": "pytorch vs ort int8", "fp16": "pytorch vs ort fp16 (cpu)"}
TARGETS = {"ort_fp32_speedup_over_pytorch": 1.8, "int8_speedup_over_ort_fp32": 1.6, "ort_fp32_latency_over_compute_limit": 1.3}


def _check_run(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(f"{path} is not a run directory; pass the directories pt-train wrote (pt-bench runs/lite0 ...)")
    missing = [name for name in ("model.pt", "model.onnx") if not (run_dir / name).is_file()]
    if missing:
        fix = "train it with pt-train" if "model.pt" in missing else f"export it with pt-export {path} --int8 --fp16"
        raise UsageError(f"{path} has no {' or '.join(missing)}; {fix}")
    return run_dir


def _accuracy(parity: dict[str, Any] | None, name: str, precision: str) -> dict[str, Any] | None:
    if parity is None:
        return None
    report = next((r for r in parity.get("reports", []) if r["name"] == PARITY_REPORTS[precision]), None)
    if report is None:
        return None
    metrics = report["reference_metrics"] if name == "pytorch" else report["candidate_metrics"]
    source = "pytorch side of " if name == "pytorch" else ""
    return {"accuracy": metrics["accuracy"], "roc_auc": metrics["roc_auc"], "n": report["n"], "source": f"parity.json: {source}{report['name']}"}


def _plans(run_dir: Path, threads: int, example: np.ndarray, max_batch: int, cache: Path) -> list[tuple[str, Any]]:
    onnx = run_dir / "model.onnx"
    return [
        ("pytorch fp32 cpu", lambda: backends.pytorch(run_dir, "cpu", threads, example)),
        ("pytorch fp32 cuda", lambda: backends.pytorch(run_dir, "cuda", threads, example)),
        ("onnxruntime fp32 cpu", lambda: backends.onnxruntime(onnx, "fp32", CPU, threads)),
        ("onnxruntime int8 cpu", lambda: backends.onnxruntime(run_dir / "model.int8.onnx", "int8", CPU, threads)),
        ("onnxruntime fp16 cuda", lambda: backends.onnxruntime(run_dir / "model.fp16.onnx", "fp16", CUDA, threads)),
        ("tensorrt fp16 cuda", lambda: backends.onnxruntime(onnx, "fp16", TRT, threads, cache, max_batch)),
    ]


def _measure(backend: backends.Backend, example: np.ndarray, images: np.ndarray, config: BenchConfig) -> dict[str, Any]:
    first_ms = timed_ms(lambda: backend.run(example))
    lat = latency(lambda: backend.run(example), config.runs, config.warmup)
    rows, stopped = throughput(lambda b: backend.run(images[:b]), config.batch_sizes, config.throughput_reps, config.batch_budget_s)
    return {"create_s": backend.create_s, "first_inference_ms": first_ms, "latency": lat, "throughput": rows, "throughput_stopped": stopped}


def _bench_model(run_dir: Path, config: BenchConfig, threads: int, gflops: float, out: Path, bar: Any) -> dict[str, Any]:
    import torch

    from export import metadata
    from export.graph import Deployable
    from train import checkpoint

    meta = metadata.read(run_dir / "model.onnx")
    crop = int(meta["input"]["height"])
    images = np.random.default_rng(0).integers(0, 256, (max(config.batch_sizes), crop, crop, 3), dtype=np.uint8)
    example = images[:1]
    ckpt = checkpoint.load(run_dir / "model.pt")
    flops = model_flops(Deployable(checkpoint.model_from_checkpoint(ckpt), ckpt["preprocess"]).eval(), torch.from_numpy(example))
    limit_ms = flops / (gflops * 1e9) * 1000
    parity_path = run_dir / "parity.json"
    parity = json.loads(parity_path.read_text()) if parity_path.is_file() else None
    rows = []
    for label, make in _plans(run_dir, threads, example, max(config.batch_sizes), out / "trt-cache"):
        bar.set_postfix_str(f"{run_dir.name}: {label}")
        name, precision, device = label.split()
        row: dict[str, Any] = {"backend": name, "precision": precision, "device": device, "label": label}
        try:
            backend = make()
        except backends.Unavailable as e:
            rows.append(row | {"status": "skipped", "reason": str(e)})
            bar.update(1)
            continue
        row |= {"status": "ok", "model_file": backend.model_file, "options": backend.options} | _measure(backend, example, images, config)
        if device == "cpu":
            # how far batch-1 latency is from FLOPs / SGEMM rate; int8 is not bound by the FP32 rate
            row["latency_over_compute_limit"] = row["latency"]["p50_ms"] / limit_ms if precision == "fp32" else None
        row["accuracy"] = _accuracy(parity, name, precision)
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
                edge.append(edge_fps(run_dir / name, video, out / "edge" / f"{run_dir.name}-{name.removesuffix('.onnx')}", config.edge_frames))
                bar.update(1)
    return {
        "run_dir": str(run_dir),
        "name": run_dir.name,
        "arch": ckpt["arch"],
        "input": f"{crop}x{crop} RGB uint8",
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
    limit = next((r["latency_over_compute_limit"] for r in rows if r["label"] == "onnxruntime fp32 cpu" and r["status"] == "ok"), None)
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


def bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every backend on each run's models; write report.json, report.md, latency.png and throughput.png."""
    from tqdm import tqdm

    config = config.resolved()
    runs = [_check_run(m) for m in config.models]
    if config.video and not Path(config.video).is_file():
        raise UsageError(f"video {config.video} does not exist; pass --video with a video file, or leave it out for a synthetic clip")
    threads = config.threads or usable_cores()
    out = ensure_writable_dir(config.out or time.strftime("runs/bench/%Y%m%d-%H%M%S"))
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
        synthetic_clip(out / "clip.mp4", config.edge_frames)
    edge_steps = sum((r / name).is_file() for r in runs for name in ("model.onnx", "model.int8.onnx")) if config.edge else 0
    steps = len(runs) * len(_plans(Path("."), threads, np.zeros(1), 1, out)) + edge_steps
    with tqdm(total=steps, desc="pt-bench", unit="backend", file=sys.stderr) as bar:
        report["models"] = [_bench_model(run_dir, config, threads, report["sgemm"]["gflops"], out, bar) for run_dir in runs]
    report["wall_s"] = time.time() - started
    write_report(report, out)
    return report

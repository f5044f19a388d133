"""`evaluate()`: the library function behind pt-eval, for a checkpoint or an exported ONNX model.

Both go through the same decoding, view and pooling (pothole_edge.preprocess), so a .pt and its
.onnx score a folder identically up to float rounding.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge.fileio import ensure_writable_dir, first_missing, next_free, write_json
from pothole_edge.train import checkpoint, data
from pothole_edge.train.config import EvalConfig, parse_region, to_dict
from pothole_edge.train.report import format_metrics, write_report

log = logging.getLogger("pt-eval")
DEFAULT_OUT = "runs/eval"


def _is_onnx(model: str) -> bool:
    p = Path(model)
    return p.suffix == ".onnx" or (p.is_dir() and not (p / "model.pt").is_file() and (p / "model.onnx").is_file())


def load_model(config: EvalConfig) -> tuple[dict[str, Any], Callable[[Any], np.ndarray], Any]:
    """(spec, tile batch -> probabilities, device) for a .pt (PyTorch) or a .onnx (ONNX Runtime, CPU)."""
    import torch

    from pothole_edge.train.distributed import pick_device
    from pothole_edge.train.engine import torch_probs

    if _is_onnx(config.model):
        from pothole_edge.session import Runner, open_session

        runner = Runner(open_session(config.model, "cpu"))
        return runner.s.meta, lambda tiles: runner.probs(tiles.numpy()), torch.device("cpu")
    ckpt = checkpoint.load(config.model)
    device = pick_device(config.device)
    net = checkpoint.model_from_checkpoint(ckpt).to(device)
    return ckpt["spec"], torch_probs(net, device, amp=False, positive_index=ckpt["spec"]["positive_index"]), device


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score every image of a labelled folder; write metrics, plots and per-frame predictions."""
    from pothole_edge.train.cpu import keep_freed_memory
    from pothole_edge.train.loader import default_workers

    config.check()
    keep_freed_memory()
    config = replace(config, workers=default_workers() if config.workers is None else config.workers)
    spec, probs, device = load_model(config)
    region = parse_region(config.region) if config.region else None
    if region:
        spec = spec | {"view": spec["view"] | {"region": list(region)}}
    config = replace(
        config,
        threshold=spec["threshold"] if config.threshold is None else config.threshold,
        region=",".join(f"{v:g}" for v in spec["view"]["region"]),
    )
    names = tuple(spec["class_names"])
    folder = data.load_for_evaluation(config.data, names, workers=max(1, config.workers))
    if folder.skipped:
        log.warning("skipped %d unreadable file(s)", len(folder.skipped))
    out = Path(config.out or next_free(DEFAULT_OUT))
    created = first_missing(out)
    ensure_writable_dir(out, "output directory")
    config = replace(config, out=str(out))
    try:
        return _score(config, spec, probs, device, folder, out)
    except BaseException:
        if created:  # nothing half-written is left behind
            shutil.rmtree(created, ignore_errors=True)
        raise


def _score(
    config: EvalConfig,
    spec: dict[str, Any],
    probs: Callable[[Any], np.ndarray],
    device: Any,
    folder: data.LabelledFolder,
    out: Path,
) -> dict[str, Any]:
    from pothole_edge.train.distributed import Context
    from pothole_edge.train.engine import predict
    from pothole_edge.train.loader import FrameDataset, make_loader

    names = tuple(spec["class_names"])
    dataset = FrameDataset([folder.path(s) for s in folder.samples], [s.label for s in folder.samples], spec)
    per_batch = max(1, config.batch_size // sum(c * r for c, r in spec["view"]["grids"]))
    pred = predict(
        probs,
        make_loader(dataset, per_batch, config.workers),
        Context(0, 1, device),
        False,
        spec["view"],
        spec["positive_index"],
        desc="evaluating",
    )
    kept = [folder.samples[int(i)] for i in pred.indices]
    if len(kept) < len(folder.samples):
        log.warning("%d file(s) became unreadable during the run and were skipped", len(folder.samples) - len(kept))
    write_json(out / "config.json", to_dict(config))
    extra = {
        "model": str(config.model),
        "data": str(folder.roots[0]),
        "view": spec["view"],
        "skipped": len(folder.skipped),
        "skipped_files": folder.summary()["skipped_files"],
    }
    metrics = write_report(
        out,
        [s.path for s in kept],
        pred.labels,
        pred.probs,
        config.threshold,
        names,
        pred.hottest,
        [s.boxes for s in kept],
        extra=extra,
    )
    log.info("%s (%d frames):\n%s", folder.roots[0], metrics["n"], format_metrics(metrics))
    if metrics["roc_auc"] is None and metrics.get("false_positives_per_1000_negatives") is not None:
        log.info("false positives: %.1f per 1,000 frames", metrics["false_positives_per_1000_negatives"])
    log.info("Results saved to %s (metrics.json, predictions.csv and the plots)", out)
    return metrics

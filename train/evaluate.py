"""`evaluate()`: the library function behind pt-eval, for a checkpoint or an exported ONNX model."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from train import checkpoint, data
from train.config import EvalConfig, to_dict
from train.errors import UsageError
from train.fileio import ensure_writable_dir, write_json
from train.report import format_metrics, write_report

log = logging.getLogger("pt-eval")

# (paths, labels, probabilities) for every sample of a folder
Scorer = Callable[[data.LabelledFolder], tuple[list[str], np.ndarray, np.ndarray]]


def torch_scorer(config: EvalConfig) -> tuple[tuple[str, str], float, Scorer]:
    from train.distributed import Context, pick_device
    from train.engine import predict
    from train.loader import PhotoDataset, make_loader
    from train.transforms import eval_transform

    ckpt = checkpoint.load(config.model)
    model = checkpoint.model_from_checkpoint(ckpt)
    ctx = Context(0, 1, pick_device(config.device))
    model.to(ctx.device)

    def score(folder: data.LabelledFolder) -> tuple[list[str], np.ndarray, np.ndarray]:
        dataset = PhotoDataset(folder.root, folder.samples, eval_transform(ckpt["preprocess"]))
        preds = predict(model, make_loader(dataset, config.batch_size, config.workers), ctx, amp=False, positive_index=ckpt["positive_index"], desc="evaluating")
        return [dataset.samples[i].path for i in preds.indices], preds.labels, preds.probs

    return tuple(ckpt["class_names"]), float(ckpt.get("threshold", 0.5)), score


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score every image of a labelled folder; write metrics, plots and per-image predictions."""
    from train.cpu import keep_freed_memory
    from train.loader import default_workers

    if config.threshold is not None and not 0 <= config.threshold <= 1:
        raise UsageError(f"--threshold {config.threshold} must be between 0 and 1")
    keep_freed_memory()
    config = replace(config, workers=default_workers() if config.workers is None else config.workers)
    if Path(config.model).suffix == ".onnx":
        from export.onnx_eval import onnx_scorer

        names, threshold, score = onnx_scorer(config)
    else:
        names, threshold, score = torch_scorer(config)
    config = replace(config, threshold=threshold if config.threshold is None else config.threshold)
    out = ensure_writable_dir(config.out, "output directory")
    folder = data.load_for_evaluation(config.data, names, workers=max(1, config.workers))
    if folder.skipped:
        log.warning("skipped %d unreadable file(s)", len(folder.skipped))
    paths, labels, probs = score(folder)
    write_json(out / "config.json", to_dict(config))
    extra = {"model": str(config.model), "data": str(folder.root), "skipped": len(folder.skipped), "skipped_files": folder.summary()["skipped_files"]}
    metrics = write_report(out, paths, labels, probs, config.threshold, names, extra=extra)
    log.info("%s (%d images):\n%s", folder.root, metrics["n"], format_metrics(metrics))
    return metrics

"""`evaluate()`: the library function behind pt-eval."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from train import checkpoint, data
from train.config import EvalConfig, to_dict
from train.errors import UsageError
from train.fileio import ensure_writable_dir, write_json
from train.report import format_metrics, write_report

log = logging.getLogger("pt-eval")


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score every image of a labelled folder with a checkpoint; write metrics, plots and predictions."""
    from train.cpu import keep_freed_memory
    from train.distributed import Context, pick_device
    from train.engine import predict
    from train.loader import PhotoDataset, default_workers, make_loader
    from train.transforms import eval_transform

    if Path(config.model).suffix == ".onnx":
        raise UsageError(f"{config.model}: ONNX models are evaluated by the export stage, which this version does not include yet; pass a run directory or model.pt")
    if config.threshold is not None and not 0 <= config.threshold <= 1:
        raise UsageError(f"--threshold {config.threshold} must be between 0 and 1")
    keep_freed_memory()
    ckpt = checkpoint.load(config.model)
    config = replace(config, threshold=ckpt.get("threshold", 0.5) if config.threshold is None else config.threshold, workers=default_workers() if config.workers is None else config.workers)
    out = ensure_writable_dir(config.out, "output directory")
    names = tuple(ckpt["class_names"])
    folder = data.load_for_evaluation(config.data, names, workers=max(1, config.workers))
    if folder.skipped:
        log.warning("skipped %d unreadable file(s)", len(folder.skipped))
    model = checkpoint.model_from_checkpoint(ckpt)
    ctx = Context(0, 1, pick_device(config.device))
    model.to(ctx.device)
    dataset = PhotoDataset(folder.root, folder.samples, eval_transform(ckpt["preprocess"]))
    preds = predict(model, make_loader(dataset, config.batch_size, config.workers), ctx, amp=False, positive_index=ckpt["positive_index"], desc="evaluating")
    paths = [dataset.samples[i].path for i in preds.indices]
    write_json(out / "config.json", to_dict(config))
    extra = {"model": str(config.model), "data": str(folder.root), "skipped": len(folder.skipped), "skipped_files": folder.summary()["skipped_files"]}
    metrics = write_report(out, paths, preds.labels, preds.probs, config.threshold, names, extra=extra)
    log.info("%s (%d images):\n%s", folder.root, metrics["n"], format_metrics(metrics))
    return metrics

"""`train()`: the library function behind pt-train."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from train import data
from train.checkpoint import LAST
from train.config import TrainConfig, load_json, to_dict
from train.errors import UsageError
from train.fileio import ensure_writable_dir, write_json, write_text
from train.models import WEIGHT_CHOICES, check_arch

log = logging.getLogger("pt-train")

DEMO = "demo"


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on other choices, and check every choice."""
    if config.data == DEMO:
        # the demo must run offline: the Lite0 ImageNet weights ship in a pip package
        config = replace(config, arch=config.arch or "efficientnet_lite0", weights=config.weights or "imagenet")
    config = replace(config, arch=config.arch or "resnet50", weights=config.weights or "imagenet")
    check_arch(config.arch)
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise UsageError(f"--weights {config.weights!r} is neither a known choice nor an existing file; use {WEIGHT_CHOICES}")
    if config.class_weight not in ("none", "balanced"):
        raise UsageError(f"unknown --class-weight {config.class_weight!r}; choose one of: none, balanced")
    for name in ("epochs", "batch_size", "patience"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not (0 < config.val_fraction < 1 and 0 < config.test_fraction < 1 and config.val_fraction + config.test_fraction < 1):
        raise UsageError("--val-fraction and --test-fraction must each be in (0, 1) and sum below 1")
    if config.lr is None:
        config = replace(config, lr=1e-3 if config.weights == "none" else 3e-4)
    if config.workers is None:
        from train.loader import default_workers

        config = replace(config, workers=default_workers())
    return config


def _init_run(config: TrainConfig, out: Path, resuming: bool) -> None:
    """Rank 0 only: check the run directory, write the config, and fix the split on disk."""
    ensure_writable_dir(out, "run directory")
    _check_out(out, resuming)
    if resuming:
        return
    root = Path(config.data)
    if config.data == DEMO:
        from train.demo import make_dataset

        root = out / "demo-data"
        log.info("generating the demo dataset in %s: synthetic road images, not real photos", root)
        make_dataset(root, config.demo_per_class, config.seed)
    folder = data.load_for_training(root, config.positive, config.val_fraction, config.test_fraction, config.seed, workers=max(1, config.workers or 1))
    for split in data.SPLITS:
        if {s.label for s in folder.split(split)} != {0, 1}:
            counts = {name: sum(1 for s in folder.samples if s.label == i) for i, name in enumerate(folder.class_names)}
            raise UsageError(f"too few images to give every split both classes ({split} lacks one; counts {counts}); add photos or change --val-fraction/--test-fraction")
    if folder.skipped:
        log.warning("skipped %d unreadable file(s); see data.json", len(folder.skipped))
    write_json(out / "config.json", to_dict(config))
    write_json(out / "data.json", folder.summary())
    write_text(out / "split.csv", data.manifest_text(folder.samples, folder.class_names))


def _read_run_data(out: Path) -> data.LabelledFolder:
    summary = json.loads((out / "data.json").read_text(encoding="utf-8"))
    names = tuple(summary["class_names"])
    return data.LabelledFolder(Path(summary["root"]), names, data.read_manifest(out / "split.csv", names))


def _check_out(out: Path, resuming: bool) -> None:
    if resuming:
        if not all((out / f).is_file() for f in ("config.json", "data.json", "split.csv")):
            raise UsageError(f"--resume {out} holds no run to continue (config.json, data.json or split.csv missing)")
        if (out / "model.pt").is_file() and (out / "metrics.json").is_file():
            raise UsageError(f"the run in {out} has already finished; its model is {out / 'model.pt'}")
        return
    if (out / "model.pt").exists() or (out / LAST).exists() or (out / "split.csv").exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume {out}, or pass another --out")


def train(config: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Train, pick the threshold on validation, evaluate on test, and fill the run directory.

    Returns the test metrics. With `resume` (a run directory) the run's own config is used.
    Under torchrun every rank calls this; rank 0 alone writes files.
    """
    from train import distributed
    from train.cpu import keep_freed_memory

    started = time.time()
    keep_freed_memory()
    if resume:
        out = Path(resume)
        if not (out / "config.json").is_file():
            raise UsageError(f"--resume {out} holds no run to continue (no config.json)")
        config = load_json(TrainConfig, out / "config.json")
    else:
        config = resolve(config)
        out = Path(config.out)
    ctx = distributed.setup(config.device)
    try:
        if ctx.is_main:
            _init_run(config, out, bool(resume))
        distributed.barrier(ctx)
        from train.fit import fit

        return fit(config, out, _read_run_data(out), ctx, started)
    finally:
        distributed.teardown(ctx)

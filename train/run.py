"""`train()`: the library function behind pt-train."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pothole_edge.errors import DiskFull, UsageError, is_disk_full
from pothole_edge.fileio import ensure_writable_dir, first_missing, next_free, write_json, write_text
from pothole_edge.train import data
from pothole_edge.train.checkpoint import LAST
from pothole_edge.train.config import DEFAULT_GRIDS, DEFAULT_TEST_GRIDS, TrainConfig, load_json, to_dict
from pothole_edge.train.distill import check_teachers, fold_teachers
from pothole_edge.train.models import WEIGHT_CHOICES, check_arch, check_imagenet, default_freeze, resolve_preprocess

log = logging.getLogger("pt-train")

DEMO = "demo"
DEFAULT_OUT = "runs/train"


def resolve(config: TrainConfig) -> TrainConfig:
    """Check every value, then fill each default that depends on other choices, so config.json holds what was used."""
    config.check()
    if DEMO in config.data:
        if len(config.data) > 1:
            raise UsageError("--data demo is the synthetic set alone; give it without other --data folders")
        # the demo must run offline: the Lite0 ImageNet weights ship in a pip package
        config = replace(config, arch=config.arch or "efficientnet_lite0", weights=config.weights or "imagenet")
    config = replace(config, arch=config.arch or "resnet50", weights=config.weights or "imagenet")
    check_arch(config.arch)
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise UsageError(
            f"--weights {config.weights!r} is neither a known choice nor an existing file; use {WEIGHT_CHOICES}"
        )
    for root in config.data:
        if root != DEMO and not Path(root).is_dir():
            raise UsageError(
                f"data directory {root} does not exist; pass --data DIR with normal/ and pothole/ sub-folders, or "
                "--data demo"
            )
    if config.test_grids is None:
        config = replace(config, test_grids=DEFAULT_TEST_GRIDS if config.grids is None else config.grids)
    config = replace(config, grids=config.grids or DEFAULT_GRIDS)
    if config.lr is None:
        config = replace(config, lr=1e-3 if config.weights == "none" else 3e-4)
    if config.workers is None:
        from pothole_edge.train.loader import default_workers

        config = replace(config, workers=default_workers())
    if config.img_size is None:
        config = replace(config, img_size=resolve_preprocess(config.arch)["crop"])
    if config.freeze is None:
        config = replace(config, freeze=default_freeze(config.arch, config.weights))
    if config.cv_fold:  # a cross-validation teaches each fold with its own fold
        config = replace(config, teacher=fold_teachers(config.teacher, config.cv_fold))
    return replace(
        config, out=config.out or str(next_free(DEFAULT_OUT)), data=tuple(config.data), split_seed=config.data_seed
    )


def split(config: TrainConfig, roots: list[str]) -> data.LabelledFolder:
    """The run's frames, split (the fold's split with --cv); every split must hold both classes."""
    folder = data.load_for_training(
        roots,
        config.positive,
        config.val_fraction,
        config.test_fraction,
        config.data_seed,
        max(1, config.workers or 1),
        config.group_column,
        config.cv,
        config.cv_fold,
    )
    for name in data.SPLITS:
        if {s.label for s in folder.split(name)} != {0, 1}:
            counts = {n: sum(1 for s in folder.samples if s.label == i) for i, n in enumerate(folder.class_names)}
            fold = f"fold {config.cv_fold} of {config.cv}: " if config.cv else ""
            raise UsageError(
                f"too few images to give every split both classes ({fold}{name} lacks one; counts {counts}); add "
                "photos or change --val-fraction/--test-fraction" + (" or --cv" if config.cv else "")
            )
    return folder


def _init_run(config: TrainConfig, out: Path) -> None:
    """Rank 0 only: check the run directory, fix the split on disk, then write the config."""
    check_new(out)
    created = first_missing(out)
    ensure_writable_dir(out, "run directory")
    try:
        roots = list(config.data)
        if roots == [DEMO]:
            from pothole_edge.train.demo import make_dataset

            roots = [str(out / "demo-data")]
            log.info("generating the demo dataset in %s: synthetic road images, not real photos", roots[0])
            make_dataset(roots[0], config.demo_per_class, config.data_seed)
        folder = split(config, roots)
        check_teachers(config.teacher, folder)
        if config.weights == "imagenet":
            check_imagenet(config.arch)  # offline, fail now: nothing written yet, so a retry is free
        if folder.skipped:
            log.warning("skipped %d unreadable file(s); see data.json", len(folder.skipped))
        if config.paste and not any(s.boxes for s in folder.samples if s.split == "train" and s.label == 1):
            log.warning(
                "--paste %g pastes nothing: no training pothole has a box (boxes.csv beside its frames)", config.paste
            )
        write_json(out / "data.json", folder.summary())
        write_text(out / "split.csv", data.manifest_text(folder.samples, folder.class_names))
        write_json(out / "config.json", to_dict(replace(config, positive=config.positive or folder.class_names[1])))
    except BaseException:
        if created:  # a run that failed before its first epoch leaves nothing a rerun would trip over
            shutil.rmtree(created, ignore_errors=True)
        raise


def read_run_data(out: Path) -> data.LabelledFolder:
    """A run's frames and splits, as its data.json and split.csv recorded them."""
    try:
        summary = json.loads((out / "data.json").read_text(encoding="utf-8"))
        names = tuple(summary["class_names"])
        roots = [Path(r) for r in summary["roots"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{out / 'data.json'} is damaged ({type(e).__name__}); start a new run") from None
    return data.LabelledFolder(roots, names, data.read_manifest(out / "split.csv", names))


def check_new(out: Path) -> None:
    if (out / "model.pt").exists() or (out / LAST).exists() or (out / "split.csv").exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume {out}, or pass another --out")


def _check_resumable(out: Path) -> None:
    if not all((out / f).is_file() for f in ("config.json", "data.json", "split.csv")):
        raise UsageError(f"--resume {out} holds no run to continue (config.json, data.json or split.csv missing)")
    if (out / "model.pt").is_file() and (out / "metrics.json").is_file():
        raise UsageError(f"the run in {out} has already finished; its model is {out / 'model.pt'}")


def train(config: TrainConfig | None, resume: str | None = None, within: Path | None = None) -> dict[str, Any]:
    """Train, pick the threshold on validation, evaluate on test, and fill the run directory.

    Returns the test metrics. With `resume` (a run directory) the run's own config is used. `within` is the
    cross-validation run this is one fold of: what a user resumes after an interruption.
    Under torchrun every rank calls this; rank 0 alone writes files.
    """
    from pothole_edge.train import distributed
    from pothole_edge.train.cpu import keep_freed_memory

    started = time.time()
    if resume:
        out = Path(resume)
        _check_resumable(out)
        config = load_json(TrainConfig, out / "config.json")
        config.check()
    else:
        assert config is not None
        config = resolve(config)
        out = Path(config.out)
    keep_freed_memory()
    again = within or out
    ctx = distributed.setup(config.device)
    try:
        if not resume:
            distributed.on_main(ctx, lambda: _init_run(config, out))
        folder = read_run_data(out)
        from pothole_edge.train.fit import fit

        result = fit(config, out, folder, ctx, started)
        # ranks leave together: one that destroys its group while a peer is still in a collective can abort the
        # peer's gloo threads ("terminate called without an active exception")
        distributed.barrier(ctx)
        return result
    except KeyboardInterrupt:
        if ctx.is_main:
            log.warning("interrupted; finished epochs are kept: continue with pt-train --resume %s", again)
        raise
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFull(
            f"no space left on the device writing {e.filename or out}; the last finished epoch is kept: "
            f"free some space, then continue with pt-train --resume {again}"
        ) from None
    finally:
        distributed.teardown(ctx)

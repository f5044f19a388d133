"""`ensemble()`: the library function behind pt-ensemble.

Runs of one recipe from other seeds rank a new road differently, and no one can tell beforehand which run will be
the good one there; the mean of their logits, tile by tile, ranks held-out roads better than the average run. An
ensemble is one model to every consumer: its model.pt holds the members' weights beside one spec, and pt-eval,
pt-export (one ONNX graph holding every member), pt-bench and edge-run read it like any other. The members must
share the split (so the threshold is chosen on the same validation frames none of them trained on), the
preprocessing, the view and the network; the threshold is chosen again for the ensemble.

With --grids or --pool the joined model is judged under another view than the one its runs trained with, and one
run is enough: a finer level added at test time (1x1+4x3+5x3) is multi-scale testing, more tiles for a better
ranking on new roads, measured in the README. The threshold is chosen again for that view, as it must be.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pothole_edge import view as views
from pothole_edge.errors import UsageError
from pothole_edge.fileio import ensure_writable_dir, write_json
from pothole_edge.train.config import EnsembleConfig, TrainConfig, load_json, to_dict
from pothole_edge.train.layout import fold_dir, is_cross_validation, run_dir

log = logging.getLogger("pt-train")
SHARED = ("class_names", "positive_index", "preprocess", "view", "arch", "global_pool")


def _members(runs: list[str]) -> list[dict[str, Any]]:
    from pothole_edge.train import checkpoint

    ckpts = [checkpoint.load(r) for r in runs]
    if any("members" in c for c in ckpts):
        raise UsageError("a member is itself an ensemble; give the runs it was made of")
    first = ckpts[0]
    for run, c in zip(runs[1:], ckpts[1:]):
        differ = [k for k in SHARED if c["spec"].get(k) != first["spec"].get(k)]
        if differ:
            raise UsageError(
                f"{run} differs from {runs[0]} in {', '.join(differ)}; an ensemble's members share the network, "
                "preprocessing and view"
            )
        if c.get("manifest_sha256") != first.get("manifest_sha256"):
            raise UsageError(
                f"{run} was split differently from {runs[0]}; ensemble runs of the same split (train them with "
                "the same --split-seed)"
            )
    return ckpts


def ensemble_run(
    runs: list[str], ckpts: list[dict[str, Any]], out: Path, device: Any, view: dict[str, Any]
) -> dict[str, Any]:
    """Members' finished runs (and their checked checkpoints, from `_members`) in, one run directory out: model.pt
    with every member (one run: its weights alone), judged under `view`, the threshold chosen on the shared
    validation split, and the test report. Returns the test metrics."""
    from pothole_edge.train import checkpoint
    from pothole_edge.train.distributed import Context
    from pothole_edge.train.fit import judge
    from pothole_edge.train.run import read_run_data

    started = time.time()
    first = run_dir(runs[0])
    config = load_json(TrainConfig, first / "config.json")
    folder = read_run_data(first)
    ctx = Context(0, 1, device)
    states = [c["state_dict"] for c in ckpts]
    weights = {"state_dict": states[0]} if len(states) == 1 else {"members": states}  # as model.pt will hold them
    net = checkpoint.model_from_checkpoint({"spec": ckpts[0]["spec"]} | weights).to(ctx.device)
    ensure_writable_dir(out, "ensemble directory")
    spec, metrics = judge(
        config, out, folder, net, ckpts[0]["spec"] | {"view": view}, ctx, {"members": [str(r) for r in runs]}
    )
    # the members' shared data, so cv summaries read it; copied after the slow scoring, as a config.json marks
    # a directory that holds a run: an interrupted ensemble can simply be run again
    for name in ("config.json", "data.json", "split.csv"):
        shutil.copyfile(first / name, out / name)
    keep = ("config", "manifest_sha256", "package_version", "torch_version")
    checkpoint.save(
        {k: ckpts[0][k] for k in keep if k in ckpts[0]}
        | {"spec": spec, "member_runs": [str(r) for r in runs]}
        | weights
        | {"epoch": 0, "metrics": metrics},
        out / "model.pt",
    )
    write_json(
        out / "summary.json",
        {
            "members": [str(r) for r in runs],
            "member_best_epochs": [c.get("epoch") for c in ckpts],
            "wall_seconds": round(time.time() - started, 1),
            "threshold": spec["threshold"],
            "threshold_method": spec["threshold_method"],
            "test": {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision")},
        },
    )
    log.info(
        "wrote %s: %d member(s), %d tiles a frame, test ROC-AUC %.4f",
        out / "model.pt",
        len(runs),
        views.tile_count(spec["view"]),
        metrics["roc_auc"],
    )
    return metrics


def ensemble(config: EnsembleConfig) -> dict[str, Any]:
    """pt-ensemble: finished runs, or cross-validations of the same folds (then fold by fold, with cv.json).
    The config is written beside the outputs as ensemble_config.json."""
    config.check()
    runs, out = list(config.runs), config.out
    dirs = [run_dir(r).resolve() for r in runs]
    if len(set(dirs)) < len(dirs):
        raise UsageError("a run is given more than once; an ensemble's members are different runs")
    target = Path(out)
    if (target / "model.pt").exists() or (target / "config.json").exists():
        raise UsageError(f"{target} already holds a run; pass another --out")
    from pothole_edge.train.distributed import pick_device

    device = pick_device(config.device)  # a wrong --device is refused before anything is written
    cvs = [is_cross_validation(r) for r in runs]
    if any(cvs) and not all(cvs):
        raise UsageError("give runs alone, or cross-validations alone: a fold's members must be its folds")
    if not all(cvs):
        ckpts = _members(runs)
        metrics = ensemble_run(runs, ckpts, target, device, config.view(ckpts[0]["spec"]["view"]))
        write_json(target / "ensemble_config.json", to_dict(config))
        return metrics
    from pothole_edge.train import plots
    from pothole_edge.train.cv import summarize, table

    started = time.time()
    configs = [load_json(TrainConfig, Path(r) / "config.json") for r in runs]
    if len({c.cv for c in configs}) != 1:
        raise UsageError("the cross-validations have different numbers of folds; ensemble those of the same --cv")
    folds = [[str(fold_dir(Path(r), k)) for r in runs] for k in range(1, configs[0].cv + 1)]
    checked = [_members(members) for members in folds]  # every fold checked before the first is written
    for k, (members, ckpts) in enumerate(zip(folds, checked), 1):
        log.info("fold %d of %d", k, configs[0].cv)
        ensemble_run(members, ckpts, fold_dir(target, k), device, config.view(ckpts[0]["spec"]["view"]))
    # last: a config.json marks a finished cross-validation, so an interrupted one can simply be run again
    shutil.copyfile(Path(runs[0]) / "config.json", target / "config.json")
    result = summarize(target, configs[0], time.time() - started) | {"members": [str(r) for r in runs]}
    write_json(target / "cv.json", result)
    write_json(target / "ensemble_config.json", to_dict(config))
    plots.cv_folds(result, target / "cv.png")
    log.info("%s", table(result))
    return result

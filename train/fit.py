"""The epoch loop with early stopping and resumable checkpoints, then the final evaluation."""

from __future__ import annotations

import logging
import math
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Subset

from pothole_edge import __version__
from pothole_edge import spec as specs
from pothole_edge import view as views
from pothole_edge.fileio import write_json, write_text
from pothole_edge.train import checkpoint, data, plots
from pothole_edge.train.checkpoint import BEST, LAST
from pothole_edge.train.config import TrainConfig, parse_grids, parse_region, to_dict
from pothole_edge.train.distributed import Context, barrier, gather
from pothole_edge.train.ema import decay_per_step
from pothole_edge.train.engine import EarlyStopping, Predictions, predict, train_one_epoch
from pothole_edge.train.loader import FrameDataset, TileDataset, make_loader
from pothole_edge.train.metrics import choose_threshold
from pothole_edge.train.models import normalized, resolve_preprocess
from pothole_edge.train.report import format_metrics, write_report
from pothole_edge.train.state import TrainState, new_state
from pothole_edge.train.tiles import Footprint, footprint_of, plan_epoch

log = logging.getLogger("pt-train")

EVAL_TILES = 64
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "ema_decay", "seconds")


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _history_csv(rows: list[dict[str, Any]]) -> str:
    lines = [",".join(HISTORY_COLUMNS)]
    # .get: epochs saved before the weight average's decay was recorded
    lines += [",".join(_cell(r.get(c, "")) for c in HISTORY_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def _shard(dataset: Any, ctx: Context) -> Any:
    """This rank's share of an evaluation set, without the padding DistributedSampler adds."""
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size)) if ctx.distributed else dataset


def base_spec(
    config: TrainConfig, folder: data.LabelledFolder, threshold: float = 0.5, method: str = "not chosen yet"
) -> dict[str, Any]:
    view = specs.view(parse_region(config.region), parse_grids(config.grids), config.overlap, config.pool)
    return specs.describe(
        folder.class_names,
        1,
        threshold,
        method,
        resolve_preprocess(config.arch, config.img_size),
        view,
        config.arch,
        config.global_pool,
    )


def _class_weights(samples: list[data.Sample], mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = torch.tensor([sum(1 for s in samples if s.label == i) for i in (0, 1)], dtype=torch.float32).clamp(min=1)
    return counts.sum() / (2 * counts)


def _auc(p: Predictions) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(p.labels, p.probs)) if len(set(p.labels.tolist())) == 2 else float("nan")


def frame_loader(
    folder: data.LabelledFolder, samples: list[data.Sample], spec: dict[str, Any], config: TrainConfig, ctx: Context
) -> Any:
    dataset = FrameDataset([folder.path(s) for s in samples], [s.label for s in samples], spec)
    # no gradients here: about EVAL_TILES tiles per forward pass, whatever the training batch
    per_batch = max(1, EVAL_TILES // max(1, sum(c * r for c, r in spec["view"]["grids"])))
    return make_loader(_shard(dataset, ctx), per_batch, config.workers)


def _scoring_targets(samples: list[data.Sample], config: TrainConfig, epoch: int) -> list[int]:
    """Frames whose tiles are re-scored after an epoch, a seeded share of each kind: positives without
    boxes (their hottest tile is the next MIL positive) and negatives (their hottest tile is the next hard one)."""
    mil = [i for i, s in enumerate(samples) if s.label == 1 and (not s.boxes or config.labels == "mil")]
    negatives = [i for i, s in enumerate(samples) if s.label == 0]
    rng = random.Random(f"{config.seed}:hard:{epoch}")
    n = config.hard_negatives
    return sorted(rng.sample(mil, min(len(mil), n)) + rng.sample(negatives, min(len(negatives), n)))


def _rescore(
    model: torch.nn.Module,
    folder: data.LabelledFolder,
    samples: list[data.Sample],
    targets: list[int],
    spec: dict[str, Any],
    config: TrainConfig,
    ctx: Context,
    hottest: dict[int, Footprint],
) -> None:
    if not targets:
        return
    chosen = [samples[i] for i in targets]
    pred = predict(
        model, frame_loader(folder, chosen, spec, config, ctx), ctx, False, spec["view"], desc="finding hard tiles"
    )
    for k, box in zip(pred.indices, pred.hottest):
        hottest[targets[int(k)]] = footprint_of(box, spec["preprocess"])


def fit(config: TrainConfig, out: Path, folder: data.LabelledFolder, ctx: Context, started: float) -> dict[str, Any]:
    """Train until early stopping or --epochs, saving the whole state after every epoch, then finish."""
    spec = base_spec(config, folder)
    manifest = (out / "split.csv").read_text(encoding="utf-8", errors="surrogateescape")
    meta = {
        "config": to_dict(config),
        "manifest_sha256": data.manifest_hash(manifest),
        "package_version": __version__,
        "torch_version": str(torch.__version__),
    }
    resuming = (out / LAST).is_file() or checkpoint.previous_path(out / LAST).is_file()
    state = new_state(config, spec["preprocess"], ctx, resuming)
    if resuming:
        state.load_state_dict(checkpoint.read_state(out / LAST)[0])
        if ctx.is_main:
            best = (state.stopper.best, state.stopper.best_epoch + 1)
            log.info(
                "resuming after epoch %d of %d (best val loss %.4f at epoch %d)", state.epoch, config.epochs, *best
            )
    samples = folder.split("train")
    val_loader = frame_loader(folder, folder.split("val"), spec, config, ctx)
    weights = _class_weights(samples, config.class_weight)
    criterion = torch.nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(ctx.device), label_smoothing=config.label_smoothing
    )
    targets = None
    if config.teacher:
        from pothole_edge.train.distill import soft_targets

        targets = soft_targets(
            config.teacher, config.distill, spec["preprocess"]["crop"], folder.class_names, ctx.device
        )
        if ctx.is_main:
            log.info("distilling: %g of each tile's target from %s", config.distill, ", ".join(config.teacher))
    while state.epoch < config.epochs and not state.stopper.should_stop and not out_of_time(state.history, config):
        improved = _epoch(state, config, folder, samples, spec, criterion, val_loader, ctx, targets)
        if ctx.is_main:
            _save(state, improved, meta | {"spec": spec}, out)
        barrier(ctx)
    if state.stopper.should_stop and ctx.is_main:
        best_epoch = state.stopper.best_epoch + 1
        log.info(
            "early stop: no val loss gain of %g for %d epochs; restoring epoch %d",
            config.min_delta,
            config.patience,
            best_epoch,
        )
    elif stopped_for_time(state.history, state.stopper, config) and ctx.is_main:
        log.info(
            "time limit: %d epochs took %.1f of the %g minutes; another would pass it; keeping epoch %d",
            len(state.history),
            sum(h["seconds"] for h in state.history) / 60,
            config.time_limit,
            state.stopper.best_epoch + 1,
        )
    if not ctx.is_main:
        # the other ranks are done: they do not wait (past any NCCL timeout) while rank 0 evaluates
        return {}
    return finish(
        config,
        out,
        folder,
        state.kept_bare,
        spec,
        meta,
        state.history,
        state.stopper,
        Context(0, 1, ctx.device),
        started,
        world_size=ctx.world_size,
    )


def out_of_time(history: list[dict[str, Any]], config: TrainConfig) -> bool:
    """Whether one more epoch, as long as the mean epoch so far, would end past --time-limit."""
    if config.time_limit <= 0 or not history:
        return False
    spent = sum(h["seconds"] for h in history)
    return spent + spent / len(history) > config.time_limit * 60


def stopped_for_time(history: list[dict[str, Any]], stopper: EarlyStopping, config: TrainConfig) -> bool:
    """Whether the run ended for --time-limit alone: not stopped early and short of --epochs."""
    return not stopper.should_stop and len(history) < config.epochs and out_of_time(history, config)


def _epoch(
    state: TrainState,
    config: TrainConfig,
    folder: data.LabelledFolder,
    samples: list[data.Sample],
    spec: dict[str, Any],
    criterion: torch.nn.Module,
    val_loader: Any,
    ctx: Context,
    targets: Any = None,
) -> bool:
    """One epoch: this epoch's tiles, a pass over them, re-scoring the hard tiles, validation, the schedule.
    Returns whether the validation loss is the best so far; the epoch's row is in the history."""
    t0, epoch = time.time(), state.epoch
    torch.manual_seed(config.seed + epoch)
    grids = spec["view"]["grids"]
    whole_only = grids == [[1, 1]]
    draws = plan_epoch(
        samples,
        epoch,
        config.seed,
        config.labels,
        whole_only,
        state.hottest,
        [1, 1] in grids,
        config.paste,
        config.group_balance,
    )
    tiles = TileDataset([folder.path(s) for s in samples], samples, draws, spec, config.augment)
    sampler = (
        DistributedSampler(tiles, ctx.world_size, ctx.rank, shuffle=False, seed=config.seed)
        if ctx.distributed
        else None
    )
    # DistributedSampler pads every rank to the same count, rounding up
    per_rank = math.ceil(len(tiles) / ctx.world_size)
    loader = make_loader(
        tiles,
        config.batch_size,
        config.workers,
        sampler=sampler,
        seed=config.seed + epoch,
        drop_last=per_rank % config.batch_size == 1,
    )
    desc = f"epoch {epoch + 1}/{config.epochs}"
    if state.ema is not None:
        state.ema.decay = config.ema_decay or decay_per_step(config.ema_epochs, len(loader))
    train_loss, train_acc, skipped = train_one_epoch(
        state.model, loader, criterion, state.optimizer, ctx, state.scaler, state.amp, desc, state.after_step, targets
    )
    if skipped and ctx.is_main:
        log.warning("epoch %d skipped %d tile(s) of unreadable files", epoch + 1, skipped)
    if not whole_only:
        targets = _scoring_targets(samples, config, epoch)
        _rescore(state.kept_net, folder, samples, targets, spec, config, ctx, state.hottest)
    val = predict(state.kept_net, val_loader, ctx, state.amp, spec["view"], desc="validating")
    lr = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step(val.loss)
    improved = state.stopper.step(val.loss, epoch)
    state.history.append(
        {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val.loss,
            "val_acc": val.accuracy,
            "val_auc": _auc(val),
            "lr": lr,
            "ema_decay": state.ema.decay if state.ema is not None else 0.0,
            # the slowest rank's time, so that every rank agrees on --time-limit and none waits alone
            "seconds": max(gather(ctx, round(time.time() - t0, 2))),
        }
    )
    state.epoch += 1
    return improved


def _save(state: TrainState, improved: bool, meta: dict[str, Any], out: Path) -> None:
    """best.pt when the epoch improved, then the whole state (after best.pt, so a resumed run never lacks its
    best), the history, and the epoch's line."""
    h = state.history[-1]
    if improved:
        checkpoint.save(meta | {"state_dict": state.kept_bare.state_dict(), "epoch": h["epoch"]}, out / BEST)
    checkpoint.save(state.state_dict(), out / LAST, keep_previous=True)
    write_text(out / "history.csv", _history_csv(state.history))
    log.info(
        "epoch %d/%d  train loss %.4f acc %.3f  val loss %.4f acc %.3f auc %.3f  lr %.1e%s  %.0fs%s",
        h["epoch"],
        meta["config"]["epochs"],
        h["train_loss"],
        h["train_acc"],
        h["val_loss"],
        h["val_acc"],
        h["val_auc"],
        h["lr"],
        f"  weight average decay {h['ema_decay']:.4f}" if h["ema_decay"] else "",
        h["seconds"],
        "  * best" if improved else "",
    )


def _subsets(folder: data.LabelledFolder, samples: list[data.Sample]) -> dict[str, np.ndarray]:
    names = data.source_names(folder.roots)
    roots = np.array([s.root for s in samples])
    return {names[i]: roots == i for i in range(len(folder.roots)) if (roots == i).any()}


def judge(
    config: TrainConfig,
    out: Path,
    folder: data.LabelledFolder,
    net: torch.nn.Module,
    spec: dict[str, Any],
    ctx: Context,
    extra: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The threshold chosen on validation, then the test split's report (metrics.json, predictions.csv, plots) in
    `out`: the spec with its threshold, and the test metrics."""
    val = predict(
        net, frame_loader(folder, folder.split("val"), spec, config, ctx), ctx, False, spec["view"], desc="validating"
    )
    threshold, method = choose_threshold(val.labels, val.probs, config.threshold_rule, config.max_fpr)
    spec = specs.validate(spec | {"threshold": threshold, "threshold_method": method}, "the trained model")
    tests = folder.split("test")
    test = predict(net, frame_loader(folder, tests, spec, config, ctx), ctx, False, spec["view"], desc="testing")
    kept = [tests[int(i)] for i in test.indices]
    metrics = write_report(
        out,
        [str(folder.path(s)) for s in kept],
        test.labels,
        test.probs,
        threshold,
        folder.class_names,
        test.hottest,
        [s.boxes for s in kept],
        _subsets(folder, kept),
        {"split": "test", "threshold_method": method} | extra | {"view": spec["view"]},
    )
    return spec, metrics


def finish(
    config: TrainConfig,
    out: Path,
    folder: data.LabelledFolder,
    bare: torch.nn.Module,
    spec: dict[str, Any],
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    stopper: EarlyStopping,
    ctx: Context,
    started: float,
    world_size: int = 1,
) -> dict[str, Any]:
    """Restore the best weights, choose the threshold on val, evaluate on test, write model.pt.

    The threshold and the test metrics come from an FP32 pass, as the deployed model computes.
    """
    if (out / BEST).is_file():
        best = checkpoint.read(out / BEST)
        bare.load_state_dict(best["state_dict"])
    else:  # the val loss never improved on infinity (NaN from the first epoch): keep the last weights
        log.warning("validation loss never improved (is it NaN?); keeping the last epoch's weights")
        best = {"epoch": len(history)}
    net = normalized(bare, spec["preprocess"]).to(ctx.device).eval()
    if config.test_grids and config.test_grids != config.grids:
        # timm's test_input_size: trained on one view's tiles, judged and deployed with another, finer one
        spec = spec | {"view": spec["view"] | {"grids": parse_grids(config.test_grids, "test_grids")}}
        log.info("judging with the test view %s (%d tiles a frame)", config.test_grids, views.tile_count(spec["view"]))
    spec, metrics = judge(config, out, folder, net, spec, ctx, {"best_epoch": best["epoch"]})
    checkpoint.save(
        meta | {"spec": spec, "state_dict": bare.state_dict(), "epoch": best["epoch"], "metrics": metrics},
        out / "model.pt",
    )
    plots.history(history, best["epoch"], out / "training_curves.png")
    write_json(
        out / "summary.json",
        {
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "best_val_loss": stopper.best,
            "stopped_early": stopper.should_stop,
            "stopped_for_time": stopped_for_time(history, stopper, config),
            "wall_seconds": round(time.time() - started, 1),
            "device": str(ctx.device),
            "world_size": world_size,
            "host": platform.node(),
            "threshold": spec["threshold"],
            "threshold_method": spec["threshold_method"],
            "test": {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision")},
        },
    )
    (out / BEST).unlink(missing_ok=True)  # model.pt now holds these weights, with their metrics
    log.info("test split (%d frames):\n%s", metrics["n"], format_metrics(metrics))
    log.info("wrote %s", out / "model.pt")
    return metrics

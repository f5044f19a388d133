"""The epoch loop with early stopping and resumable checkpoints, then the final evaluation."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler, Subset

from train import __version__, checkpoint, data, plots
from train.checkpoint import BEST, LAST
from train.config import TrainConfig, to_dict
from train.distributed import Context, barrier
from train.engine import EarlyStopping, predict, train_one_epoch
from train.fileio import write_json, write_text
from train.loader import PhotoDataset, make_loader
from train.metrics import THRESHOLD_METHOD, choose_threshold
from train.models import build_model, create_model, resolve_preprocess
from train.report import format_metrics, write_report
from train.transforms import eval_transform, train_transform

log = logging.getLogger("pt-train")

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def _history_csv(rows: list[dict[str, Any]]) -> str:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in HISTORY_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def _shard(dataset: PhotoDataset, ctx: Context) -> Subset:
    """This rank's share of an evaluation set, without the padding DistributedSampler adds."""
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


def _class_weights(folder: data.LabelledFolder, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = torch.tensor([sum(1 for s in folder.split("train") if s.label == i) for i in (0, 1)], dtype=torch.float32)
    return counts.sum() / (2 * counts)


def model_metadata(config: TrainConfig, folder: data.LabelledFolder, spec: dict[str, Any], manifest_sha256: str) -> dict[str, Any]:
    return {
        "arch": config.arch,
        "class_names": list(folder.class_names),
        "positive_index": 1,
        "preprocess": spec,
        "config": to_dict(config),
        "manifest_sha256": manifest_sha256,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
    }


def fit(config: TrainConfig, out: Path, folder: data.LabelledFolder, ctx: Context, started: float) -> dict[str, Any]:
    spec = resolve_preprocess(config.arch, config.img_size)
    manifest_sha256 = data.manifest_hash((out / "split.csv").read_text(encoding="utf-8"))
    meta = model_metadata(config, folder, spec, manifest_sha256)
    last = torch.load(out / LAST, map_location="cpu", weights_only=True) if (out / LAST).is_file() else None
    torch.manual_seed(config.seed)
    model = create_model(config.arch) if last else build_model(config.arch, config.weights)
    if last:
        model.load_state_dict(last["state_dict"])
    model.to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    bare = model
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    train_set = PhotoDataset(folder.root, folder.split("train"), train_transform(spec))
    val_set = PhotoDataset(folder.root, folder.split("val"), eval_transform(spec))
    sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed) if ctx.distributed else None
    val_loader = make_loader(_shard(val_set, ctx), config.batch_size, config.workers)

    weights = _class_weights(folder, config.class_weight)
    criterion = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(ctx.device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.3, patience=config.lr_patience)
    amp = config.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    stopper = EarlyStopping(config.patience, config.min_delta)
    history: list[dict[str, Any]] = []
    start = 0
    if last:
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        stopper.load_state_dict(last["stopper"])
        if scaler is not None and last.get("scaler"):
            scaler.load_state_dict(last["scaler"])
        history, start = list(last["history"]), last["epoch"] + 1
        if ctx.is_main:
            log.info("resuming after epoch %d of %d (best val loss %.4f at epoch %d)", start, config.epochs, stopper.best, stopper.best_epoch + 1)

    per_rank = len(train_set) // ctx.world_size
    for epoch in range(start, config.epochs):
        if stopper.should_stop:
            break
        t0 = time.time()
        torch.manual_seed(config.seed + epoch)  # augmentation draws: the same after a resume
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = make_loader(train_set, config.batch_size, config.workers, shuffle=True, sampler=sampler, seed=config.seed + epoch, drop_last=per_rank % config.batch_size == 1)
        train_loss, train_acc = train_one_epoch(model, loader, criterion, optimizer, ctx, scaler, amp, desc=f"epoch {epoch + 1}/{config.epochs}")
        val = predict(bare, val_loader, ctx, amp, desc="validating")  # every rank its shard, no DDP sync needed
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val.loss)
        improved = stopper.step(val.loss, epoch)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val.loss, "val_acc": val.accuracy, "lr": lr, "seconds": round(time.time() - t0, 2)})
        if ctx.is_main:
            if improved:
                checkpoint.save(meta | {"state_dict": bare.state_dict(), "epoch": epoch + 1}, out / BEST)
            state = {"state_dict": bare.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "stopper": stopper.state_dict(), "history": history, "epoch": epoch}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            checkpoint.save(state, out / LAST)  # after best.pt, so a resumed run never lacks its best
            write_text(out / "history.csv", _history_csv(history))
            mark = "  * best" if improved else ""
            log.info("epoch %d/%d  train loss %.4f acc %.3f  val loss %.4f acc %.3f  lr %.1e  %.1fs%s", epoch + 1, config.epochs, train_loss, train_acc, val.loss, val.accuracy, lr, history[-1]["seconds"], mark)
        barrier(ctx)
    if stopper.should_stop and ctx.is_main:
        log.info("early stop: no val loss gain of %g for %d epochs; restoring epoch %d", config.min_delta, config.patience, stopper.best_epoch + 1)
    result: dict[str, Any] = {}
    if ctx.is_main:
        result = finish(config, out, folder, bare, meta, history, stopper, Context(0, 1, ctx.device), started, world_size=ctx.world_size)
    barrier(ctx)
    return result


def finish(config: TrainConfig, out: Path, folder: data.LabelledFolder, model: torch.nn.Module, meta: dict[str, Any], history: list[dict[str, Any]], stopper: EarlyStopping, ctx: Context, started: float, world_size: int = 1) -> dict[str, Any]:
    """Restore the best weights, choose the threshold on val, evaluate on test, write model.pt."""
    if (out / BEST).is_file():
        best = torch.load(out / BEST, map_location="cpu", weights_only=True)
        model.load_state_dict(best["state_dict"])
    else:  # the val loss never improved on infinity (NaN from the first epoch): keep the last weights
        log.warning("validation loss never improved (is it NaN?); keeping the last epoch's weights")
        best = {"epoch": len(history)}
    spec = meta["preprocess"]
    amp = config.amp and ctx.device.type == "cuda"
    sets = {name: PhotoDataset(folder.root, folder.split(name), eval_transform(spec)) for name in ("val", "test")}
    val = predict(model, make_loader(sets["val"], config.batch_size, config.workers), ctx, amp, desc="validating")
    threshold = choose_threshold(val.labels, val.probs)
    test = predict(model, make_loader(sets["test"], config.batch_size, config.workers), ctx, amp, desc="testing")
    paths = [sets["test"].samples[i].path for i in test.indices]
    metrics = write_report(out, paths, test.labels, test.probs, threshold, folder.class_names, extra={"split": "test", "threshold_method": THRESHOLD_METHOD, "best_epoch": best["epoch"]})
    checkpoint.save(meta | {"state_dict": model.state_dict(), "epoch": best["epoch"], "threshold": threshold, "metrics": metrics}, out / "model.pt")
    plots.history(history, best["epoch"], out / "training_curves.png")
    write_json(out / "summary.json", {
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_loss": stopper.best,
        "stopped_early": stopper.should_stop,
        "wall_seconds": round(time.time() - started, 1),
        "device": str(ctx.device),
        "world_size": world_size,
        "host": platform.node(),
        "threshold": threshold,
        "test": {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision")},
    })
    (out / BEST).unlink(missing_ok=True)  # model.pt now holds these weights, with their metrics
    log.info("test split (%d images):\n%s", metrics["n"], format_metrics(metrics))
    log.info("wrote %s", out / "model.pt")
    return metrics

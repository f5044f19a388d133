"""One training epoch over tiles, one prediction pass over frames, and early stopping."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pothole_edge import view as views
from pothole_edge.progress import progress
from pothole_edge.train.distributed import Context, all_sum, every_rank_has, gather


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without the validation loss improving by `min_delta`."""

    patience: int
    min_delta: float
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's validation loss; True when it is the new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: Context,
    scaler: torch.amp.GradScaler | None,
    amp: bool,
    desc: str,
    after_step: Callable[[], None] | None = None,
    targets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float, int]:
    """The epoch's mean tile loss and accuracy over every rank's batches, and the tiles it skipped.

    `targets` turns a batch's tiles and labels into class-probability targets (train.distill); None: the labels."""
    model.train()
    # sums stay on the device: reading a loss back every step would stall a GPU's queue
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    seen, skipped = 0, 0
    for batch, dropped in progress(loader, total=len(loader), desc=desc, unit="batch") if ctx.is_main else loader:
        skipped += dropped
        if not every_rank_has(ctx, batch is not None):
            skipped += 0 if batch is None else len(batch[1])  # another rank's batch was unreadable: all skip
            continue
        tiles, labels, _ = batch
        tiles, labels = tiles.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        with _autocast(ctx.device, amp):
            goal = labels if targets is None else targets(tiles, labels)
            logits = model(tiles)
            loss = criterion(logits, goal)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if after_step is not None:
            after_step()
        n = labels.numel()
        loss_sum += loss.detach().double() * n
        correct += (logits.argmax(1) == labels).sum()
        seen += n
    loss_sum, correct, seen = all_sum(ctx, [loss_sum.item(), correct.item(), seen])
    return loss_sum / max(seen, 1), correct / max(seen, 1), skipped


@dataclass
class Predictions:
    indices: np.ndarray  # into the dataset the loader read; unreadable frames are absent
    labels: np.ndarray
    probs: np.ndarray  # pooled probability of the positive class, per frame
    hottest: np.ndarray  # (n, 4) the box of the tile that decided each frame
    tile_probs: np.ndarray  # (n, tiles)

    @property
    def loss(self) -> float:
        """Mean binary cross-entropy of the pooled frame probability: what early stopping watches."""
        p = np.clip(self.probs, 1e-7, 1 - 1e-7)
        return float(-np.mean(self.labels * np.log(p) + (1 - self.labels) * np.log(1 - p))) if p.size else math.nan

    @property
    def accuracy(self) -> float:
        return float(((self.probs >= 0.5) == self.labels).mean()) if self.probs.size else math.nan


def torch_probs(
    model: torch.nn.Module, device: torch.device, amp: bool, positive_index: int = 1
) -> Callable[[torch.Tensor], np.ndarray]:
    """Tiles in, positive-class probabilities out, through a network that returns logits."""
    model.eval()

    @torch.no_grad()
    def probs(tiles: torch.Tensor) -> np.ndarray:
        with _autocast(device, amp):
            logits = model(tiles.to(device, non_blocking=True))
        return logits.float().softmax(1)[:, positive_index].cpu().numpy().astype(np.float64)

    return probs


def predict(
    model: torch.nn.Module | Callable[[torch.Tensor], np.ndarray],
    loader: DataLoader,
    ctx: Context,
    amp: bool,
    spec_view: dict[str, Any],
    positive_index: int = 1,
    desc: str = "predicting",
) -> Predictions:
    """Pooled frame probabilities for this rank's share of the loader, gathered from every rank.

    `model` is a network returning logits, or any function from a tile batch to probabilities (ONNX Runtime).
    """
    probs_of = torch_probs(model, ctx.device, amp, positive_index) if isinstance(model, torch.nn.Module) else model
    idx, ys, ps, hot, tps = [], [], [], [], []
    for batch, _ in progress(loader, total=len(loader), desc=desc, unit="batch") if ctx.is_main else loader:
        if batch is None:
            continue
        tiles, labels, indices, boxes = batch
        b, n = tiles.shape[:2]
        probs = probs_of(tiles.flatten(0, 1)).reshape(b, n)
        for k in range(b):
            p, t = views.pool(probs[k], spec_view)
            ps.append(p)
            hot.append(boxes[k, t].numpy())
        tps.append(probs)
        ys.append(labels.numpy())
        idx.append(indices.numpy())
    tiles_n = views.tile_count(spec_view)
    local = (
        np.concatenate(idx) if idx else np.zeros(0, int),
        np.concatenate(ys) if ys else np.zeros(0, int),
        np.asarray(ps, np.float64),
        np.asarray(hot, np.float64).reshape(-1, 4),
        np.concatenate(tps) if tps else np.zeros((0, tiles_n)),
    )
    parts = gather(ctx, local)
    indices = np.concatenate([p[0] for p in parts])
    order = np.argsort(indices, kind="stable")
    cat = [np.concatenate([p[k] for p in parts])[order] for k in range(1, 5)]
    return Predictions(indices[order], *cat)

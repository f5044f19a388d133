"""One training epoch, one prediction pass, and early stopping."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from train.distributed import Context, all_sum, gather


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


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: Context, scaler: "torch.amp.GradScaler | None", amp: bool, desc: str) -> tuple[float, float]:
    """Returns the epoch's mean loss and accuracy over every rank's batches."""
    model.train()
    loss_sum = correct = seen = 0.0
    bar = tqdm(loader, desc=desc, unit="batch", disable=True if not ctx.is_main else None, leave=False, dynamic_ncols=True)
    for images, labels, _ in bar:
        images, labels = _to_device(images, ctx.device), labels.to(ctx.device, non_blocking=True)
        with _autocast(ctx.device, amp):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = labels.numel()
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    loss_sum, correct, seen = all_sum(ctx, [loss_sum, correct, seen])
    return loss_sum / seen, correct / seen


@dataclass
class Predictions:
    indices: np.ndarray  # into the dataset the loader read
    labels: np.ndarray
    probs: np.ndarray  # probability of the positive class
    loss: float  # mean unweighted cross-entropy

    @property
    def accuracy(self) -> float:
        return float(((self.probs >= 0.5) == self.labels).mean())


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, ctx: Context, amp: bool, positive_index: int = 1, desc: str = "predicting") -> Predictions:
    """Predict this rank's share of the loader, then gather every rank's share."""
    model.eval()
    idx, ys, ps, loss_sum = [], [], [], 0.0
    for images, labels, indices in tqdm(loader, desc=desc, unit="batch", disable=True if not ctx.is_main else None, leave=False):
        images, labels = _to_device(images, ctx.device), labels.to(ctx.device)
        with _autocast(ctx.device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        ps.append(logits.softmax(1)[:, positive_index].cpu().numpy())
        ys.append(labels.cpu().numpy())
        idx.append(indices.numpy())
    local = (np.concatenate(idx) if idx else np.zeros(0, int), np.concatenate(ys) if ys else np.zeros(0, int), np.concatenate(ps) if ps else np.zeros(0), loss_sum)
    parts = gather(ctx, local)
    indices = np.concatenate([p[0] for p in parts])
    order = np.argsort(indices, kind="stable")
    labels = np.concatenate([p[1] for p in parts])[order]
    probs = np.concatenate([p[2] for p in parts])[order]
    n = max(indices.size, 1)
    return Predictions(indices[order], labels, probs, sum(p[3] for p in parts) / n)

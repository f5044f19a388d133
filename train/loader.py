"""Torch datasets and loaders over a LabelledFolder's samples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from train.data import Sample
from train.images import decode_image


class PhotoDataset(Dataset):
    def __init__(self, root: Path, samples: Sequence[Sample], transform: Callable) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        s = self.samples[i]
        return self.transform(decode_image(self.root / s.path)), s.label, i


def default_workers() -> int:
    """No worker processes on 2 cores or fewer: there a worker only steals the compute threads' cores
    (measured on the real photos: 28.6 s per Lite0 epoch with none, 32.0 s with one)."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def make_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool = False, sampler=None, seed: int = 0, drop_last: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )

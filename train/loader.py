"""Torch datasets over a LabelledFolder: training tiles, and evaluation frames cut into the view's tiles."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pothole_edge import preprocess
from pothole_edge.images import ImageDecodeError, read_rgb
from pothole_edge.train.data import Sample
from pothole_edge.train.paste import paste
from pothole_edge.train.tiles import Draw, augment, footprint

log = logging.getLogger("pt-train")


# Each epoch cuts two or three tiles from every training frame and re-reads validation frames;
# decoding a 800x500 JPEG costs about 7 ms, a fifth of an epoch on 2 cores. Decoded frames are kept
# up to this many bytes per process (a 1,469-frame set at 800 px needs about 1.7 GB).
CACHE_BYTES = 3 << 30
_cache: dict[tuple[str, int, int], np.ndarray] = {}
_cached_bytes = 0


def _read(path: Path) -> np.ndarray | None:
    """A file that became unreadable after the scan (deleted, truncated) is skipped, never fatal."""
    global _cached_bytes
    try:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)  # a file replaced since is decoded again
        if key in _cache:
            return _cache[key]
        image = read_rgb(path)
    except (ImageDecodeError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        log.warning("skipping %s: %s (it was readable when the run started)", path, reason)
        return None
    if _cached_bytes + image.nbytes <= CACHE_BYTES:
        image.flags.writeable = False  # shared by every tile cut from it
        _cache[key] = image
        _cached_bytes += image.nbytes
    return image


class TileDataset(Dataset):
    """One training tile per draw: (uint8 HWC tile, label, draw index)."""

    def __init__(
        self,
        paths: Sequence[Path],
        samples: Sequence[Sample],
        draws: Sequence[Draw],
        spec: dict[str, Any],
        recipe: str = "basic",
    ) -> None:
        self.paths, self.samples, self.draws, self.spec = list(paths), list(samples), list(draws), spec
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        draw = self.draws[i]
        image = _read(self.paths[draw.index])
        if image is None:
            return None
        fp, label = footprint(draw, self.samples[draw.index], image.shape[1], image.shape[0], self.spec)
        tile = preprocess.cut(image, *fp, self.spec["preprocess"])
        if draw.mode == "paste":
            tile, label = self._paste(tile, draw, fp[2])
        tile = augment(tile, draw.seed, self.recipe)
        return torch.from_numpy(np.ascontiguousarray(tile)), label, i

    def _paste(self, tile: np.ndarray, draw: Draw, side: float) -> tuple[np.ndarray, int]:
        """The host tile with the donor's pothole in it; the plain host tile, negative, if the donor is unreadable."""
        donor = _read(self.paths[draw.donor])
        if donor is None:
            return tile, 0
        boxes = self.samples[draw.donor].boxes or ()
        box = boxes[random.Random(draw.seed).randrange(len(boxes))]
        return paste(tile, donor, box, self.spec["preprocess"]["resize"] / side, draw.seed), 1


class FrameDataset(Dataset):
    """Every tile of the view, per frame: (uint8 (N, crop, crop, 3), label, index, tile boxes (N, 4))."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        spec: dict[str, Any],
        region: tuple[float, ...] | None = None,
    ) -> None:
        self.paths, self.labels, self.spec, self.region = list(paths), list(labels), spec, region

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, torch.Tensor] | None:
        image = _read(self.paths[i])
        if image is None:
            return None
        tiles, boxes = preprocess.tiles(image, self.spec, self.region)
        return torch.from_numpy(tiles), self.labels[i], i, torch.from_numpy(boxes)


def collate(items: list[Any]) -> tuple[Any, int]:
    """(the batch without the files that could not be read, or None; how many were dropped)"""
    kept = [x for x in items if x is not None]
    return (torch.utils.data.default_collate(kept) if kept else None), len(items) - len(kept)


def default_workers() -> int:
    """No worker processes on 2 cores or fewer: there a worker only steals the compute threads' cores
    (measured on the real photos: 28.6 s per Lite0 epoch with none, 32.0 s with one)."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    shuffle: bool = False,
    sampler: Any = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
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
        collate_fn=collate,
    )

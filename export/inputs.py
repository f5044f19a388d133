"""Model inputs from photos: decode with PIL, apply the spec's geometry, keep uint8 RGB."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from train.images import decode_image


def load_inputs(paths: Sequence[Path], spec: dict[str, Any], desc: str = "decoding") -> np.ndarray:
    """An (N, crop, crop, 3) uint8 array, through the same geometry as training's evaluation."""
    from train.transforms import geometry

    geo = geometry(spec)
    return np.stack([np.asarray(geo(decode_image(p)), dtype=np.uint8) for p in tqdm(paths, desc=desc, unit="img", leave=False, disable=None)])


def batches(inputs: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(inputs), size):
        yield inputs[i : i + size]

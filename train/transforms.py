"""Torch transforms built from a preprocessing spec (see train.models.resolve_preprocess)."""

from __future__ import annotations

from typing import Any, Callable


def _interpolation(spec: dict[str, Any]):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(spec["interpolation"])


def _to_tensor(spec: dict[str, Any]) -> list:
    from torchvision import transforms as T

    return [T.ToTensor(), T.Normalize(spec["mean"], spec["std"])]


def geometry(spec: dict[str, Any]) -> Callable:
    """PIL image in, PIL image out: resize the shorter side, then centre-crop.

    The one implementation of inference-time geometry: training's evaluation and the export's
    uint8 model inputs both go through it.
    """
    from torchvision import transforms as T

    return T.Compose([T.Resize(spec["resize"], _interpolation(spec), antialias=spec["antialias"]), T.CenterCrop(spec["crop"])])


def eval_transform(spec: dict[str, Any]) -> Callable:
    """`geometry`, then scale to [0, 1] and normalise."""
    from torchvision import transforms as T

    return T.Compose([geometry(spec), *_to_tensor(spec)])


def train_transform(spec: dict[str, Any]) -> Callable:
    """Augmentations a dashcam sees: framing, mirror, light and tilt. No vertical flips: roads are below the sky."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(spec["crop"], scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), interpolation=_interpolation(spec), antialias=spec["antialias"]),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.RandomRotation(8, interpolation=_interpolation(spec))], p=0.3),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.02),
            *_to_tensor(spec),
        ]
    )

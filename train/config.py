"""One frozen config per command. Unknown keys are errors; the resolved config is saved with the run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

from train.errors import UsageError

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str = "runs/train"
    arch: str | None = None  # None: resnet50, or efficientnet_lite0 for the demo
    weights: str | None = None  # None: imagenet
    positive: str | None = None
    img_size: int | None = None  # None: the arch's own input size
    epochs: int = 30
    batch_size: int = 32
    lr: float | None = None  # None: 3e-4 from pretrained weights, 1e-3 from scratch
    weight_decay: float = 1e-5
    patience: int = 5
    min_delta: float = 1e-4
    lr_patience: int = 2
    class_weight: str = "none"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    workers: int | None = None  # None: 0 on 2 cores or fewer, else half the cores, at most 4
    device: str = "auto"
    amp: bool = True
    demo_per_class: int = 100


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    out: str = "runs/eval"
    threshold: float | None = None  # None: the checkpoint's threshold
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"


def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Build `cls` from a mapping, rejecting keys the dataclass does not have."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(f"unknown config key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(names)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise UsageError(f"incomplete {cls.__name__}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_json(cls: type[C], path: str | Path) -> C:
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config {path} must hold a JSON object")
    return from_dict(cls, values)

"""One frozen config per command. Unknown keys are errors; every value is checked before the disk is
touched; the resolved config (every default filled in) is saved with the run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pothole_edge import checks
from pothole_edge.errors import UsageError
from pothole_edge.spec import GLOBAL_POOLS, POOLS

C = TypeVar("C")
ARCH_CHOICES = ("resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LABELS = ("boxes", "mil")
THRESHOLD_RULES = ("max-fpr", "youden")
CLASS_WEIGHTS = ("none", "balanced")
AUGMENTS = ("basic", "road")  # train.tiles.augment
DEFAULT_GRIDS = "1x1+4x3"
# a finer level added at test time: the 13-tile models judged with it ranked held-out roads better, six-road
# leave-one-road-out mean ROC-AUC 0.855 against 0.822, pooled 0.907 against 0.889 (README, *More tiles at test time*)
DEFAULT_TEST_GRIDS = "1x1+4x3+5x3"


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # one or more roots; "demo" for the synthetic set
    out: str | None = None  # None: runs/train, or the next free runs/trainN
    arch: str | None = None  # None: resnet50, or efficientnet_lite0 for the demo
    weights: str | None = None  # None: imagenet
    positive: str | None = None  # None: the folder named pothole or potholes
    img_size: int | None = None  # None: the weights' own input size
    # the view: grids "CxR+CxR" (1x1 is the whole frame), overlap between tiles, region x0,y0,x1,y1
    # None: DEFAULT_GRIDS. 12 small tiles find small potholes: road CV 0.872 against 0.846 for 1x1+3x2
    grids: str | None = None
    # the view the model is judged and deployed with, as timm's test_input_size: its threshold is chosen there.
    # Training draws its tiles from --grids' levels. None: DEFAULT_TEST_GRIDS with the default --grids, else --grids
    test_grids: str | None = None
    overlap: float = 0.25
    region: str = "0,0,1,1"
    # a frame's probability from its tiles': max, or top2 (the mean of the two hottest: one odd crack tile
    # decides less; better on held-out roads)
    pool: str = "top2"
    # leading stages of the pretrained network kept as they are (train.models.STAGES); None: 3 for an
    # EfficientNet-Lite from pretrained weights (2.4x cheaper steps on a CPU), else 0
    freeze: int | None = None
    # the network's pooling of its last feature map (timm's global_pool): avg, max or avgmax
    global_pool: str = "avg"
    augment: str = "road"  # tile augmentation: basic or road (train.tiles.augment)
    # share of negative frames that also give a tile with a boxed pothole pasted in (train.paste); 0: none.
    # Off by default: 3-fold road CV 0.863 with 0.5, against 0.872 without
    paste: float = 0.0
    # each group (--group-column, e.g. road) drawn equally often in an epoch, small roads repeated and large ones
    # subsampled (train.tiles.balanced_frames); frames without a group come once each. Off by default: six-road
    # leave-one-road-out mean ROC-AUC 0.816 with it, against 0.822 without (web photos 0.972 against 0.954)
    group_balance: bool = False
    labels: str = "boxes"  # tile labels from boxes.csv where a root has one, else MIL; "mil": MIL everywhere
    group_column: str = "segment"  # frames.csv column whose frames must share a split
    epochs: int = 30
    # minutes of training epochs at most (Ultralytics' `time`): no epoch starts that the mean epoch so far says
    # would end past it; 0: no limit. A budget for a slow machine; the epochs it allows depend on the machine
    time_limit: float = 0.0
    batch_size: int = 32
    lr: float | None = None  # None: 3e-4 from pretrained weights, 1e-3 from scratch
    weight_decay: float = 1e-5
    patience: int = 5
    min_delta: float = 1e-4
    lr_patience: int = 2
    class_weight: str = "none"
    label_smoothing: float = 0.0  # some crack-only frames show damage that looks like a pothole
    # the weight average (train.ema) that is validated and kept spans this many epochs: its decay per step is
    # 1 - 1 / (ema_epochs x the epoch's steps), the same span on a 7-step demo epoch as on a 50-step one; 0: the live
    # weights
    ema_epochs: float = 1.0
    ema_decay: float = 0.0  # a fixed decay per step instead (timm's --model-ema-decay); 0: from ema_epochs
    # knowledge distillation (train.distill): trained runs whose mean tile probability is part of each target
    teacher: tuple[str, ...] = ()
    distill: float = 0.5  # the teachers' share of each tile's target, with --teacher
    threshold_rule: str = "max-fpr"
    max_fpr: float = 0.02  # on the validation negatives, for --threshold-rule max-fpr
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    hard_negatives: int = (
        100  # frames of each kind re-scored each epoch for their hottest tile (hard negatives, MIL positives)
    )
    seed: int = 0
    # seed of the split and the folds; None: --seed. Another --seed with the same --split-seed retrains the same
    # folds, which is how the spread between seeds is measured apart from the spread between folds
    split_seed: int | None = None
    cv: int = 0  # cross-validation: this many folds of whole groups, each held out once; 0: one split
    cv_fold: int = 0  # the fold this run holds out (1..cv); 0 with cv: every fold, one run each
    workers: int | None = None  # None: 0 on 2 cores or fewer, else half the cores, at most 4
    device: str = "auto"
    amp: bool = True
    demo_per_class: int = 100

    @property
    def data_seed(self) -> int:
        """The seed of the data: the split, the folds, the demo's images and the replay's draw from held-out frames."""
        return self.seed if self.split_seed is None else self.split_seed

    def check(self) -> None:
        """Every value, before anything is written: a rerun must not find a half-claimed directory."""
        if not self.data:
            raise UsageError(
                "missing --data DIR (a folder with normal/ and pothole/), or --data demo, or --resume RUN_DIR"
            )
        checks.choice("arch", self.arch, ARCH_CHOICES, optional=True)
        checks.choice("labels", self.labels, LABELS)
        checks.choice("augment", self.augment, AUGMENTS)
        checks.choice("pool", self.pool, POOLS)
        checks.choice("global-pool", self.global_pool, GLOBAL_POOLS)
        checks.choice("class-weight", self.class_weight, CLASS_WEIGHTS)
        checks.choice("threshold-rule", self.threshold_rule, THRESHOLD_RULES)
        for name in ("group_balance", "amp"):
            checks.boolean(name, getattr(self, name))
        for name in ("epochs", "batch_size", "patience", "demo_per_class"):
            checks.integer(name, getattr(self, name), 1)
        for name in ("lr_patience", "hard_negatives", "seed", "cv", "cv_fold"):
            checks.integer(name, getattr(self, name), 0)
        if self.freeze is not None:
            checks.integer("freeze", self.freeze, 0)
        if self.split_seed is not None:
            checks.integer("split_seed", self.split_seed, 0)
        if self.cv == 1 or self.cv > 100:
            raise UsageError(f"--cv must be 0 (one split) or 2 to 100 folds, got {self.cv}")
        if self.cv_fold > self.cv:
            raise UsageError(f"--cv-fold must be from 1 to --cv ({self.cv}), got {self.cv_fold}")
        if self.workers is not None:
            checks.integer("workers", self.workers, 0)
        if self.img_size is not None:
            checks.integer("img_size", self.img_size, 16, 1024)
        if self.lr is not None:
            checks.number("lr", self.lr, 0, 1, low_open=True, high_open=True)
        checks.number("weight_decay", self.weight_decay, 0, 1, high_open=True)
        checks.number("label_smoothing", self.label_smoothing, 0, 0.5, high_open=True)
        checks.number("ema_decay", self.ema_decay, 0, 1, high_open=True)
        checks.number("ema_epochs", self.ema_epochs, 0, 100)
        checks.number("distill", self.distill, 0, 1)
        checks.number("paste", self.paste, 0, 1)
        checks.number("min_delta", self.min_delta, 0)
        checks.number("time_limit", self.time_limit, 0)
        checks.number("max_fpr", self.max_fpr, 0, 1, high_open=True)
        checks.number("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        checks.number("test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise UsageError("--val-fraction and --test-fraction must sum below 1")
        checks.number("overlap", self.overlap, 0, 0.9, high_open=True)
        for name in ("grids", "test_grids"):
            if getattr(self, name) is not None:
                parse_grids(getattr(self, name), name)
        parse_region(self.region)
        if not self.group_column:
            raise UsageError("--group-column must name a frames.csv column")


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    out: str | None = None  # None: runs/eval, or the next free runs/evalN
    threshold: float | None = None  # None: the model's threshold
    region: str | None = None  # None: the model's view region
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"

    def check(self) -> None:
        if self.threshold is not None:
            checks.probability("threshold", self.threshold)
        checks.integer("batch_size", self.batch_size, 1)
        if self.workers is not None:
            checks.integer("workers", self.workers, 0)
        if self.region is not None:
            parse_region(self.region)


@dataclass(frozen=True)
class EnsembleConfig:
    runs: tuple[str, ...]  # finished runs of one split, or cross-validations of the same folds
    out: str
    device: str = "cpu"
    # another view for the joined model (None: the runs' own); one run needs one of them
    grids: str | None = None
    pool: str | None = None

    def check(self) -> None:
        if not self.out:
            raise UsageError("missing --out DIR for the ensemble")
        if self.grids is not None:
            parse_grids(self.grids)
        checks.choice("pool", self.pool, POOLS, optional=True)
        if not self.runs or (len(self.runs) < 2 and self.grids is None and self.pool is None):
            raise UsageError(
                "pt-ensemble needs two or more runs (run directories or cross-validations), or one run with "
                "--grids or --pool to judge it under another view"
            )

    def view(self, view: dict[str, Any]) -> dict[str, Any]:
        """The runs' view with this config's --grids and --pool in place of theirs."""
        given = {"grids": parse_grids(self.grids) if self.grids else None, "pool": self.pool}
        return view | {k: v for k, v in given.items() if v is not None}


def parse_grids(text: str, name: str = "grids") -> list[list[int]]:
    """ "1x1+3x2" -> [[1, 1], [3, 2]]; `name` is the option's, for the message"""
    try:
        grids = [[int(n) for n in part.lower().split("x")] for part in str(text).split("+")]
    except ValueError:
        grids = []
    if not grids or any(len(g) != 2 or not all(1 <= n <= 16 for n in g) for g in grids):
        raise UsageError(f"--{name.replace('_', '-')} {text!r} must be levels like 1x1+3x2 (cols x rows, 1 to 16 each)")
    return grids


def parse_region(text: str) -> tuple[float, float, float, float]:
    from pothole_edge.spec import check_region

    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    return check_region(
        values, lambda what: UsageError(f"--region {text!r}: {what}; give x0,y0,x1,y1 as fractions, e.g. 0,0.4,1,1")
    )


def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Build `cls` from a mapping, rejecting keys the dataclass does not have."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(
            f"unknown config key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(names)}"
        )
    values = dict(values)
    if cls is TrainConfig:
        # a run saved before the weight average became the default trained without one
        values.setdefault("ema_epochs", 0.0)
        for key in ("data", "teacher"):
            if isinstance(values.get(key), (list, str)):
                values[key] = tuple(values[key]) if isinstance(values[key], list) else (values[key],)
    try:
        return cls(**values)
    except TypeError as e:
        raise UsageError(f"incomplete {cls.__name__}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_json(cls: type[C], path: str | Path) -> C:
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config {path} must hold a JSON object")
    return from_dict(cls, values)

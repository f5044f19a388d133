"""The export stage's config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str  # a run directory or its model.pt
    opset: int = 17
    out: str | None = None  # None: beside the checkpoint
    data: str | None = None  # None: the test split in the run's split manifest
    int8: bool = False
    fp16: bool = False
    simplify: bool = True
    prob_tol: float = 1e-4  # FP32: max |probability difference|
    metric_tol: float = 1e-4  # FP32: max |difference| of any metric
    min_label_agreement: float = 1.0  # FP32: fraction of identical labels
    int8_max_accuracy_drop: float = 0.01
    int8_max_auc_drop: float = 0.01
    fp16_prob_tol: float = 1e-2
    calibration_images: int = 128
    # 7-bit weights: on x86 without VNNI, U8S8 products saturate (measured here: ResNet-50 INT8
    # accuracy 0.80 without it, 0.88 with it, against 0.86 in FP32)
    int8_reduce_range: bool = True
    speed_runs: int = 50
    batch_size: int = 16

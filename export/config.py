"""The export stage's config: one frozen dataclass, checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from pothole_edge import checks


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str  # a run directory or its model.pt
    opset: int = 17
    out: str | None = None  # None: beside the checkpoint
    data: str | None = None  # None: the test split in the run's split manifest
    int8: bool = False
    int8_trt: bool = False  # also a symmetric signed INT8 model for TensorRT
    fp16: bool = False
    simplify: bool = True
    prob_tol: float = 1e-4  # FP32: max |tile probability difference|
    metric_tol: float = 1e-4  # FP32: max |difference| of any metric
    min_label_agreement: float = 1.0  # FP32: fraction of identical frame labels
    int8_max_accuracy_drop: float = 0.01
    int8_max_auc_drop: float = 0.01
    fp16_prob_tol: float = 2e-2  # FP16 keeps 11 significant bits: logits drift ~0.05 over ~100 layers
    calibration_images: int = 128
    # None: decided from this CPU (7-bit weights on x86 without VNNI, where 8-bit products saturate)
    int8_reduce_range: bool | None = None
    speed_runs: int = 50
    batch_size: int = 16

    def check(self) -> None:
        for name in ("calibration_images", "speed_runs", "batch_size"):
            checks.integer(name, getattr(self, name), 1)
        for name in (
            "prob_tol",
            "metric_tol",
            "min_label_agreement",
            "int8_max_accuracy_drop",
            "int8_max_auc_drop",
            "fp16_prob_tol",
        ):
            checks.number(name, getattr(self, name), 0)
        checks.probability("min_label_agreement", self.min_label_agreement)

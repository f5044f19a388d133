"""Faster variants of an FP32 ONNX model: static INT8 (QDQ, per-channel) and FP16."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class _Calibration:
    """Feeds ONNX Runtime's calibrator the same uint8 inputs inference sees."""

    def __init__(self, inputs: np.ndarray, name: str, batch_size: int = 8) -> None:
        self._batches = iter([{name: inputs[i : i + batch_size]} for i in range(0, len(inputs), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def int8(fp32: Path, out: Path, calibration: np.ndarray, reduce_range: bool = False) -> Path:
    """Static INT8: QDQ format, per-channel weights, activations calibrated on training images.

    The final Softmax stays in float: quantising probabilities would coarsen every threshold.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + ".prep.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        keep_float = [n.name for n in graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(prepared),
            str(out),
            _Calibration(calibration, graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            reduce_range=reduce_range,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def fp16(fp32: Path, out: Path) -> Path:
    """FP16 weights and activations for GPU providers; uint8 in and float32 out stay as they were."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return out

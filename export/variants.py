"""Faster variants of an FP32 ONNX model: static INT8 (QDQ, per-channel) and FP16."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class _Calibration:
    """Feeds ONNX Runtime's calibrator the same uint8 inputs inference sees."""

    def __init__(self, inputs: np.ndarray, name: str, batch_size: int = 8) -> None:
        self._batches = iter([{name: inputs[i : i + batch_size]} for i in range(0, len(inputs), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def int8(
    fp32: Path, out: Path, calibration: np.ndarray, reduce_range: bool = False, for_tensorrt: bool = False
) -> Path:
    """Static INT8: QDQ format, per-channel weights, activations calibrated on training tiles.

    The final Softmax stays in float: quantising probabilities would coarsen every threshold.
    For the CPU, so does a stem convolution fed by the 3 colour channels: with so few input channels
    the INT8 kernel cannot fill its vector lanes, and on AVX2 it measured slower than the float one.
    For TensorRT (`for_tensorrt`), activations and weights are signed and symmetric (zero point 0),
    the only INT8 TensorRT runs, biases stay float, and TensorRT decides itself where INT8 pays.
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
        if not for_tensorrt:
            keep_float += _narrow_convs(graph)
        quantize_static(
            str(prepared),
            str(out),
            _Calibration(calibration, graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            reduce_range=reduce_range and not for_tensorrt,
            # TensorRT's explicit quantization takes int8 Q/DQ pairs and float biases
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
            if for_tensorrt
            else {},
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def _narrow_convs(graph: object, max_in_channels: int = 4) -> list[str]:
    """Conv nodes whose weight has at most `max_in_channels` input channels per group."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    narrow = []
    for node in graph.node:
        weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight and len(weight) == 4 and weight[1] <= max_in_channels and weight[2] * weight[3] > 1:
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            if groups == 1:
                narrow.append(node.name)
    return narrow


def fp16(fp32: Path, out: Path) -> Path:
    """FP16 weights and activations for GPU providers; uint8 in and float32 out stay as they were."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


@dataclass(frozen=True)
class Recipe:
    """How pt-export makes one faster variant. Which providers may run it is core.session.VARIANTS[name], the
    table edge-run and pt-bench read too; the export gates the variant on each of those it finds."""

    name: str  # the variant: model.NAME.onnx, and `variant` in its metadata
    flag: str  # the ExportConfig field that asks for it
    make: Callable[[Path, Path, np.ndarray | None, tuple[bool, str]], dict[str, Any]]  # -> metadata to add
    calibrated: bool  # needs INT8 calibration tiles
    timed: bool  # its CPU frame latency is reported beside FP32's
    report: str  # the name of its CPU gate in parity.json


def _int8(fp32: Path, out: Path, tiles: np.ndarray | None, int8_range: tuple[bool, str]) -> dict[str, Any]:
    int8(fp32, out, tiles, reduce_range=int8_range[0])
    settings = {"reduce_range": int8_range[0], "why": int8_range[1], "activations": "uint8"}
    return {"int8": settings | {"calibration_tiles": len(tiles)}}


def _int8_trt(fp32: Path, out: Path, tiles: np.ndarray | None, int8_range: tuple[bool, str]) -> dict[str, Any]:
    int8(fp32, out, tiles, for_tensorrt=True)
    settings = {"reduce_range": False, "why": "TensorRT: signed symmetric", "activations": "int8 symmetric"}
    return {"int8": settings | {"calibration_tiles": len(tiles)}}


def _fp16(fp32: Path, out: Path, tiles: np.ndarray | None, int8_range: tuple[bool, str]) -> dict[str, Any]:
    fp16(fp32, out)
    return {}


RECIPES = (
    Recipe("int8", "int8", _int8, calibrated=True, timed=True, report="pytorch vs ort int8"),
    Recipe("int8-trt", "int8_trt", _int8_trt, calibrated=True, timed=True, report="pytorch vs ort int8-trt"),
    Recipe("fp16", "fp16", _fp16, calibrated=False, timed=False, report="pytorch vs ort fp16 (cpu)"),
)

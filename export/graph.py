"""The exported graph: uint8 NHWC RGB tiles in, class probabilities out.

Scaling, normalisation and the NHWC->NCHW transpose live inside the graph (pothole_edge.train.network),
so a caller (the edge, with OpenCV) only cuts tiles, and cannot get mean, std or layout wrong.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

MIN_OPSET = 13


def max_opset() -> int:
    import onnx
    from torch.onnx import _constants

    return min(onnx.defs.onnx_opset_version(), _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def to_onnx(module: torch.nn.Module, path: Path, opset: int, crop: int) -> None:
    """Export with a dynamic batch axis, constant-folded, at exactly `opset`.

    The TorchScript exporter is used on purpose: in torch 2.14 the dynamo exporter writes
    opset 18 when asked for 17 on these graphs (its version converter fails on axes inputs).
    """
    example = torch.zeros(1, crop, crop, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            opset_version=opset,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            do_constant_folding=True,
            dynamo=False,
        )

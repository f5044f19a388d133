"""The exported graph: uint8 NHWC RGB crops in, class probabilities out.

Scaling, normalisation and the NHWC->NCHW transpose live inside the graph, so a caller (the
edge, with OpenCV) only resizes and crops, and cannot get mean, std or layout wrong.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

MIN_OPSET = 13


def max_opset() -> int:
    import onnx
    from torch.onnx import _constants

    return min(onnx.defs.onnx_opset_version(), _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


class Deployable(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        # folding 1/255 into mean and std saves one op and one rounding
        self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) / self.std).softmax(1)


def to_onnx(module: Deployable, path: Path, opset: int, crop: int) -> None:
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

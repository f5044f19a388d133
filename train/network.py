"""The network as deployed: uint8 NHWC RGB tiles in; scaling, mean/std and layout inside the model.

Training, evaluation and the export all call the same module, so the inputs that the parity gate
feeds to PyTorch and to ONNX Runtime are byte for byte the ones the edge makes.
"""

from __future__ import annotations

from typing import Any

import torch


class Normalized(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, prep: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        # folding 1/255 into mean and std saves one op and one rounding
        self.register_buffer(
            "mean", torch.tensor(prep["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(prep["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for a (N, H, W, 3) uint8 batch."""
        x = image.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) / self.std)


class MeanLogits(torch.nn.Module):
    """Several networks of one view and preprocessing as one model (pt-ensemble): the mean of their logits."""

    def __init__(self, nets: list[torch.nn.Module]) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(image) for net in self.nets]).mean(0)


class Deployable(torch.nn.Module):
    """Probabilities instead of logits: what model.onnx computes."""

    def __init__(self, net: Normalized) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).softmax(1)

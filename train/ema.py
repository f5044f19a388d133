"""An exponential moving average of the weights (timm's ModelEmaV3, the `--model-ema` of its train.py).

A run here is short (a few hundred steps) and early stopping watches one validation road: the averaged weights
are less tied to the last batches drawn, so the validation loss and the model kept are steadier. Validation,
hard-tile scoring, best.pt and model.pt all use the average; the optimiser trains the live weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def decay_per_step(epochs: float, steps: int) -> float:
    """The decay that averages over about `epochs` epochs of `steps` steps (an EMA spans 1 / (1 - decay) steps):
    a span in epochs means the same whatever the data's size, where a fixed decay of 0.98 would average one epoch of
    the shared data (39 to 55 steps) but seven of the demo's (7 steps)."""
    return max(0.0, 1.0 - 1.0 / (epochs * max(steps, 1)))


class WeightAverage:
    """No warm-up (timm's and TensorFlow's `(1 + n) / (10 + n)` would average over a tenth of the steps so far,
    too little to matter in a run this short): the first epoch's average still leans on the starting weights, and
    early stopping simply does not keep it."""

    def __init__(self, bare: torch.nn.Module, decay: float) -> None:
        self.bare = copy.deepcopy(bare).eval()
        for p in self.bare.parameters():
            p.requires_grad_(False)
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self, live: torch.nn.Module) -> None:
        d = self.decay
        averaged, current = self.bare.state_dict(), live.state_dict()
        floats = [(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point()]
        if floats:
            a, c = zip(*floats)
            torch._foreach_lerp_(list(a), list(c), 1.0 - d)
        for k, v in averaged.items():
            if not v.is_floating_point():  # BatchNorm's step counter: copied, an average means nothing
                v.copy_(current[k])
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.bare.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bare.load_state_dict(state["state_dict"])
        self.steps = int(state["steps"])

"""An exponential moving average of the weights (timm's ModelEmaV3, the `--model-ema` of its train.py).

A run here is short (a few hundred steps) and early stopping watches one validation road: the averaged weights
are less tied to the last batches drawn, so the validation loss and the model kept are steadier. Validation,
hard-tile scoring, best.pt and model.pt all use the average; the optimiser trains the live weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class WeightAverage:
    def __init__(self, bare: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.bare = copy.deepcopy(bare).eval()
        for p in self.bare.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.steps = decay, warmup, 0

    def current_decay(self) -> float:
        """Warmed up as in timm: (1 + n) / (10 + n) until that passes `decay`, so the first steps do not
        average the pretrained head's random start into the result."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, live: torch.nn.Module) -> None:
        d = self.current_decay()
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

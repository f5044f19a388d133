"""Everything a training run carries from one epoch to the next, saved whole after each epoch so that a run killed
at any point resumes exactly where it was: the weights, the optimiser, the learning-rate schedule, AMP's scaler, the
early stopping, the history and the sampler's hottest tiles."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from pothole_edge.errors import UsageError
from pothole_edge.train.config import TrainConfig
from pothole_edge.train.distributed import Context
from pothole_edge.train.ema import WeightAverage
from pothole_edge.train.engine import EarlyStopping
from pothole_edge.train.models import build_model, create_model, freeze, normalized
from pothole_edge.train.tiles import Footprint

log = logging.getLogger("pt-train")


@dataclass
class TrainState:
    bare: torch.nn.Module  # the network whose state_dict is saved
    net: torch.nn.Module  # bare with its normalisation, on the device
    model: torch.nn.Module  # net, or net wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    stopper: EarlyStopping
    history: list[dict[str, Any]] = field(default_factory=list)
    hottest: dict[int, Footprint] = field(default_factory=dict)
    epoch: int = 0  # the next epoch to run, from 0
    ema: WeightAverage | None = None  # --ema-epochs or --ema-decay: validation and the saved weights use the average
    ema_net: torch.nn.Module | None = None  # ema.bare with its normalisation, on the device

    @property
    def amp(self) -> bool:
        return self.scaler is not None

    @property
    def kept_bare(self) -> torch.nn.Module:
        """The weights validated and saved: the average where there is one."""
        return self.ema.bare if self.ema is not None else self.bare

    @property
    def kept_net(self) -> torch.nn.Module:
        return self.ema_net if self.ema_net is not None else self.net

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.bare)

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors only: torch.load(..., weights_only=True) reads it back."""
        order = sorted(self.hottest)
        state = {
            "state_dict": self.bare.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stopper": self.stopper.state_dict(),
            "history": self.history,
            "epoch": self.epoch - 1,  # the last finished epoch, as checkpoints have always recorded it
            "hottest": {"index": order, "footprint": [list(self.hottest[i]) for i in order]},
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, last: dict[str, Any]) -> None:
        self.bare.load_state_dict(last["state_dict"])
        self.optimizer.load_state_dict(last["optimizer"])
        self.scheduler.load_state_dict(last["scheduler"])
        self.stopper.load_state_dict(last["stopper"])
        if self.scaler is not None and last.get("scaler"):
            self.scaler.load_state_dict(last["scaler"])
        if self.ema is not None:
            if "ema" not in last:
                raise UsageError("this run's last checkpoint has no weight average, yet its config.json asks for one")
            self.ema.load_state_dict(last["ema"])
        self.hottest = {int(i): tuple(fp) for i, fp in zip(last["hottest"]["index"], last["hottest"]["footprint"])}
        self.history, self.epoch = list(last["history"]), last["epoch"] + 1


def new_state(config: TrainConfig, preprocess: dict[str, Any], ctx: Context, resuming: bool) -> TrainState:
    """The network (pretrained weights only for a new run: a resumed one loads its own), frozen stages, the
    device, DDP, and the optimiser over what trains."""
    torch.manual_seed(config.seed)
    bare = (
        create_model(config.arch, global_pool=config.global_pool)
        if resuming
        else build_model(config.arch, config.weights, global_pool=config.global_pool)
    )
    if config.freeze:
        trainable = freeze(bare, config.arch, config.freeze)
        if ctx.is_main:
            log.info("first %d stages frozen: %d parameters train", config.freeze, trainable)
    net = normalized(bare, preprocess).to(ctx.device)
    if ctx.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # tiles have one shape: the fastest kernels are found once
    model = net
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.3, patience=config.lr_patience
    )
    amp = config.amp and ctx.device.type == "cuda"
    stopper = EarlyStopping(config.patience, config.min_delta)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    state = TrainState(bare, net, model, optimizer, scheduler, scaler, stopper)
    if config.ema_decay or config.ema_epochs:
        state.ema = WeightAverage(bare, config.ema_decay)  # a decay of 0 is set per epoch from its steps
        state.ema_net = normalized(state.ema.bare, preprocess).to(ctx.device)
        if ctx.device.type == "cuda":
            state.ema_net = state.ema_net.to(memory_format=torch.channels_last)
    return state

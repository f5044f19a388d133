"""Self-describing checkpoints in plain types, written atomically, read with weights_only=True.

A checkpoint carries the model's spec (`pothole_edge.spec`: class names, preprocessing, view,
threshold), the state dict, the resolved config, the split manifest's hash and the test metrics.
Each file gets a `.sha256` beside it: torch.load does not notice flipped bits inside its zip, so the
checksum is what tells a damaged checkpoint from a good one. The training state keeps the previous
epoch's file too, so a damaged last.pt falls back to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from pothole_edge import spec as specs
from pothole_edge.errors import UsageError
from pothole_edge.fileio import atomic_write, write_text

log = logging.getLogger("pt-train")
FORMAT = "pothole-edge.checkpoint"
VERSION = 2
LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"  # inside a run directory


def _check_plain(value: Any, where: str = "checkpoint") -> None:
    """weights_only loading accepts tensors and plain containers; catch anything else at save time."""
    import torch

    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not (value is None or type(value) in (str, int, float, bool) or isinstance(value, torch.Tensor)):
        raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold plain types only")


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(obj: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write `path` atomically, then its checksum. With `keep_previous`, the file it replaces (if it
    verifies) is kept as PREVIOUS first, so a crash or a damaged write still leaves one good state."""
    import torch

    _check_plain(obj)
    path = Path(path)
    if keep_previous and path.is_file() and verify(path):
        previous = previous_path(path)
        os.replace(path, previous)
        os.replace(checksum_path(path), checksum_path(previous))
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION} | obj, tmp))
    write_text(checksum_path(path), f"{_digest(path)}  {path.name}\n")
    return path


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".previous" + path.suffix)


def verify(path: Path) -> bool | None:
    """True when the file matches its .sha256, False when it does not, None when it has none."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return None
    try:
        return sidecar.read_text(encoding="utf-8").split()[0] == _digest(path)
    except (OSError, IndexError, UnicodeDecodeError):
        return False


def read(path: str | Path) -> dict[str, Any]:
    """Any checkpoint file of ours (model.pt or a training state), or UsageError."""
    import torch

    path = Path(path)
    if verify(path) is False:
        raise UsageError(
            f"{path} is damaged: it does not match its checksum {checksum_path(path).name}; use a good copy, or retrain"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage bytes make the unpickler raise almost anything (KeyError, IndexError, ...)
        raise UsageError(
            f"{path} is not a readable checkpoint ({type(e).__name__}); it is damaged or not from pt-train"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsageError(f"{path} is not a pothole-edge checkpoint; make one with pt-train")
    if not isinstance(obj.get("version"), int) or obj["version"] > VERSION:
        raise UsageError(
            f"{path} has checkpoint version {obj.get('version')!r}, newer than this pt-train reads ({VERSION}); "
            "upgrade pothole-edge"
        )
    return obj


def read_state(path: Path) -> tuple[dict[str, Any], Path]:
    """The training state to resume from: `path`, or the previous epoch's when `path` is damaged."""
    previous = previous_path(path)
    try:
        return read(path), path
    except UsageError as damaged:
        if not previous.is_file():
            raise UsageError(f"{damaged}; there is no earlier training state to resume from") from None
        log.warning("%s; resuming from %s, one epoch earlier", damaged, previous.name)
        return read(previous), previous


def _upgrade(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the spec's fields at the top level and had no view."""
    if obj["version"] >= 2:
        return obj
    old = {k: obj.get(k) for k in ("class_names", "positive_index", "preprocess")}
    old |= {"schema_version": 1, "threshold": obj.get("threshold", 0.5), "arch": obj.get("arch", "unknown")}
    return obj | {"spec": old}


def load(path: str | Path) -> dict[str, Any]:
    """A finished model (a run directory or its model.pt) with its checked spec under "spec"."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; pass a run directory or its model.pt")
    obj = _upgrade(read(path))
    weights = "state_dict" in obj or "members" in obj  # members: an ensemble of pt-ensemble
    if not weights or "spec" not in obj:
        raise UsageError(
            f"checkpoint {path} lacks {'state_dict' if not weights else 'spec'}; is it a training state? "
            "Use the run's model.pt"
        )
    obj["spec"] = specs.validate(obj["spec"], str(path))
    return obj


def model_from_checkpoint(ckpt: dict[str, Any]) -> Any:
    """The network as deployed (uint8 tiles in, logits out), in eval mode; an ensemble's members as one network."""
    from pothole_edge.train.models import check_arch, create_model, normalized
    from pothole_edge.train.network import MeanLogits

    spec = ckpt["spec"]
    check_arch(spec["arch"])
    nets = []
    for state in ckpt["members"] if "members" in ckpt else [ckpt["state_dict"]]:
        model = create_model(spec["arch"], num_classes=len(spec["class_names"]), global_pool=spec["global_pool"])
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UsageError(
                f"the checkpoint's weights do not fit {spec['arch']} ({str(e).splitlines()[0][:100]}); it is damaged"
            ) from None
        nets.append(normalized(model, spec["preprocess"]))
    return (nets[0] if len(nets) == 1 else MeanLogits(nets)).eval()

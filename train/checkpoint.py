"""Self-describing checkpoints in plain types, written atomically, read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.errors import UsageError
from train.fileio import atomic_write

FORMAT = "pothole-edge.checkpoint"
VERSION = 1
LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"  # inside a run directory
REQUIRED = ("arch", "class_names", "positive_index", "preprocess", "state_dict")


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


def save(obj: dict[str, Any], path: str | Path) -> Path:
    import torch

    _check_plain(obj)
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION} | obj, tmp))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, refusing anything that is not one of ours with a clear message."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; pass a run directory or its model.pt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage bytes make the unpickler raise almost anything (KeyError, IndexError, ...)
        raise UsageError(f"{path} is not a readable checkpoint ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsageError(f"{path} is not a pothole-edge checkpoint; make one with pt-train")
    if obj.get("version", 0) > VERSION:
        raise UsageError(f"{path} has checkpoint version {obj['version']}, newer than this pt-train reads ({VERSION}); upgrade pothole-edge")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise UsageError(f"checkpoint {path} lacks {', '.join(missing)}")
    return obj


def model_from_checkpoint(ckpt: dict[str, Any]) -> "Any":
    from train.models import check_arch, create_model

    check_arch(ckpt["arch"])
    model = create_model(ckpt["arch"], num_classes=len(ckpt["class_names"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()

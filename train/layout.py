"""Where a run's parts live: a cross-validation's top folder and its folds."""

from __future__ import annotations

import json
from pathlib import Path


def run_dir(run: str | Path) -> Path:
    """The run directory of a run given as its directory or its model.pt."""
    path = Path(run)
    return path.parent if path.suffix == ".pt" else path


def fold_dir(out: Path, k: int) -> Path:
    return out / f"fold-{k}"


def is_cross_validation(run: str | Path) -> bool:
    """Whether `run` is the top folder of a cross-validation (its config has --cv and no --cv-fold)."""
    try:
        config = json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("cv")) and not config.get("cv_fold")

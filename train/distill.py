"""Knowledge distillation (`--teacher RUN`): each training tile's target is its label mixed with the probability
that one or more trained models (the teachers, averaged) give the same augmented tile.

Runs of one recipe from other seeds rank a held-out road differently, and their average ranks it better than
either: the student learns that average and still costs one network at the edge. A teacher must never have
trained on the student's test or validation frames, or the student's held-out figures would be borrowed from it;
`check_teachers` proves that from the teachers' split manifests before anything is written. Under `--cv` a
teacher given as a cross-validation's top folder teaches each fold with its own fold's model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pothole_edge.errors import UsageError
from pothole_edge.train import data
from pothole_edge.train.layout import fold_dir, is_cross_validation, run_dir


def fold_teachers(teachers: tuple[str, ...], k: int) -> tuple[str, ...]:
    """Fold k's teachers: a cross-validation given as a teacher teaches each fold with its own fold's run."""
    return tuple(str(fold_dir(Path(t), k)) if is_cross_validation(t) else t for t in teachers)


def check_teachers(teachers: tuple[str, ...], folder: data.LabelledFolder) -> None:
    """Every teacher is a finished run that held out this run's test frames and never trained on its validation
    frames (matched by content hash, so other folder layouts and copies are caught too)."""
    test = {s.sha256 for s in folder.split("test")}
    val = {s.sha256 for s in folder.split("val")}
    for teacher in teachers:
        run = run_dir(teacher)
        if not (run / "model.pt").is_file() or not (run / "split.csv").is_file():
            raise UsageError(
                f"--teacher {teacher} is not a finished run (model.pt and split.csv); give a run directory of "
                "pt-train, or under --cv a cross-validation's top folder"
            )
        splits: dict[str, set[str]] = {}
        for s in data.read_manifest(run / "split.csv", folder.class_names):
            splits.setdefault(s.sha256, set()).add(s.split)
        seen_test = sum(1 for h in test if splits.get(h, set()) - {"test"})
        seen_val = sum(1 for h in val if "train" in splits.get(h, set()))
        if seen_test or seen_val:
            raise UsageError(
                f"--teacher {teacher} trained or validated on {seen_test} of this run's test frames and trained on "
                f"{seen_val} of its validation frames; use a teacher that held out the same groups (the same --cv, "
                "--group-column and --split-seed)"
            )


def soft_targets(
    teachers: tuple[str, ...], weight: float, crop: int, class_names: tuple[str, str], device: Any
) -> Callable[[Any, Any], Any]:
    """A function from a batch (uint8 NHWC tiles, labels) to the class-probability targets of cross-entropy:
    (1 - weight) of the one-hot label plus weight of the teachers' mean logit's softmax."""
    import torch

    from pothole_edge.train.checkpoint import load, model_from_checkpoint

    nets, crops = [], []
    for teacher in teachers:
        ckpt = load(teacher)
        if tuple(ckpt["spec"]["class_names"]) != tuple(class_names):
            raise UsageError(
                f"--teacher {teacher} has classes {ckpt['spec']['class_names']}, this run {list(class_names)}; "
                "use a teacher of the same classes"
            )
        net = model_from_checkpoint(ckpt).to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(net)
        crops.append(int(ckpt["spec"]["preprocess"]["crop"]))

    @torch.no_grad()
    def targets(tiles: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = []
        for net, side in zip(nets, crops):
            x = tiles
            if side != crop:  # a teacher of another input size sees the same tile at its own size
                x = torch.nn.functional.interpolate(
                    tiles.permute(0, 3, 1, 2).float(), size=(side, side), mode="bilinear", antialias=True
                ).permute(0, 2, 3, 1)
            logits.append(net(x).float())
        taught = torch.stack(logits).mean(0).softmax(1)
        onehot = torch.nn.functional.one_hot(labels, taught.shape[1]).float()
        return (1 - weight) * onehot + weight * taught

    return targets

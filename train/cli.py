"""pt-train and pt-eval: thin click layers over train.run.train and train.evaluate.evaluate."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import click

from train.config import EvalConfig, TrainConfig
from train.errors import UsageError


def _run(fn: Callable[[], Any], interrupted: str = "interrupted") -> None:
    """User mistakes become one line on stderr and exit code 2; Ctrl-C exits 130."""
    # libraries stay at WARNING: onnxruntime's quantiser alone logs hundreds of INFO lines
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for ours in ("pt-train", "pt-eval", "pt-export", "train", "export"):
        logging.getLogger(ours).setLevel(logging.INFO)
    try:
        fn()
    except UsageError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo(interrupted, err=True)
        sys.exit(130)


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data", help="Folder with normal/ and pothole/ (or train/val/test/ inside), or 'demo' for the synthetic set.")
@click.option("--out", help="Run directory.  [default: runs/train]")
@click.option("--arch", help="resnet50 or efficientnet_lite0.  [default: resnet50; efficientnet_lite0 for --data demo]")
@click.option("--weights", help="imagenet, none, or a path to a state dict or checkpoint.  [default: imagenet]")
@click.option("--positive", help="Name of the positive class folder.  [default: pothole or potholes]")
@click.option("--img-size", type=int, help="Input crop size.  [default: the arch's own, 224]")
@click.option("--epochs", type=int, help="Most epochs.  [default: 30]")
@click.option("--batch-size", type=int, help="[default: 32]")
@click.option("--lr", type=float, help="Adam learning rate.  [default: 3e-4 with pretrained weights, 1e-3 without]")
@click.option("--weight-decay", type=float, help="[default: 1e-5]")
@click.option("--patience", type=int, help="Early stopping: epochs without val-loss gain.  [default: 5]")
@click.option("--min-delta", type=float, help="Early stopping: smallest val-loss drop that counts.  [default: 1e-4]")
@click.option("--lr-patience", type=int, help="Epochs without gain before the learning rate drops 0.3x.  [default: 2]")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), help="[default: none]")
@click.option("--val-fraction", type=float, help="[default: 0.15]")
@click.option("--test-fraction", type=float, help="[default: 0.15]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--workers", type=int, help="Data-loading processes.  [default: 0 on 2 cores or fewer, else half the cores, at most 4]")
@click.option("--device", help="auto, cpu, cuda or cuda:N.  [default: auto]")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA.  [default: on]")
@click.option("--demo-per-class", type=int, help="Images per class for --data demo.  [default: 100]")
@click.option("--resume", metavar="RUN_DIR", help="Continue an interrupted run with its own config.")
def train_main(resume: str | None, **options: Any) -> None:
    """Train and evaluate a pothole classifier on a folder of labelled road photos."""

    def go() -> None:
        from train.run import train

        if resume:
            ignored = sorted(k for k, v in options.items() if v is not None)
            if ignored:
                logging.warning("--resume uses the run's saved config; ignoring --%s", ", --".join(k.replace("_", "-") for k in ignored))
            train(None, resume=resume)  # type: ignore[arg-type]
            return
        if options["data"] is None:
            raise UsageError("missing --data DIR (a folder with normal/ and pothole/), or --data demo, or --resume RUN_DIR")
        train(TrainConfig(**_given(**options)))

    _run(go, "interrupted; finished epochs are kept: continue with pt-train --resume RUN_DIR")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("model")
@click.option("--data", required=True, help="Labelled folder: class sub-folders (one class alone is fine).")
@click.option("--out", help="Report directory.  [default: runs/eval]")
@click.option("--threshold", type=float, help="Decision threshold.  [default: the model's]")
@click.option("--batch-size", type=int, help="[default: 32]")
@click.option("--workers", type=int, help="[default: 0 on 2 cores or fewer, else half the cores, at most 4]")
@click.option("--device", help="auto, cpu, cuda or cuda:N.  [default: auto]")
def eval_main(model: str, **options: Any) -> None:
    """Evaluate MODEL (a run directory or model.pt) on every image of a labelled folder."""

    def go() -> None:
        from train.evaluate import evaluate

        evaluate(EvalConfig(model=model, **_given(**options)))

    _run(go)

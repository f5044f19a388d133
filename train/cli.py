"""pt-train, pt-eval and pt-ensemble: thin click layers over train.run.train, train.evaluate.evaluate and
train.ensemble.ensemble."""

from __future__ import annotations

import logging
from typing import Any

import click

from pothole_edge.cli import default, given, main_click, run
from pothole_edge.spec import GLOBAL_POOLS, POOLS
from pothole_edge.train.config import (
    ARCH_CHOICES,
    AUGMENTS,
    CLASS_WEIGHTS,
    DEFAULT_GRIDS,
    DEFAULT_TEST_GRIDS,
    LABELS,
    THRESHOLD_RULES,
    EnsembleConfig,
    EvalConfig,
    TrainConfig,
)

T, E = TrainConfig, EvalConfig
SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 120}


def _d(config: type, name: str) -> str:
    return f"  [default: {default(config, name)}]"


@click.command("pt-train", context_settings=SETTINGS)
@click.option(
    "--data",
    multiple=True,
    help=(
        "Folder with normal/ and pothole/ (or train/val/test/ inside), or 'demo' for the synthetic set. Give it "
        "more than once to train on several."
    ),
)
@click.option("--out", help="Run directory.  [default: runs/train, or the next free runs/trainN]")
@click.option("--arch", type=click.Choice(ARCH_CHOICES), help="[default: resnet50; efficientnet_lite0 for --data demo]")
@click.option("--weights", help="imagenet, none, or a path to a state dict or checkpoint.  [default: imagenet]")
@click.option("--positive", help="Name of the positive class folder.  [default: pothole or potholes]")
@click.option("--img-size", type=int, help="Model input side, in pixels.  [default: the weights' own, 224]")
@click.option(
    "--grids",
    help=f"The tile levels training draws from, cols x rows, 1x1 being the whole frame.  [default: {DEFAULT_GRIDS}]",
)
@click.option(
    "--test-grids",
    help="The tile levels the model is judged and deployed with (its threshold is chosen there), as timm's test "
    f"input size; a finer level than training's ranks small potholes better.  [default: {DEFAULT_TEST_GRIDS} with "
    "the default --grids, else --grids]",
)
@click.option("--overlap", type=float, help="Least overlap between neighbouring tiles." + _d(T, "overlap"))
@click.option("--region", help="The part of the frame the model looks at: x0,y0,x1,y1 fractions." + _d(T, "region"))
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    help="A frame's probability from its tiles': max, or top2, the mean of the two hottest." + _d(T, "pool"),
)
@click.option(
    "--labels",
    type=click.Choice(LABELS),
    help="Tile labels from boxes.csv where a root has one (else MIL), or MIL everywhere." + _d(T, "labels"),
)
@click.option(
    "--freeze",
    type=int,
    help="Leading stages of the pretrained network kept as they are (stem, then each block).  "
    "[default: 3 for efficientnet_lite* from pretrained weights, else 0]",
)
@click.option(
    "--global-pool",
    type=click.Choice(GLOBAL_POOLS),
    help="How the network pools its last feature map, as timm's --gp: avg (the pretrained networks' own), max (one "
    "cell decides: a small pothole is not averaged away), or avgmax, their mean." + _d(T, "global_pool"),
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTS),
    help="Tile augmentation: basic (mirror, light, colour), or road (also pavement colour, gamma, blur, noise, JPEG "
    "and shadows, as other roads and cameras bring)." + _d(T, "augment"),
)
@click.option(
    "--paste",
    type=float,
    help="Share of pothole-free frames that also train on a tile with a pothole from a boxed frame pasted in "
    "(copy-paste: the same potholes on other pavement); needs boxes.csv, 0 turns it off." + _d(T, "paste"),
)
@click.option("--group-column", help="frames.csv column whose frames share a split." + _d(T, "group_column"))
@click.option(
    "--group-balance/--no-group-balance",
    default=None,
    help="Draw each group (--group-column, e.g. road) equally often in an epoch: a short road's frames repeat, a "
    "long road's are subsampled, so one long road does not teach its pavement as the norm; frames without a "
    "group come once each.  [default: off]",
)
@click.option("--epochs", type=int, help="Most epochs." + _d(T, "epochs"))
@click.option(
    "--time-limit",
    type=float,
    help="Minutes of training at most: no epoch starts that would end past it (the mean epoch so far says), "
    "and the best epoch is kept; 0: no limit." + _d(T, "time_limit"),
)
@click.option("--batch-size", type=int, help="Tiles per step." + _d(T, "batch_size"))
@click.option("--lr", type=float, help="Adam learning rate.  [default: 3e-4 with pretrained weights, 1e-3 without]")
@click.option("--weight-decay", type=float, help="Adam's L2 penalty on the weights." + _d(T, "weight_decay"))
@click.option("--patience", type=int, help="Early stopping: epochs without val-loss gain." + _d(T, "patience"))
@click.option(
    "--min-delta", type=float, help="Early stopping: smallest val-loss drop that counts." + _d(T, "min_delta")
)
@click.option(
    "--lr-patience", type=int, help="Epochs without gain before the learning rate drops 0.3x." + _d(T, "lr_patience")
)
@click.option(
    "--label-smoothing",
    type=float,
    help="Share of each tile label spread over both classes, for labels that are sometimes wrong."
    + _d(T, "label_smoothing"),
)
@click.option(
    "--ema-epochs",
    type=float,
    help="Validate and keep an exponential moving average of the weights over about this many epochs, like timm's "
    "--model-ema; its decay per step follows from the epoch's steps. 0 keeps the live weights." + _d(T, "ema_epochs"),
)
@click.option(
    "--ema-decay",
    type=float,
    help="A fixed decay per step for the weight average instead (0.98: about the last 50 steps); 0: from "
    "--ema-epochs." + _d(T, "ema_decay"),
)
@click.option(
    "--teacher",
    multiple=True,
    metavar="RUN",
    help="Distil from this trained run (give it more than once for several, averaged): each tile's target mixes "
    "its label with the teachers' probability. It must hold out this run's test frames; under --cv, a "
    "cross-validation's folder teaches each fold with its own fold.",
)
@click.option(
    "--distill", type=float, help="The teachers' share of each tile's target, with --teacher." + _d(T, "distill")
)
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), help=_d(T, "class_weight").strip())
@click.option(
    "--threshold-rule",
    type=click.Choice(THRESHOLD_RULES),
    help="How the threshold is chosen on validation." + _d(T, "threshold_rule"),
)
@click.option(
    "--max-fpr",
    type=float,
    help="False-positive rate allowed on validation negatives (max-fpr rule)." + _d(T, "max_fpr"),
)
@click.option(
    "--hard-negatives",
    type=int,
    help="Frames of each kind re-scored each epoch for their hottest tile: hard negatives and MIL positives."
    + _d(T, "hard_negatives"),
)
@click.option(
    "--val-fraction",
    type=float,
    help="Share of each root (of the rest, with --cv) that validates." + _d(T, "val_fraction"),
)
@click.option(
    "--test-fraction", type=float, help="Share of each root held out to test (not with --cv)." + _d(T, "test_fraction")
)
@click.option(
    "--seed",
    type=int,
    help="Seed of the tile draws and the weights' start, and of the split and the folds unless --split-seed is "
    "given." + _d(T, "seed"),
)
@click.option(
    "--split-seed",
    type=int,
    help="Seed of the split, the folds (and the demo's images) alone, so that runs with other --seed values hold "
    "out the same groups (the spread between seeds).  [default: --seed]",
)
@click.option(
    "--cv",
    type=int,
    help="Cross-validate: deal whole groups (--group-column, e.g. road) into this many folds and train one run "
    "holding out each; writes cv.json and cv.png.  [default: 0, one split]",
)
@click.option("--cv-fold", type=int, help="With --cv: train only this fold (1 to --cv).  [default: every fold]")
@click.option(
    "--workers",
    type=int,
    help="Data-loading processes.  [default: 0 on 2 cores or fewer, else half the cores, at most 4]",
)
@click.option("--device", help="auto, cpu, cuda or cuda:N." + _d(T, "device"))
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA.  [default: on]")
@click.option("--demo-per-class", type=int, help="Images per class for --data demo." + _d(T, "demo_per_class"))
@click.option("--resume", metavar="RUN_DIR", help="Continue an interrupted run with its own config.")
def train_command(resume: str | None, data: tuple[str, ...], **options: Any) -> None:
    """Train and evaluate a pothole classifier on folders of labelled road photos and dashcam frames."""

    def go() -> None:
        from pothole_edge.train.cv import cross_validate
        from pothole_edge.train.layout import is_cross_validation
        from pothole_edge.train.run import train

        if resume:
            ignored = sorted(given(**options)) + (["data"] if data else [])
            if ignored:
                logging.warning(
                    "--resume uses the run's saved config; ignoring --%s",
                    ", --".join(k.replace("_", "-") for k in ignored),
                )
            (cross_validate if is_cross_validation(resume) else train)(None, resume=resume)
            return
        config = TrainConfig(data=data, **given(**options))
        (cross_validate if config.cv and not config.cv_fold else train)(config)

    run(go, "interrupted")


@click.command("pt-eval", context_settings=SETTINGS)
@click.argument("model")
@click.option("--data", required=True, help="Labelled folder: class sub-folders (one class alone is fine).")
@click.option("--out", help="Report directory.  [default: runs/eval, or the next free runs/evalN]")
@click.option("--threshold", type=float, help="Decision threshold.  [default: the model's]")
@click.option("--region", help="Override the view's region: x0,y0,x1,y1 fractions.  [default: the model's]")
@click.option("--batch-size", type=int, help="Tiles per batch, about." + _d(E, "batch_size"))
@click.option("--workers", type=int, help="[default: 0 on 2 cores or fewer, else half the cores, at most 4]")
@click.option(
    "--device",
    help="auto, cpu, cuda or cuda:N (for a .pt; a .onnx runs on ONNX Runtime's CPU provider)." + _d(E, "device"),
)
def eval_command(model: str, **options: Any) -> None:
    """Evaluate MODEL on every image of a labelled folder. MODEL is a run directory, its model.pt, or a
    model.onnx (or INT8/FP16 variant) written by pt-export."""

    def go() -> None:
        from pothole_edge.train.evaluate import evaluate

        evaluate(EvalConfig(model=model, **given(**options)))

    run(go)


@click.command("pt-ensemble", context_settings=SETTINGS)
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", required=True, help="Directory for the ensemble: a run directory, or a cross-validation's.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N, for scoring the splits.")
@click.option("--grids", help="Judge the model under these tile levels, e.g. 1x1+4x3+5x3.  [default: the runs']")
@click.option("--pool", type=click.Choice(POOLS), help="Judge it with this pooling of tiles.  [default: the runs']")
def ensemble_command(runs: tuple[str, ...], out: str, device: str, grids: str | None, pool: str | None) -> None:
    """One model from two or more finished RUNS of the same split (other --seed, same --split-seed): the mean of
    their logits, its threshold chosen again on their validation split, its test report beside it. Given
    cross-validations of the same folds, each fold's runs are joined and cv.json compares the ensemble. With
    --grids or --pool, one RUN is enough: it is judged again under that view (threshold chosen again)."""

    def go() -> None:
        from pothole_edge.train.ensemble import ensemble

        ensemble(EnsembleConfig(runs=runs, out=out, device=device, grids=grids, pool=pool))

    run(go)


def train_main(argv: list[str] | None = None) -> None:
    main_click(train_command, argv)


def eval_main(argv: list[str] | None = None) -> None:
    main_click(eval_command, argv)


def ensemble_main(argv: list[str] | None = None) -> None:
    main_click(ensemble_command, argv)

"""pt-export: a thin click layer over export.run.export."""

from __future__ import annotations

import sys
from typing import Any

import click

from pothole_edge.cli import default, given, main_click, run
from pothole_edge.export.calibrate import CalibrateConfig
from pothole_edge.export.config import ExportConfig

X, K = ExportConfig, CalibrateConfig


def _d(name: str, config: type = X) -> str:
    return f"  [default: {default(config, name)}]"


@click.command("pt-export", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.argument("checkpoint")
@click.option("--opset", type=int, help="ONNX opset, 13 to the exporter's newest." + _d("opset"))
@click.option("--out", help="Output directory.  [default: beside the checkpoint]")
@click.option("--data", help="Labelled folder to prove parity on.  [default: the run's test split]")
@click.option(
    "--int8", is_flag=True, default=None, help="Also write model.int8.onnx (static QDQ, per-channel) for the CPU."
)
@click.option(
    "--int8-trt",
    is_flag=True,
    default=None,
    help="Also write model.int8-trt.onnx: signed symmetric INT8, what TensorRT runs.",
)
@click.option("--fp16", is_flag=True, default=None, help="Also write model.fp16.onnx for GPU providers.")
@click.option("--simplify/--no-simplify", default=None, help="Run onnxslim where outputs stay the same.  [default: on]")
@click.option("--prob-tol", type=float, help="FP32 gate: max |tile probability difference|." + _d("prob_tol"))
@click.option("--metric-tol", type=float, help="FP32 gate: max |metric difference|." + _d("metric_tol"))
@click.option(
    "--min-label-agreement", type=float, help="FP32 gate: fraction of equal frame labels." + _d("min_label_agreement")
)
@click.option(
    "--fp16-prob-tol", type=float, help="FP16 gate: max |frame probability difference|." + _d("fp16_prob_tol")
)
@click.option("--batch-size", type=int, help="Tiles per batch in the parity passes." + _d("batch_size"))
@click.option("--int8-max-accuracy-drop", type=float, help="INT8 and FP16 gate." + _d("int8_max_accuracy_drop"))
@click.option("--int8-max-auc-drop", type=float, help="INT8 and FP16 gate." + _d("int8_max_auc_drop"))
@click.option(
    "--int8-reduce-range/--no-int8-reduce-range",
    default=None,
    help="7-bit INT8 weights.  [default: from this CPU: on for x86 without VNNI, else off]",
)
@click.option(
    "--calibration-images",
    type=int,
    help="Training frames for INT8 calibration (two tiles each)." + _d("calibration_images"),
)
@click.option("--speed-runs", type=int, help="Timed runs for the INT8 speed-up." + _d("speed_runs"))
def export_command(checkpoint: str, **options: Any) -> None:
    """Convert CHECKPOINT (a run directory or model.pt) to ONNX and prove ONNX Runtime reproduces it."""

    def go() -> None:
        from pothole_edge.export.run import GateFailed, export

        try:
            export(ExportConfig(checkpoint=checkpoint, **given(**options)))
        except GateFailed as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    run(go)


def export_main(argv: list[str] | None = None) -> None:
    main_click(export_command, argv)


@click.command("pt-calibrate", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.argument("model")
@click.option("--data", required=True, help="Folder of unlabelled frames from your own camera and roads.")
@click.option("--out", help="The calibrated model (.onnx).  [default: MODEL with .calibrated.onnx]")
@click.option(
    "--max-fpr", type=float, help="Share of pothole-free frames allowed to raise an alarm." + _d("max_fpr", K)
)
@click.option(
    "--pothole-share",
    type=float,
    help="Share of the frames you expect to show a pothole; they may score above the threshold too. Where the "
    "model misses most of them, the room goes to false alarms: the budget alone is the safer rule."
    + _d("pothole_share", K),
)
@click.option("--threads", type=int, help="Inference threads.  [default: every usable core]")
def calibrate_command(model: str, **options: Any) -> None:
    """Set MODEL's threshold (an ONNX model from pt-export) from the scores of unlabelled frames of your own
    camera and roads, where potholes are rare, and write a copy that edge-run uses as it is."""

    def go() -> None:
        from pothole_edge.export.calibrate import calibrate

        calibrate(CalibrateConfig(model=model, **given(**options)))

    run(go)


def calibrate_main(argv: list[str] | None = None) -> None:
    main_click(calibrate_command, argv)

"""pt-export: a thin click layer over export.run.export."""

from __future__ import annotations

import sys
from typing import Any

import click

from export.config import ExportConfig
from train.cli import _given, _run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint")
@click.option("--opset", type=int, help="ONNX opset, 13 to the exporter's newest.  [default: 17]")
@click.option("--out", help="Output directory.  [default: beside the checkpoint]")
@click.option("--data", help="Labelled folder to prove parity on.  [default: the run's test split]")
@click.option("--int8", is_flag=True, default=None, help="Also write model.int8.onnx (static QDQ, per-channel).")
@click.option("--fp16", is_flag=True, default=None, help="Also write model.fp16.onnx for GPU providers.")
@click.option("--simplify/--no-simplify", default=None, help="Run onnxslim where outputs stay the same.  [default: on]")
@click.option("--prob-tol", type=float, help="FP32 gate: max |probability difference|.  [default: 1e-4]")
@click.option("--metric-tol", type=float, help="FP32 gate: max |metric difference|.  [default: 1e-4]")
@click.option("--min-label-agreement", type=float, help="FP32 gate: fraction of equal labels.  [default: 1.0]")
@click.option("--int8-max-accuracy-drop", type=float, help="INT8 gate.  [default: 0.01]")
@click.option("--int8-max-auc-drop", type=float, help="INT8 gate.  [default: 0.01]")
@click.option("--int8-reduce-range/--no-int8-reduce-range", default=None, help="7-bit INT8 weights, for x86 CPUs without VNNI.  [default: on]")
@click.option("--calibration-images", type=int, help="Training images for INT8 calibration.  [default: 128]")
@click.option("--speed-runs", type=int, help="Timed batch-1 runs for the INT8 speed-up.  [default: 50]")
def export_main(checkpoint: str, **options: Any) -> None:
    """Convert CHECKPOINT (a run directory or model.pt) to ONNX and prove ONNX Runtime reproduces it."""

    def go() -> None:
        from export.run import GateFailed, export

        try:
            export(ExportConfig(checkpoint=checkpoint, **_given(**options)))
        except GateFailed as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    _run(go)

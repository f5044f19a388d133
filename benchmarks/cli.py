"""pt-bench: a thin click layer over benchmarks.run.bench."""

from __future__ import annotations

import logging
from typing import Any

import click

from pothole_edge.benchmarks.config import BenchConfig
from pothole_edge.cli import given, main_click, run


def _sizes(_ctx: Any, _param: Any, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,2,4,8") from None


@click.command("pt-bench", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.argument("models", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--out", help="Report directory.  [default: runs/bench/<date-time>]")
@click.option(
    "--quick", is_flag=True, default=None, help="Fewer runs, a 1.5 s budget per batch, CPU accuracy from parity.json."
)
@click.option("--threads", type=int, help="Threads for every backend.  [default: every core]")
@click.option("--runs", type=int, help="Timed batch-1 runs.  [default: 100; 20 with --quick]")
@click.option("--warmup", type=int, help="Untimed runs first.  [default: 10; 3 with --quick]")
@click.option("--batch-sizes", callback=_sizes, help="Throughput sweep.  [default: 1,2,4,8,16,32]")
@click.option("--throughput-reps", type=int, help="Timed runs per batch size.  [default: 5; 2 with --quick]")
@click.option(
    "--batch-budget-s",
    type=float,
    help="A batch size whose one run takes longer ends the sweep.  [default: 10; 1.5 with --quick]",
)
@click.option("--sgemm-size", type=int, help="Square SGEMM for the compute-bound reference.  [default: 1024]")
@click.option("--edge-frames", type=int, help="Frames for the edge pipeline.  [default: 240; 60 with --quick]")
@click.option("--video", help="Video for the edge pipeline.  [default: a synthetic clip]")
@click.option("--clip-size", help="The synthetic clip's frame size.  [default: 1280x720]")
@click.option("--edge/--no-edge", default=None, help="Measure the edge pipeline.  [default: on]")
def bench_command(models: tuple[str, ...], **options: Any) -> None:
    """Latency, throughput and accuracy of every backend this machine has, for each RUN_DIR's models."""

    def go() -> None:
        from pothole_edge.benchmarks.run import bench

        logging.getLogger("pt-bench").setLevel(logging.INFO)
        logging.getLogger("edge").setLevel(logging.WARNING)  # edge-run's own per-event lines would bury the bar
        report = bench(BenchConfig(models=models, **given(**options)))
        click.echo(f"wrote report.md, report.json, latency.png and throughput.png in {report['out']}")
        for model in report["models"]:
            v = model["ratios"]["values"]
            click.echo(
                f"{model['name']}: ORT FP32 {_x(v['ort_fp32_speedup_over_pytorch'])} faster than PyTorch; "
                f"INT8 {_x(v['int8_speedup_over_ort_fp32'])} faster than ORT FP32; "
                f"ORT FP32 at {_x(v['ort_fp32_latency_over_compute_limit'])} the compute-bound limit"
            )

    run(go)


def bench_main(argv: list[str] | None = None) -> None:
    main_click(bench_command, argv)


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"

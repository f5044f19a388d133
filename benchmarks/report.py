"""report.json (stable schema), report.md (the tables), latency.png and throughput.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pothole_edge.fileio import atomic_write, write_json, write_text


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    """The report a person reads: the machine, then per model its backends, throughput and edge pipeline."""
    lines = _header(report)
    for model in report["models"]:
        lines += _model_lines(model)
    return "\n".join(lines) + "\n"


def _header(report: dict[str, Any]) -> list[str]:
    env, gemm, cfg = report["environment"], report["sgemm"], report["config"]
    lines = [
        "# pt-bench report",
        "",
        (
            f"{report['created_at']}, {'--quick, ' if cfg['quick'] else ''}{cfg['runs']} timed batch-1 runs after "
            f"{cfg['warmup']} warm-up runs; "
            f"throughput: {cfg['throughput_reps']} timed runs per batch size. Total {report['wall_s']:.0f} s."
        ),
    ]
    if env.get("busy"):
        lines += ["", f"**Warning: {env['busy']}.** Other work shared the CPU; compare these figures with care."]
    return lines + [
        "",
        "## Environment",
        "",
        f"- CPU: {env['cpu']} ({env['cores_usable']} of {env['cores']} cores usable; {env['threads_used']} threads "
        f"used; flags: {', '.join(env['cpu_flags']) or 'none of note'})",
        f"- GPU: {env['gpu'] or 'none'}" + (f" (CUDA {env['cuda']})" if env["cuda"] else ""),
        f"- Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}; Python {env['python']}",
        f"- onnxruntime providers: {', '.join(env['onnxruntime_providers'])}",
        f"- SGEMM ({gemm['size']}×{gemm['size']}, {gemm['threads']} threads, p50 of {gemm['timing']['runs']}): "
        f"**{gemm['gflops']:.1f} GFLOP/s**",
    ]


def _model_lines(model: dict[str, Any]) -> list[str]:
    grids = "+".join(f"{c}x{r}" for c, r in model["view"]["grids"])
    lines = [
        "",
        f"## {model['name']} ({model['arch']}, {model['input']}, {model['flops'] / 1e9:.2f} GFLOP per tile)",
        "",
        f"Compute-bound limit at batch 1: {model['compute_limit_ms']:.2f} ms (the model's FLOPs at the SGEMM rate). "
        f"A frame is {model['tiles_per_frame']} tiles (view grids {grids}, region {model['view']['region']}), run "
        "as one batch.",
        "",
        "| backend | precision | device | create | first inference | tile p50 | p90 | p99 | mean | frame p50 | "
        "best throughput | latency / compute limit | accuracy | ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = [b for b in model["backends"] if b["status"] == "ok"]
    lines += [_backend_row(b) for b in ok]
    skipped = [f"- {b['label']}: skipped, {b['reason']}" for b in model["backends"] if b["status"] != "ok"]
    lines += skipped and ["", *skipped]
    lines += _throughput_lines(ok)
    if model["edge"]:
        lines += [
            "",
            "Edge pipeline (edge-run on a video, its default threads):",
            "",
            "| model | frames | tiles per frame | threads | end-to-end fps | model-only fps | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {Path(e['model_file']).name} | {e['frames']} | {e['tiles_per_frame']} | {e['threads']} | "
            f"{_f(e['fps'], 1)} | {_f(e['model_only_fps'], 1)} | {_pct(e['ratio'])} |"
            for e in model["edge"]
        ]
    v = model["ratios"]["values"]
    return lines + [
        "",
        f"- ONNX Runtime FP32 against PyTorch eager, batch-1 p50: **{_f(v['ort_fp32_speedup_over_pytorch'])}×** faster",
        f"- INT8 against ONNX Runtime FP32: **{_f(v['int8_speedup_over_ort_fp32'])}×** faster",
        f"- ONNX Runtime FP32 latency over the compute limit: **{_f(v['ort_fp32_latency_over_compute_limit'])}×**",
    ]


def _backend_row(b: dict[str, Any]) -> str:
    lat, acc = b["latency"], b["accuracy"] or {}
    best = max(b["throughput"], key=lambda t: t["images_per_s"]) if b["throughput"] else None
    return (
        f"| {b['backend']} | {b['precision']} | {b['device']} | {_f(b['create_s'], 2, ' s')} | "
        f"{_f(b['first_inference_ms'], 1, ' ms')} "
        f"| {_f(lat['p50_ms'])} ms | {_f(lat['p90_ms'])} ms | {_f(lat['p99_ms'])} ms | {_f(lat['mean_ms'])} "
        f"ms | {_f(b['frame_latency']['p50_ms'])} ms "
        f"| {_f(best['images_per_s'], 1) + ' tiles/s at batch ' + str(best['batch']) if best else '–'} "
        f"| {_f(b.get('latency_over_compute_limit'), 2, '×')} | {_f(acc.get('accuracy'), 4)} | "
        f"{_f(acc.get('roc_auc'), 4)} |"
    )


def _throughput_lines(ok: list[dict[str, Any]]) -> list[str]:
    sizes = sorted({t["batch"] for b in ok for t in b["throughput"]})
    lines = [
        "",
        "Throughput (tiles/s; a tile is one model input) by batch size:",
        "",
        "| backend | " + " | ".join(map(str, sizes)) + " | stopped |",
        "|---|" + "---|" * (len(sizes) + 1),
    ]
    for b in ok:
        by = {t["batch"]: t["images_per_s"] for t in b["throughput"]}
        cells = " | ".join(_f(by.get(s), 1) for s in sizes)
        lines.append(f"| {b['label']} | {cells} | {b['throughput_stopped'] or ''} |")
    return lines


def _plots(report: dict[str, Any], out: Path) -> None:
    from pothole_edge.train.plots import pyplot

    plt = pyplot()
    models = report["models"]
    fig, axes = plt.subplots(len(models), 1, figsize=(8, 1.2 + 0.55 * 6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        ok = [b for b in model["backends"] if b["status"] == "ok"]
        labels = [b["label"] for b in ok]
        p50 = [b["latency"]["p50_ms"] for b in ok]
        low = [0.0] * len(ok)
        high = [b["latency"]["p99_ms"] - b["latency"]["p50_ms"] for b in ok]
        ax.barh(labels, p50, xerr=[low, high], color="#4c72b0", capsize=3)
        if p50 and max(p50) > 10 * max(min(p50), 1e-9):
            ax.set_xscale("log")  # a GPU and a CPU on one axis differ by far more than 10x
        ax.axvline(
            model["compute_limit_ms"],
            color="#c44e52",
            linestyle="--",
            label=f"compute-bound limit {model['compute_limit_ms']:.1f} ms",
        )
        for y, b in enumerate(ok):
            ax.text(b["latency"]["p99_ms"], y, f"  {b['latency']['p50_ms']:.1f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("batch-1 latency, ms (bar p50, whisker p99)")
        ax.set_title(f"{model['name']} ({model['arch']})")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(out / "latency.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for b in model["backends"]:
            if b["status"] == "ok" and b["throughput"]:
                ax.plot(
                    [t["batch"] for t in b["throughput"]],
                    [t["images_per_s"] for t in b["throughput"]],
                    marker="o",
                    label=b["label"],
                )
        ax.set_xscale("log", base=2)
        sizes = sorted({t["batch"] for b in model["backends"] if b["status"] == "ok" for t in b["throughput"]})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("tiles / s")
        rates = [t["images_per_s"] for b in model["backends"] if b["status"] == "ok" for t in b["throughput"]]
        if rates and max(rates) > 10 * max(min(rates), 1e-9):
            ax.set_yscale("log")  # a GPU and a CPU on one axis differ by far more than 10x
        ax.set_title(f"{model['name']} ({model['arch']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "throughput.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown(report))
    _plots(report, out)

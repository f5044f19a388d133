"""pt-bench: the report's schema, and every number in it traced back to the samples it came from.

Speed itself is never asserted here: the benchmarks measure it, the tests check the measuring.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from pothole_edge.benchmarks.compute import model_flops
from pothole_edge.benchmarks.config import BenchConfig
from pothole_edge.benchmarks.run import TARGETS, bench
from pothole_edge.export.config import ExportConfig
from pothole_edge.export.run import export
from pothole_edge.timing import throughput
from tests.test_cli import assert_usage_error, run

CPU_BACKENDS = ("pytorch fp32 cpu", "onnxruntime fp32 cpu", "onnxruntime int8 cpu")
LABELS = (
    "pytorch fp32 cpu",
    "pytorch fp16 cuda",
    "onnxruntime fp32 cpu",
    "onnxruntime int8 cpu",
    "onnxruntime fp16 cuda",
    "tensorrt fp16 cuda",
    "tensorrt int8 cuda",
)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bench") / "run"
    shutil.copytree(trained_run, run_dir)
    export(
        ExportConfig(
            str(run_dir),
            int8=True,
            int8_max_accuracy_drop=1.0,
            int8_max_auc_drop=1.0,
            speed_runs=3,
            calibration_images=8,
        )
    )
    return run_dir


@pytest.fixture(scope="module")
def report(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    config = BenchConfig(
        models=(str(exported),),
        out=str(out),
        quick=True,
        runs=6,
        warmup=1,
        batch_sizes=(1, 2, 4),
        throughput_reps=2,
        sgemm_size=128,
        edge_frames=12,
        clip_size="320x180",
    )
    return bench(config), out


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return a == pytest.approx(b, rel=rel, abs=1e-6)


def check_stats(timing: dict, runs: int) -> None:
    samples = np.asarray(timing["samples_ms"])
    assert timing["runs"] == len(samples) == runs and (samples > 0).all()
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        assert close(timing[key], float(np.percentile(samples, q)))
    assert close(timing["mean_ms"], float(samples.mean()))


def test_report_files_and_schema(report):
    result, out = report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk) == {
        "schema_version",
        "created_at",
        "out",
        "command",
        "config",
        "environment",
        "sgemm",
        "models",
        "wall_s",
    }
    assert on_disk["schema_version"] == 2 and on_disk["config"]["runs"] == 6
    env = on_disk["environment"]
    assert {"cpu", "cores", "threads_used", "gpu", "versions", "onnxruntime_providers"} <= set(env)
    assert {"torch", "onnxruntime", "onnx", "numpy"} <= set(env["versions"])
    assert json.loads((out / "config.json").read_text())["batch_sizes"] == [1, 2, 4]
    for name in ("latency.png", "throughput.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (model,) = on_disk["models"]
    assert {b["label"] for b in model["backends"]} == set(LABELS)
    for b in model["backends"]:
        if b["status"] == "skipped":
            assert b["label"] not in CPU_BACKENDS and b["reason"]  # a machine without a GPU says why
    assert all(b["status"] == "ok" for b in model["backends"] if b["label"] in CPU_BACKENDS)
    assert model["tiles_per_frame"] == 5 and model["view"]["grids"] == [[1, 1], [2, 2]]


def test_every_number_comes_from_the_samples(report, exported):
    result, out = report
    gemm = result["sgemm"]
    check_stats(gemm["timing"], 10)
    assert close(gemm["gflops"], gemm["flops_per_run"] / (gemm["timing"]["p50_ms"] / 1000) / 1e9)
    (model,) = result["models"]
    assert model["flops"] > 0 and close(model["compute_limit_ms"], model["flops"] / (gemm["gflops"] * 1e9) * 1000)
    parity = {r["name"]: r for r in json.loads((exported / "parity.json").read_text())["reports"]}
    markdown = (out / "report.md").read_text()
    for b in (b for b in model["backends"] if b["status"] == "ok"):
        check_stats(b["latency"], 6)
        check_stats(b["frame_latency"], 3)
        assert b["create_s"] > 0 and b["first_inference_ms"] > 0
        assert [t["batch"] for t in b["throughput"]] == [1, 2, 4] and b["throughput_stopped"] is None
        for t in b["throughput"]:
            assert len(t["samples_ms"]) == 2 and close(
                t["images_per_s"], t["batch"] * 2 / (sum(t["samples_ms"]) / 1000)
            )
        if b["precision"] == "fp32":
            assert close(b["latency_over_compute_limit"], b["latency"]["p50_ms"] / model["compute_limit_ms"])
        source = parity["pytorch vs ort int8" if b["precision"] == "int8" else "pytorch vs ort fp32"]
        if b["backend"] == "pytorch":  # measured: the parity set through the backend itself
            metrics = source["reference_metrics"]
            assert b["accuracy"]["source"].startswith("measured") and b["accuracy"]["n"] == metrics["n"]
            assert b["accuracy"]["accuracy"] == metrics["accuracy"] and b["accuracy"]["roc_auc"] == pytest.approx(
                metrics["roc_auc"], abs=1e-6
            )
        else:  # --quick takes the CPU sessions' figures from pt-export's proof
            metrics = source["candidate_metrics"]
            assert b["accuracy"]["source"] == f"parity.json: {source['name']}"
            assert b["accuracy"]["accuracy"] == metrics["accuracy"] and b["accuracy"]["roc_auc"] == metrics["roc_auc"]
        assert f"{b['latency']['p50_ms']:.2f} ms" in markdown
    p50 = {b["label"]: b["latency"]["p50_ms"] for b in model["backends"] if b["status"] == "ok"}
    values = model["ratios"]["values"]
    assert close(values["ort_fp32_speedup_over_pytorch"], p50["pytorch fp32 cpu"] / p50["onnxruntime fp32 cpu"])
    assert close(values["int8_speedup_over_ort_fp32"], p50["onnxruntime fp32 cpu"] / p50["onnxruntime int8 cpu"])
    assert model["ratios"]["targets"] == TARGETS
    assert model["ratios"]["met"]["int8_speedup_over_ort_fp32"] == (values["int8_speedup_over_ort_fp32"] >= 1.6)
    assert [e["model_file"].rsplit("/", 1)[1] for e in model["edge"]] == ["model.onnx", "model.int8.onnx"]
    for e in model["edge"]:
        summary = json.loads((out / "edge" / e["run_dir"].rsplit("/", 1)[1] / "summary.json").read_text())
        assert (
            e["frames"] == summary["frames"]["processed"] == 12
            and e["tiles_per_frame"] == summary["tiles_per_frame"] == 5
        )
        assert e["fps"] == summary["fps"] and close(e["ratio"], e["fps"] / e["model_only_fps"], rel=1e-3)


def test_flop_counter_counts_a_multiply_add_as_two():
    import torch

    assert model_flops(torch.nn.Linear(10, 5, bias=False), torch.zeros(1, 10)) == 2 * 10 * 5
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert model_flops(conv, torch.zeros(1, 3, 8, 8)) == 2 * 3 * 4 * 9 * 8 * 8


def test_throughput_sweep_stops_at_the_budget():
    # 10 and 20 ms fit a 300 ms budget with room for a loaded machine; 640 ms does not
    rows, stopped = throughput(lambda b: time.sleep(0.01 * b), (1, 2, 64, 128), reps=1, budget_s=0.3)
    assert [r["batch"] for r in rows] == [1, 2] and "batch 64" in stopped and "budget" in stopped


def test_throughput_sweep_warms_each_batch_size_before_the_budget_counts():
    compiled: set[int] = set()

    def run_batch(b: int) -> None:
        if b not in compiled:  # the first call at a new shape compiles, as torch.compile does
            compiled.add(b)
            time.sleep(0.5)
        time.sleep(0.001 * b)

    rows, stopped = throughput(run_batch, (1, 2, 4), reps=1, budget_s=0.3)
    assert [r["batch"] for r in rows] == [1, 2, 4] and stopped is None


def test_bad_inputs(exported, tmp_path):
    assert_usage_error(run("pt-bench", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "not a run directory")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(exported / "model.pt", bare / "model.pt")
    assert_usage_error(run("pt-bench", str(bare), "--out", str(tmp_path / "o")), "no model.onnx", "pt-export")
    assert_usage_error(
        run("pt-bench", str(exported), "--runs", "0", "--out", str(tmp_path / "o")), "--runs must be an integer of 1"
    )
    assert_usage_error(run("pt-bench", str(exported), "--batch-sizes", "1,x"), "not a comma-separated list")
    assert_usage_error(run("pt-bench"), "Missing argument")
    with pytest.raises(TypeError):
        BenchConfig(models=("x",), colour="red")  # an unknown key is an error


def test_a_busy_machine_is_named_in_the_report_and_targets_are_not():
    from pothole_edge.benchmarks.env import busy
    from pothole_edge.benchmarks.report import markdown
    from pothole_edge.benchmarks.run import _warn_if_noisy

    assert busy(2, (0.3, 0.2, 0.1)) is None and "load average was 1.80 on 2 cores" in busy(2, (1.8, 1.0, 0.5))
    backend = {"status": "ok", "label": "ort fp32 cpu", "backend": "onnxruntime", "precision": "fp32"}
    backend |= {"device": "cpu", "create_s": 0.1, "first_inference_ms": 3.0, "accuracy": None, "throughput": []}
    backend |= {"latency": {"p50_ms": 2.0, "p90_ms": 5.0, "p99_ms": 6.0, "mean_ms": 3.0}, "throughput_stopped": None}
    backend |= {"frame_latency": {"p50_ms": 14.0}}
    ratios = {
        "values": dict.fromkeys(
            ("ort_fp32_speedup_over_pytorch", "int8_speedup_over_ort_fp32", "ort_fp32_latency_over_compute_limit"), 1.5
        ),
        "targets": {},
        "met": {},
    }
    model = {"name": "m", "arch": "a", "input": "224", "flops": 1e9, "compute_limit_ms": 1.0, "tiles_per_frame": 7}
    model |= {"view": {"grids": [[1, 1], [3, 2]], "region": [0, 0, 1, 1]}, "backends": [backend], "edge": []}
    environment = {"cpu": "x", "cpu_flags": [], "cores": 2, "cores_usable": 2, "threads_used": 2, "gpu": None}
    environment |= {"cuda": None, "versions": {}, "python": "3", "onnxruntime_providers": [], "busy": None}
    report = {"created_at": "now", "wall_s": 1.0, "environment": environment, "models": [model | {"ratios": ratios}]}
    report |= {"config": {"quick": True, "runs": 5, "warmup": 1, "throughput_reps": 1}}
    report["sgemm"] = {"size": 64, "threads": 2, "timing": {"runs": 3}, "gflops": 10.0}
    _warn_if_noisy(report)
    text = markdown(report)
    assert "Warning: batch-1 repeats varied widely (ort fp32 cpu p90 2.5x its p50)" in text
    assert "target" not in text and "NOT met" not in text and "tiles/s" in text

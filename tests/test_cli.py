"""The commands as a user runs them: exit codes, one-line errors, no tracebacks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, make_folder

BIN = Path(sys.executable).parent
FAST = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [
        line for line in result.stderr.splitlines() if line.lower().startswith("error:") or line.startswith("Usage:")
    ]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_data_flag():
    assert_usage_error(run("pt-train"), "missing --data")


def test_missing_folder(tmp_path):
    assert_usage_error(
        run("pt-train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")),
        "does not exist",
        "--data demo",
    )


def test_unknown_arch_lists_choices(tmp_path):
    assert_usage_error(
        run("pt-train", "--data", str(tmp_path), "--arch", "vgg16"), "vgg16", "'resnet50', 'efficientnet_lite0'"
    )


def test_click_usage_errors_are_one_error_line(tmp_path):
    result = run("pt-eval", str(tmp_path))
    assert_usage_error(result, "Missing option '--data'", "pt-eval --help")
    assert result.stderr.startswith("error:")
    assert_usage_error(run("pt-train", "--epochs", "many"), "'many' is not a valid integer")
    assert_usage_error(run("pt-bench"), "Missing argument")


def test_failed_commands_leave_no_empty_folders(tmp_path):
    root = make_folder(tmp_path / "d", 3)
    shutil.rmtree(root / "pothole")
    out = tmp_path / "o"
    assert_usage_error(run("pt-train", "--data", str(root), "--out", str(out)), "only one class folder")
    assert not out.exists()
    assert_usage_error(run("pt-train", "--data", str(root), cwd=tmp_path), "only one class folder")
    assert not (tmp_path / "runs" / "train").exists()
    assert_usage_error(run("pt-eval", str(tmp_path / "none.pt"), "--data", str(root), cwd=tmp_path), "does not exist")
    assert not (tmp_path / "runs").exists()


def test_bad_choice_flag_is_usage_error(tmp_path):
    assert_usage_error(run("pt-train", "--data", str(tmp_path), "--class-weight", "heavy"), "heavy")


def test_single_class_folder(tmp_path):
    root = make_folder(tmp_path / "d", 3)
    shutil.rmtree(root / "pothole")
    assert_usage_error(run("pt-train", "--data", str(root), "--out", str(tmp_path / "o")), "only one class folder")


def test_unwritable_out(tmp_path, shared_folder):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_usage_error(
        run("pt-train", "--data", str(shared_folder), "--out", str(blocker / "run"), *FAST), "cannot write"
    )


def test_eval_rejects_a_non_checkpoint(tmp_path, shared_folder):
    fake = tmp_path / "model.pt"
    fake.write_text("hello")
    assert_usage_error(
        run("pt-eval", str(fake), "--data", str(shared_folder), "--out", str(tmp_path / "e")),
        "not a readable checkpoint",
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = run("pt-train", "--data", "demo", "--out", str(out), "--demo-per-class", "10", *FAST)
    assert result.returncode == 0, result.stderr
    return out, result


def test_demo_runs_offline_and_says_it_is_synthetic(demo_run):
    out, result = demo_run
    assert "synthetic" in result.stderr
    assert json.loads((out / "config.json").read_text())["data"] == ["demo"]
    assert len(list((out / "demo-data" / "pothole").glob("*.jpg"))) == 10
    assert "roc_auc" in json.loads((out / "metrics.json").read_text())


def test_eval_on_one_class_reports_what_exists(demo_run, tmp_path):
    out, _ = demo_run
    only_normal = tmp_path / "normal_only"
    shutil.copytree(out / "demo-data" / "normal", only_normal / "normal")
    result = run("pt-eval", str(out), "--data", str(only_normal), "--out", str(tmp_path / "e"), "--workers", "0")
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 10 and m["specificity"] is not None and m["false_positive_rate"] is not None
    assert m["roc_auc"] is None and "both classes" in m["undefined"]["roc_auc"]
    assert "absent" in result.stderr
    rows = (tmp_path / "e" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,label,probability,prediction,tile_x0,tile_y0,tile_x1,tile_y1" and len(rows) == 11
    assert m["false_positives_per_1000_negatives"] == pytest.approx(1000 * m["confusion_matrix"][0][1] / 10)


def test_eval_on_a_full_folder_matches_training_metrics_format(demo_run, tmp_path):
    out, _ = demo_run
    result = run(
        "pt-eval",
        str(out / "model.pt"),
        "--data",
        str(out / "demo-data"),
        "--out",
        str(tmp_path / "e"),
        "--workers",
        "0",
    )
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 20 and m["roc_auc"] is not None
    assert m["threshold"] == json.loads((out / "metrics.json").read_text())["threshold"]
    assert (tmp_path / "e" / "roc_curve.png").stat().st_size > 1000


def torchrun(data: Path, out: Path) -> subprocess.CompletedProcess:
    """pt-train in two CPU processes under torchrun (gloo)."""
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(BIN / "pt-train"),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    return subprocess.run(
        cmd + FAST, capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )


def test_torchrun_usage_error_ends_every_rank(tmp_path):
    root = make_folder(tmp_path / "d", 3)
    shutil.rmtree(root / "pothole")
    result = torchrun(root, tmp_path / "o")
    assert (
        result.returncode != 0 and result.stderr.count("error: only one class folder") == 2
    )  # no rank left at a barrier


def test_torchrun_two_cpu_processes(shared_folder, tmp_path):
    out = tmp_path / "ddp"
    result = torchrun(shared_folder, out)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    assert (out / "model.pt").is_file()


def test_every_config_field_is_a_command_option_and_back():
    """A config field no flag reaches is a setting users cannot change; a flag no field holds is dropped."""
    import dataclasses

    from pothole_edge.benchmarks.cli import bench_command
    from pothole_edge.benchmarks.config import BenchConfig
    from pothole_edge.edge.cli import parser
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.export.cli import export_command
    from pothole_edge.export.config import ExportConfig
    from pothole_edge.train.cli import eval_command, train_command
    from pothole_edge.train.config import EvalConfig, TrainConfig

    def fields(config: type) -> set[str]:
        return {f.name for f in dataclasses.fields(config)}

    edge_flags = {a.dest for a in parser()._actions if a.dest != "help"}
    assert edge_flags == fields(EdgeConfig)
    train_only = {"resume"}  # picks a run directory whose saved config is used instead
    for command, config, extra in [
        (train_command, TrainConfig, train_only),
        (eval_command, EvalConfig, set()),
        (export_command, ExportConfig, set()),
        (bench_command, BenchConfig, set()),
    ]:
        assert {p.name for p in command.params} - extra == fields(config), command.name

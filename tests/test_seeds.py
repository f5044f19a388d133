"""Runs of other seeds put to use: distillation (pt-train --teacher) and ensembles (pt-ensemble)."""

from __future__ import annotations

import json

import pytest
import torch

from pothole_edge import metadata
from pothole_edge.errors import UsageError
from pothole_edge.train.checkpoint import load, model_from_checkpoint
from pothole_edge.train.config import EnsembleConfig, TrainConfig
from pothole_edge.train.cv import cross_validate
from pothole_edge.train.distill import soft_targets
from pothole_edge.train.ensemble import ensemble
from pothole_edge.train.models import read_state
from pothole_edge.train.run import train
from tests.conftest import TINY
from tests.test_cli import assert_usage_error, run
from tests.test_cv import _roads_root


def _tiles(n: int, side: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, side, side, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def test_targets_mix_the_label_with_the_teachers_mean_logit(trained_run):
    net = model_from_checkpoint(load(trained_run))
    crop = load(trained_run)["spec"]["preprocess"]["crop"]
    tiles, labels = _tiles(6, crop), torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        taught = net(tiles).softmax(1)
    names = ("normal", "pothole")
    one = str(trained_run)
    assert torch.equal(soft_targets((one,), 0.0, crop, names, "cpu")(tiles, labels), torch.eye(2)[labels])
    assert torch.allclose(soft_targets((one,), 1.0, crop, names, "cpu")(tiles, labels), taught, atol=1e-6)
    mixed = soft_targets((one, one), 0.25, crop, names, "cpu")(tiles, labels)  # the same teacher twice: its own mean
    assert torch.allclose(mixed, 0.75 * torch.eye(2)[labels] + 0.25 * taught, atol=1e-6)
    assert torch.allclose(mixed.sum(1), torch.ones(6))
    # a student of another input size: the teacher sees the same tiles resized to its own
    bigger = soft_targets((one,), 1.0, 2 * crop, names, "cpu")(_tiles(6, 2 * crop), labels)
    assert bigger.shape == (6, 2) and torch.allclose(bigger.sum(1), torch.ones(6))
    with pytest.raises(UsageError, match="has classes"):
        soft_targets((one,), 0.5, crop, ("road", "hole"), "cpu")


def test_a_teacher_that_trained_on_the_test_frames_is_refused_before_anything_is_written(
    shared_folder, trained_run, tmp_path
):
    out = tmp_path / "student"
    student = TrainConfig(data=(str(shared_folder),), out=str(out), teacher=(str(trained_run),), split_seed=7, **TINY)
    with pytest.raises(UsageError, match=r"trained or validated on [1-9]\d* of this run's test frames"):
        train(student)
    assert not out.exists()
    args = ["--data", str(shared_folder), "--out", str(out), "--teacher", str(trained_run), "--split-seed", "7"]
    assert_usage_error(run("pt-train", *args), "use a teacher that held out the same groups")
    demo = ["--data", "demo", "--out", str(out)]
    assert_usage_error(run("pt-train", *demo, "--teacher", str(tmp_path)), "is not a finished run")
    assert_usage_error(run("pt-train", *demo, "--distill", "1.5"), "--distill must be")
    assert not out.exists()


def test_a_cross_validation_teaches_each_fold_with_its_own_fold(shared_folder, tmp_path, caplog):
    roads = _roads_root(tmp_path / "dash")
    common = dict(data=(str(shared_folder), str(roads)), group_column="road", cv=2, **(TINY | {"epochs": 1}))
    teacher = tmp_path / "teacher"
    cross_validate(TrainConfig(out=str(teacher), **common))
    out = tmp_path / "student"
    caplog.set_level("INFO", logger="pt-train")
    result = cross_validate(
        TrainConfig(out=str(out), teacher=(str(teacher),), distill=0.7, seed=1, split_seed=0, **common)
    )
    assert json.loads((out / "config.json").read_text())["teacher"] == [str(teacher)]
    for k in (1, 2):
        fold = json.loads((out / f"fold-{k}" / "config.json").read_text())
        assert fold["teacher"] == [str(teacher / f"fold-{k}")] and fold["distill"] == 0.7
        assert (out / f"fold-{k}" / "model.pt").is_file()
    assert caplog.text.count("distilling: 0.7 of each tile's target") == 2
    assert len(result["per_fold"]) == 2
    # the two cross-validations share their folds: an ensemble joins them fold by fold
    joined = ensemble(EnsembleConfig(runs=(str(teacher), str(out)), out=str(tmp_path / "ensemble")))
    assert [f["fold"] for f in joined["per_fold"]] == [1, 2] and joined["members"] == [str(teacher), str(out)]
    for k in (1, 2):
        members = torch.load(tmp_path / "ensemble" / f"fold-{k}" / "model.pt", weights_only=True)["members"]
        assert len(members) == 2
    # another split seed deals other folds: each fold's teacher would have seen its test roads
    with pytest.raises(UsageError, match="held out the same groups"):
        cross_validate(TrainConfig(out=str(tmp_path / "other"), teacher=(str(teacher),), split_seed=3, **common))
    assert not (tmp_path / "other").exists()


def test_an_ensemble_is_one_model_to_every_consumer(shared_folder, trained_run, tmp_path):
    from pothole_edge.export.config import ExportConfig
    from pothole_edge.export.run import export

    other = tmp_path / "seed1"
    train(TrainConfig(data=(str(shared_folder),), out=str(other), seed=1, split_seed=0, **(TINY | {"epochs": 1})))
    out = tmp_path / "ensemble"
    result = run("pt-ensemble", str(trained_run), str(other), "--out", str(out))
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(out / "model.pt", weights_only=True)  # plain types, like any model.pt
    assert len(ckpt["members"]) == 2 and ckpt["member_runs"] == [str(trained_run), str(other)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["members"] == [str(trained_run), str(other)] and (out / "predictions.csv").is_file()
    assert json.loads((out / "ensemble_config.json").read_text())["runs"] == [str(trained_run), str(other)]
    assert ckpt["spec"]["threshold"] == metrics["threshold"]  # chosen again, for the ensemble
    tiles = _tiles(5, ckpt["spec"]["preprocess"]["crop"])
    with torch.no_grad():
        joined = model_from_checkpoint(load(out))(tiles)
        each = [model_from_checkpoint(load(r))(tiles) for r in (trained_run, other)]
    assert torch.allclose(joined, (each[0] + each[1]) / 2, atol=1e-5)
    # one ONNX graph holds both members, and ONNX Runtime reproduces the ensemble's test metrics
    proof = export(ExportConfig(str(out), out=str(tmp_path / "onnx"), speed_runs=3))
    assert proof["passed"] and metadata.read(tmp_path / "onnx" / "model.onnx")["threshold"] == metrics["threshold"]
    with pytest.raises(UsageError, match="is an ensemble"):  # it cannot seed training: which member would?
        read_state(str(out / "model.pt"))


def test_one_run_is_judged_again_under_another_view(shared_folder, trained_run, tmp_path):
    from pothole_edge.export.config import ExportConfig
    from pothole_edge.export.run import export
    from pothole_edge.train.config import EvalConfig
    from pothole_edge.train.evaluate import evaluate

    out = tmp_path / "finer"
    result = run("pt-ensemble", str(trained_run), "--grids", "1x1+4x3+5x3", "--pool", "max", "--out", str(out))
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(out / "model.pt", weights_only=True)
    before = load(trained_run)
    assert "members" not in ckpt and ckpt["member_runs"] == [str(trained_run)]  # one run keeps a plain checkpoint
    assert ckpt["spec"]["view"] == before["spec"]["view"] | {"grids": [[1, 1], [4, 3], [5, 3]], "pool": "max"}
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in before["state_dict"].items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["view"]["grids"] == [[1, 1], [4, 3], [5, 3]] and ckpt["spec"]["threshold"] == metrics["threshold"]
    # every consumer reads the new view from the checkpoint: pt-eval scores 28 tiles a frame and reports them
    again = evaluate(EvalConfig(model=str(out), data=str(shared_folder), out=str(tmp_path / "eval"), workers=0))
    assert again["view"] == ckpt["spec"]["view"]
    read_state(str(out / "model.pt"))  # and it can seed training, unlike an ensemble of several
    proof = export(ExportConfig(str(out), out=str(tmp_path / "onnx"), speed_runs=3))  # the edge gets the view too
    assert proof["passed"] and metadata.read(tmp_path / "onnx" / "model.onnx")["view"] == ckpt["spec"]["view"]
    for bad, words in ((["--grids", "4x"], ("--grids", "1x1+3x2")), (["--pool", "mean"], ("--pool", "top2"))):
        assert_usage_error(run("pt-ensemble", str(trained_run), *bad, "--out", str(tmp_path / "bad")), *words)
    assert not (tmp_path / "bad").exists()


def test_test_grids_judge_the_trained_model_as_pt_ensemble_would(shared_folder, trained_run, tmp_path):
    """--test-grids trains on --grids' tiles, then chooses the threshold and tests with the finer view: the same
    model, threshold and test metrics as training with --grids alone and judging it again with pt-ensemble."""
    finer = "1x1+2x2+3x2"
    out = tmp_path / "trained-finer"
    metrics = train(
        TrainConfig(data=(str(shared_folder),), out=str(out), **(TINY | {"epochs": 3, "test_grids": finer}))
    )
    again = ensemble(EnsembleConfig(runs=(str(trained_run),), out=str(tmp_path / "judged"), grids=finer))
    ckpt, judged = load(out), load(tmp_path / "judged")
    assert ckpt["spec"]["view"]["grids"] == [[1, 1], [2, 2], [3, 2]] and ckpt["spec"] == judged["spec"]
    assert all(torch.equal(judged["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert metrics["threshold"] == again["threshold"] and metrics["roc_auc"] == again["roc_auc"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["grids"] == "1x1+2x2" and saved["test_grids"] == finer  # training drew its tiles from the coarser

    def epochs(run):  # every column but the epoch's seconds
        return [row.rsplit(",", 1)[0] for row in (run / "history.csv").read_text().splitlines()]

    assert epochs(out) == epochs(trained_run)  # and trained the same
    assert_usage_error(
        run("pt-train", "--data", "demo", "--test-grids", "2by2", "--out", str(tmp_path / "bad")), "--test-grids '2by2'"
    )
    assert not (tmp_path / "bad").exists()


def test_the_default_view_adds_a_finer_level_at_test_time_and_a_chosen_one_is_kept(tmp_path):
    from pothole_edge.train.run import resolve

    def views(**given):
        config = resolve(TrainConfig(data=("demo",), out=str(tmp_path / "run"), **given))
        return config.grids, config.test_grids

    assert views() == ("1x1+4x3", "1x1+4x3+5x3")
    assert views(grids="1x1+3x2") == ("1x1+3x2", "1x1+3x2")  # a user's view is judged as it trained
    assert views(test_grids="1x1+4x3") == ("1x1+4x3", "1x1+4x3")  # the 13-tile model, twice the frame rate


def test_ensemble_members_must_share_split_and_view(shared_folder, trained_run, tmp_path):
    resplit = tmp_path / "resplit"
    train(TrainConfig(data=(str(shared_folder),), out=str(resplit), split_seed=7, **(TINY | {"epochs": 1})))
    coarse = tmp_path / "coarse"
    train(TrainConfig(data=(str(shared_folder),), out=str(coarse), **(TINY | {"epochs": 1, "grids": "1x1"})))
    out = tmp_path / "ensemble"
    assert_usage_error(run("pt-ensemble", str(trained_run), str(resplit), "--out", str(out)), "was split differently")
    assert_usage_error(run("pt-ensemble", str(trained_run), str(coarse), "--out", str(out)), "differs", "view")
    assert_usage_error(run("pt-ensemble", str(trained_run), "--out", str(out)), "needs two or more runs")
    assert_usage_error(run("pt-ensemble", str(trained_run), str(tmp_path), "--out", str(out)), "does not exist")
    assert_usage_error(run("pt-ensemble", str(trained_run), f"{trained_run}/", "--out", str(out)), "more than once")
    both = [str(trained_run), str(resplit)]
    assert_usage_error(run("pt-ensemble", *both, "--out", str(out), "--device", "tpu"), "unknown --device 'tpu'")
    assert not out.exists()


def test_an_interrupted_ensemble_runs_again_into_the_same_folder(shared_folder, trained_run, tmp_path, monkeypatch):
    from pothole_edge.train import fit

    other = tmp_path / "seed1"
    train(TrainConfig(data=(str(shared_folder),), out=str(other), seed=1, split_seed=0, **(TINY | {"epochs": 1})))
    config = EnsembleConfig(runs=(str(trained_run), str(other)), out=str(tmp_path / "ensemble"))
    real = fit.judge

    def interrupted(config, out, *args):
        (out / "metrics.json").write_text("{}")  # the report was under way
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "judge", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensemble(config)
    monkeypatch.setattr(fit, "judge", real)
    assert ensemble(config)["roc_auc"] >= 0 and (tmp_path / "ensemble" / "model.pt").is_file()

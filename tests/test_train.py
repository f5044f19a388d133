"""Training end to end on tiny images: outputs, checkpoint contents, resume, determinism."""

import csv
import json

import pytest
import torch

from tests.conftest import TINY
from train import fit
from train.config import TrainConfig
from train.errors import UsageError
from train.run import train

METRIC_KEYS = {"accuracy", "specificity", "sensitivity", "precision", "f1", "average_precision", "roc_auc", "confusion_matrix", "threshold", "n", "class_names"}


def _config(data, out, **kw):
    return TrainConfig(data=str(data), out=str(out), **(TINY | kw))


def _history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_run_directory_holds_everything(shared_folder, tmp_path):
    out = tmp_path / "run"
    metrics = train(_config(shared_folder, out))
    for name in ("model.pt", "config.json", "history.csv", "metrics.json", "split.csv", "data.json", "summary.json", "predictions.csv", "confusion_matrix.png", "roc_curve.png", "pr_curve.png", "training_curves.png"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints" / "best.pt").exists()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(on_disk) and on_disk == json.loads(json.dumps(metrics))
    assert "at_0.5" in on_disk and "Youden" in on_disk["threshold_method"]
    assert on_disk["n"] == sum(1 for r in csv.DictReader(open(out / "split.csv")) if r["split"] == "test")

    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["arch"] == "efficientnet_lite0" and ckpt["class_names"] == ["normal", "pothole"] and ckpt["positive_index"] == 1
    assert ckpt["preprocess"]["crop"] == 32 and ckpt["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert ckpt["threshold"] == on_disk["threshold"] and ckpt["metrics"]["accuracy"] == on_disk["accuracy"]
    assert len(ckpt["manifest_sha256"]) == 64 and ckpt["config"]["lr"] == 1e-3  # resolved default for weights=none
    assert json.loads((out / "config.json").read_text())["arch"] == "efficientnet_lite0"
    assert [int(r["epoch"]) for r in _history(out)] == [1, 2]


def test_existing_run_is_not_overwritten(shared_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "split.csv").write_text("precious")
    with pytest.raises(UsageError, match="already holds a run"):
        train(_config(shared_folder, out))
    assert (out / "split.csv").read_text() == "precious"


def test_unknown_config_key_is_an_error(shared_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"data": str(shared_folder), "learning_rate": 0.1}))
    with pytest.raises(UsageError, match="unknown config key.*learning_rate"):
        train(None, resume=str(out))


def test_resume_after_a_crash_matches_an_uninterrupted_run(shared_folder, tmp_path, monkeypatch):
    reference = tmp_path / "straight"
    train(_config(shared_folder, reference, epochs=3, patience=10))

    crashed = tmp_path / "crashed"
    real_epoch, calls = fit.train_one_epoch, []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill mid-epoch leaves behind
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(fit, "train_one_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(_config(shared_folder, crashed, epochs=3, patience=10))
    assert [r["epoch"] for r in _history(crashed)] == ["1"] and not (crashed / "model.pt").exists()

    monkeypatch.setattr(fit, "train_one_epoch", real_epoch)
    train(None, resume=str(crashed))
    straight, resumed = _history(reference), _history(crashed)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    for a, b in zip(straight, resumed):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-6)
    a = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(crashed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    with pytest.raises(UsageError, match="already finished"):
        train(None, resume=str(crashed))


def test_early_stopping_restores_the_best_epoch():
    stopper = fit.EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.step(1.0, 0) and stopper.step(0.5, 1)
    assert not stopper.step(0.495, 2)  # below min_delta: not an improvement
    assert not stopper.should_stop
    assert not stopper.step(0.6, 3)
    assert stopper.should_stop and stopper.best_epoch == 1
    restored = fit.EarlyStopping(2, 0.01)
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper


def test_a_run_whose_val_loss_never_improves_still_finishes(shared_folder, tmp_path, monkeypatch):
    real_predict = fit.predict

    def nan_loss(*args, **kwargs):
        preds = real_predict(*args, **kwargs)
        preds.loss = float("nan")
        return preds

    monkeypatch.setattr(fit, "predict", nan_loss)
    train(_config(shared_folder, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "model.pt").is_file()
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["epoch"] == 1

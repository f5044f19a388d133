"""Cross-validation over whole groups (pt-train --cv), and pt-calibrate's threshold from unlabelled frames."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pothole_edge import calibration, metadata
from pothole_edge.errors import UsageError
from pothole_edge.train import data
from pothole_edge.train.config import TrainConfig
from pothole_edge.train.cv import cross_validate
from tests.conftest import TINY, crash_in_epoch, make_folder
from tests.test_cli import assert_usage_error, run

# six roads of unequal size, as a survey has: (frames, of which potholes)
ROADS = {"A": (16, 6), "B": (12, 4), "C": (6, 3), "D": (6, 2), "E": (4, 2), "F": (4, 2)}


def _roads_root(root):
    """A survey root whose frames.csv has a road column (and a segment column that is not used)."""
    potholes = sum(p for _, p in ROADS.values())
    make_folder(root, per_class=max(potholes, sum(n - p for n, p in ROADS.values())), seed=5)
    free = {"normal": sorted((root / "normal").iterdir()), "pothole": sorted((root / "pothole").iterdir())}
    rows = [["file", "label", "segment", "road"]]
    for road, (n, p) in ROADS.items():
        for i in range(n):
            label = "pothole" if i < p else "normal"
            rows.append([f"{label}/{free[label].pop(0).name}", label, f"{road}-{i % 2}", road])
    for rest in free.values():  # frames no road claims are left out of the set
        for f in rest:
            f.unlink()
    with open(root / "frames.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def _fold(roots, k, folds=3, seed=0):
    return data.load_for_training([str(r) for r in roots], None, 0.15, 0.15, seed, 1, "road", folds, k)


def test_every_road_is_held_out_exactly_once_and_never_straddles_splits(tmp_path):
    roads = _roads_root(tmp_path / "dash")
    web = make_folder(tmp_path / "web", per_class=9)
    held: dict[str, int] = {}
    web_held: dict[str, int] = {}
    for k in (1, 2, 3):
        folder = _fold([web, roads], k)
        by_road: dict[str, set[str]] = {}
        for s in folder.samples:
            if s.root == 1:
                by_road.setdefault(s.group, set()).add(s.split)
            elif s.split == "test":
                web_held[s.path] = web_held.get(s.path, 0) + 1
        assert all(len(v) == 1 for v in by_road.values()), by_road  # a road is wholly in one split
        for road, (split,) in ((r, tuple(v)) for r, v in by_road.items()):
            if split == "test":
                held[road] = held.get(road, 0) + 1
        for split in ("val", "test"):  # each split of the survey root holds both classes
            assert {s.label for s in folder.split(split) if s.root == 1} == {0, 1}, (k, split)
        assert _fold([web, roads], k).samples == folder.samples  # seeded: the same folds again
    assert held == dict.fromkeys(ROADS, 1)
    # a root without groups is dealt by label: every photo is tested exactly once, each fold with both classes
    assert len(web_held) == 18 and set(web_held.values()) == {1}


def test_validation_takes_few_roads_so_training_keeps_many():
    # three long roads and four short ones: filling validation's share with whole short roads would take all four
    sizes = {"long1": 40, "long2": 40, "long3": 40, "s1": 6, "s2": 6, "s3": 6, "s4": 6}
    samples = [
        data.Sample(0, f"{road}/{i}.jpg", i % 2, f"{road}-{i}", group=road)
        for road, n in sizes.items()
        for i in range(n)
    ]
    for seed in range(5):
        split = data.split_samples(samples, 0.15, 0.15, seed)
        val = {s.group for s in split if s.split == "val"}
        assert len(val) <= 2, val  # at most 15% of the seven roads, rounded up
        assert len({s.group for s in split if s.split == "train"}) >= 3
        assert {s.label for s in split if s.split == "val"} == {0, 1}


def test_split_seed_keeps_the_folds_while_the_training_seed_changes(tmp_path):
    from pothole_edge.train.run import resolve, split

    roads = _roads_root(tmp_path / "dash")

    def held_out(**seeds):
        config = resolve(
            TrainConfig(data=(str(roads),), out=str(tmp_path / "run"), group_column="road", cv=3, cv_fold=1, **seeds)
        )
        folder = split(config, list(config.data))
        return config, {(s.path, s.split) for s in folder.samples}

    config, by_seven = held_out(seed=3, split_seed=7)
    assert (config.seed, config.split_seed) == (3, 7)
    assert held_out(seed=0, split_seed=7)[1] == by_seven == held_out(seed=7)[1]
    config, plain = held_out(seed=3)
    assert config.split_seed == 3  # config.json records the split's seed that was used
    assert plain != by_seven  # the seed does move the folds where no --split-seed is given


def test_folds_need_enough_groups_and_folders_to_split(tmp_path):
    roads = _roads_root(tmp_path / "dash")
    with pytest.raises(UsageError, match="--cv 7 needs at least 7 groups"):
        _fold([roads], 1, folds=7)
    presplit = tmp_path / "pre"
    for split in ("train", "val", "test"):
        make_folder(presplit / split, per_class=2)
    with pytest.raises(UsageError, match="already split"):
        _fold([presplit], 1)


def test_group_balance_trains_each_training_road_equally_often(tmp_path, monkeypatch):
    from collections import Counter

    from pothole_edge.train import fit
    from pothole_edge.train.run import train

    roads = _roads_root(tmp_path / "dash")
    seen = []

    def spy(samples, *args):
        draws = plan(samples, *args)
        seen.append(Counter(samples[d.index].group for d in draws if d.mode != "frame"))
        return draws

    plan = fit.plan_epoch
    monkeypatch.setattr(fit, "plan_epoch", spy)
    out = tmp_path / "run"
    config = TrainConfig(
        data=(str(roads),), out=str(out), group_column="road", cv=3, cv_fold=1, group_balance=True, **TINY
    )
    train(replace(config, epochs=1))
    assert json.loads((out / "config.json").read_text())["group_balance"] is True
    (drawn,) = seen
    assert len(drawn) >= 2 and max(drawn.values()) - min(drawn.values()) <= 1, drawn  # equal shares, rounded


def test_a_fold_that_cannot_train_is_refused_before_anything_is_written(tmp_path):
    root = make_folder(tmp_path / "dash", per_class=8)
    rows = ["file,label,road"]  # road A holds every pothole: the fold holding it out trains without any
    rows += [f"pothole/{i:03d}.jpg,pothole,A" for i in range(8)] + [
        f"normal/{i:03d}.jpg,normal,{'AB'[i % 2]}" for i in range(8)
    ]
    (root / "frames.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cv"
    config = TrainConfig(data=(str(root),), out=str(out), group_column="road", cv=2, **TINY)
    with pytest.raises(UsageError, match=r"fold \d of 2: \w+ lacks one"):
        cross_validate(config)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cv", "1"], "--cv must be 0 (one split) or 2 to 100"),
        (["--cv", "2", "--cv-fold", "3"], "--cv-fold must be from 1 to --cv (2)"),
        (["--cv-fold", "1"], "--cv-fold must be from 1 to --cv (0)"),
        (["--augment", "heavy"], "'heavy' is not one of 'basic', 'road'"),
        (["--split-seed", "-1"], "--split-seed must be an integer of 0 or more, got -1"),
    ],
)
def test_bad_cv_flags_are_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    assert_usage_error(run("pt-train", "--data", "demo", "--out", str(out), *args), message)
    assert not out.exists()


def test_cross_validation_reports_each_fold_and_resumes_after_a_crash(shared_folder, tmp_path, monkeypatch, caplog):
    roads = _roads_root(tmp_path / "dash")
    out = tmp_path / "cv"
    config = TrainConfig(
        data=(str(shared_folder), str(roads)), out=str(out), group_column="road", cv=2, **(TINY | {"epochs": 1})
    )
    from pothole_edge.train import cv

    # a kill during the second fold's only epoch: the first fold stays finished and is not trained again
    monkeypatch.setattr(cv, "train", _crash_on_fold(cv.train, 2, monkeypatch))
    caplog.set_level("INFO", logger="pt-train")
    with pytest.raises(KeyboardInterrupt):
        cross_validate(config)
    assert caplog.text.count("share their split") == 2  # once per fold started, not again for the up-front check
    assert f"continue with pt-train --resume {out}\n" in caplog.text  # the whole cross-validation, not its fold
    first = (out / "fold-1" / "model.pt").stat().st_mtime_ns
    assert not (out / "cv.json").exists() and not (out / "fold-2" / "model.pt").exists()
    monkeypatch.undo()
    result = cross_validate(None, resume=str(out))
    assert (out / "fold-1" / "model.pt").stat().st_mtime_ns == first
    assert json.loads((out / "cv.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["folds"] == 2 and result["group_column"] == "road"
    held = [road for f in result["per_fold"] for road in f["sources"]["dash"]["groups"]]
    assert sorted(held) == sorted(ROADS)  # every road held out once, by one fold
    for f in result["per_fold"]:  # every figure traces back to the fold's own predictions
        rows = list(csv.DictReader(open(out / f"fold-{f['fold']}" / "predictions.csv")))
        mine = [r for r in rows if f"{roads}/" in r["path"]]
        y = np.array([r["label"] == "pothole" for r in mine])
        p = np.array([float(r["probability"]) for r in mine])
        report = f["sources"]["dash"]
        assert report["roc_auc"] == pytest.approx(roc_auc_score(y, p))
        assert report["false_alarm_rate"] == pytest.approx((p[~y] >= f["threshold"]).mean())
        assert report["sensitivity"] == pytest.approx((p[y] >= f["threshold"]).mean())
        assert f["threshold"] == json.loads((out / f"fold-{f['fold']}" / "metrics.json").read_text())["threshold"]
    aucs = [f["sources"]["dash"]["roc_auc"] for f in result["per_fold"]]
    summary = result["summary"]["dash"]["roc_auc"]
    assert summary["mean"] == pytest.approx(np.mean(aucs)) and summary["min"] == pytest.approx(min(aucs))
    # the small roads have too few frames to calibrate a 2% budget: said, not faked
    replays = [c for f in result["per_fold"] for c in f["sources"]["dash"]["calibration_replay"].values()]
    assert replays and all("cannot resolve" in c["skipped"] for c in replays)


def test_calibration_replay_calibrates_on_the_first_half_and_measures_on_the_second():
    from pothole_edge.train.cv import _calibrated

    rng = np.random.default_rng(3)
    # a drive whose second half scores higher: a threshold set on the first half meets that shift
    frames = [
        {
            "group": "R",
            "name": f"{i:04d}.jpg",
            "label": int(i % 10 == 0),
            "prob": float(rng.beta(2, 9) + (i >= 200) * 0.05),
        }
        for i in range(400)
    ]
    for f in frames:
        if f["label"]:
            f["prob"] = float(rng.uniform(0.5, 1))
    replay = _calibrated(frames, val_threshold=0.9, budget=0.02, seed=0)
    first_normals = sorted(f["prob"] for f in frames[:200] if not f["label"])
    assert replay["calibration_potholes"] == round(0.03 / 0.97 * len(first_normals))
    assert replay["calibration_frames"] == len(first_normals) + replay["calibration_potholes"]
    second = frames[200:]
    neg = np.array([f["prob"] for f in second if not f["label"]])
    for how in ("val_threshold", "calibrated", "calibrated_known_share"):
        assert replay[how]["false_alarm_rate"] == pytest.approx((neg >= replay[how]["threshold"]).mean())
    assert replay["val_threshold"]["threshold"] == 0.9
    # the known pothole share lets more frames through: a lower threshold
    assert replay["calibrated_known_share"]["threshold"] < replay["calibrated"]["threshold"]
    assert replay["measured_negatives"] == neg.size


def _crash_on_fold(real_train, fold, monkeypatch):
    def train(config, resume=None, within=None):
        if config is not None and config.cv_fold == fold:
            crash_in_epoch(monkeypatch, config, 1, within=within)
            raise KeyboardInterrupt
        return real_train(config, resume=resume, within=within)

    return train


def test_threshold_for_budget_flags_at_most_the_budget():
    rng = np.random.default_rng(0)
    scores = rng.beta(2, 8, 1000)
    t, basis = calibration.threshold_for_budget(scores, 0.02)
    assert (scores >= t).mean() == pytest.approx(0.02) and basis["flagged_share"] == pytest.approx(0.02)
    assert (scores >= np.sort(scores)[-21]).mean() > 0.02  # the lowest such threshold
    # a known pothole share lets that many more frames above it
    t2, _ = calibration.threshold_for_budget(scores, 0.02, pothole_share=0.03)
    assert t2 < t and (scores >= t2).mean() == pytest.approx(0.05)
    # ties fall on one side together: never more than the budget
    tied = np.r_[np.full(30, 0.9), rng.uniform(0, 0.5, 970)]
    t3, _ = calibration.threshold_for_budget(tied, 0.02)
    assert (tied >= t3).mean() <= 0.02
    with pytest.raises(UsageError, match="30 frame.* cannot resolve a false-alarm rate of 0.02.*at least 50"):
        calibration.threshold_for_budget(scores[:30], 0.02)


def test_metadata_rewrite_keeps_the_graph_and_other_properties(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["image"], ["probabilities"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph)
    model.metadata_props.add(key="other", value="kept")
    model.metadata_props.add(key=metadata.KEY, value='{"old": true}')
    onnx.save(model, tmp_path / "a.onnx")
    metadata.rewrite(tmp_path / "a.onnx", tmp_path / "b.onnx", {"threshold": 0.25})
    new = onnx.load(tmp_path / "b.onnx")
    onnx.checker.check_model(new, full_check=True)
    assert new.graph == model.graph
    assert {p.key: p.value for p in new.metadata_props} == {"other": "kept", metadata.KEY: '{"threshold":0.25}'}
    assert metadata.read_props(tmp_path / "b.onnx")[metadata.KEY] == '{"threshold":0.25}'


def test_pt_calibrate_sets_the_threshold_from_unlabelled_frames(trained_run, tmp_path):
    from pothole_edge.export.calibrate import CalibrateConfig, calibrate
    from pothole_edge.export.config import ExportConfig
    from pothole_edge.export.run import export

    export(ExportConfig(str(trained_run), out=str(tmp_path / "x"), speed_runs=3))
    model = tmp_path / "x" / "model.onnx"
    before = model.read_bytes()
    frames = make_folder(tmp_path / "frames", per_class=30, seed=9)  # unlabelled: class folders mean nothing here
    report = calibrate(CalibrateConfig(str(model), str(frames), max_fpr=0.1))
    out = tmp_path / "x" / "model.calibrated.onnx"
    assert model.read_bytes() == before  # the model it started from is untouched
    meta = metadata.read(out)
    assert meta["threshold"] == report["threshold"] and meta["threshold_method"].startswith("calibrated")
    assert meta["calibration"]["frames"] == 60 and meta["calibration"]["max_fpr"] == 0.1
    assert meta["calibration"]["threshold_before"] == metadata.read(model)["threshold"]
    # the threshold flags the budget's share of the frames it saw, scored through the model's own view
    from pothole_edge.export.calibrate import score_frames
    from pothole_edge.session import Runner, open_session

    scores, _ = score_frames(Runner(open_session(out)), meta, sorted(frames.rglob("*.jpg")))
    assert (scores >= meta["threshold"]).mean() == pytest.approx(0.1)
    assert (tmp_path / "x" / "model.calibrated.calibration.png").read_bytes()[:4] == b"\x89PNG"
    # the copy runs as the original does: same graph, same scores
    import onnx

    assert onnx.load(out).graph == onnx.load(model).graph
    # mistakes are one line and write nothing
    bad = str(tmp_path / "bad.onnx")
    for args, message in [
        ([str(model), "--data", str(frames), "--max-fpr", "0.0001", "--out", bad], "cannot resolve"),
        ([str(model), "--data", str(tmp_path / "none"), "--out", bad], "is not a folder"),
        ([str(model), "--data", str(frames), "--out", str(model)], "is the model itself"),
        ([str(trained_run / "model.pt"), "--data", str(frames), "--out", bad], "PyTorch checkpoint"),
        ([str(model), "--data", str(frames), "--max-fpr", "2", "--out", bad], "--max-fpr must be a fraction"),
    ]:
        assert_usage_error(run("pt-calibrate", *args), message)
        assert not (tmp_path / "bad.onnx").exists()
    assert model.read_bytes() == before


def test_calibrate_runs_without_torch(tmp_path):
    code = "import sys; sys.modules['torch'] = None\nimport pothole_edge.export.calibrate, pothole_edge.calibration\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""Training end to end on tiny images: outputs, checkpoint contents, resume, determinism."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from pothole_edge.errors import UsageError
from pothole_edge.train import fit, metrics
from pothole_edge.train.checkpoint import LAST
from pothole_edge.train.config import TrainConfig, load_json, to_dict
from pothole_edge.train.ema import WeightAverage, decay_per_step
from pothole_edge.train.run import train
from tests.conftest import TINY, crash_in_epoch

METRIC_KEYS = {*metrics.HEADLINE, "confusion_matrix", "threshold", "n", "class_names"}


def _config(data, out, **kw):
    return TrainConfig(data=(str(data),), out=str(out), **(TINY | kw))


def _history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_run_directory_holds_everything(shared_folder, tmp_path):
    out = tmp_path / "run"
    metrics = train(_config(shared_folder, out))
    for name in (
        "model.pt",
        "config.json",
        "history.csv",
        "metrics.json",
        "split.csv",
        "data.json",
        "summary.json",
        "predictions.csv",
        "confusion_matrix.png",
        "roc_curve.png",
        "pr_curve.png",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints" / "best.pt").exists()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(on_disk) and on_disk == json.loads(json.dumps(metrics))
    assert "at_0.5" in on_disk and on_disk["threshold_method"].startswith(
        "max-fpr: the lowest threshold with a false-positive rate at most 0.02"
    )
    assert on_disk["n"] == sum(1 for r in csv.DictReader(open(out / "split.csv")) if r["split"] == "test")
    assert on_disk["view"]["grids"] == [[1, 1], [2, 2]]

    ckpt = torch.load(out / "model.pt", weights_only=True)
    spec = ckpt["spec"]
    assert (
        spec["arch"] == "efficientnet_lite0"
        and spec["class_names"] == ["normal", "pothole"]
        and spec["positive_index"] == 1
    )
    assert (
        spec["preprocess"]["crop"] == 32
        and spec["preprocess"]["mean"] == [0.5, 0.5, 0.5]
        and spec["view"]["overlap"] == 0.25
    )
    assert spec["threshold"] == on_disk["threshold"] and ckpt["metrics"]["accuracy"] == on_disk["accuracy"]
    assert len(ckpt["manifest_sha256"]) == 64 and ckpt["config"]["lr"] == 1e-3  # resolved default for weights=none
    resolved = json.loads((out / "config.json").read_text())
    assert (
        resolved["arch"] == "efficientnet_lite0"
        and resolved["img_size"] == 32
        and resolved["positive"] == "pothole"
        and resolved["out"] == str(out)
    )
    assert None not in (resolved["lr"], resolved["workers"], resolved["weights"])
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
    (out / "data.json").write_text("{}")
    (out / "split.csv").write_text("")
    with pytest.raises(UsageError, match="unknown config key.*learning_rate"):
        train(None, resume=str(out))


@pytest.mark.parametrize("average", [{"ema_epochs": 0.0}, {"ema_decay": 0.9}, {}], ids=["live", "fixed", "default"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(shared_folder, tmp_path, monkeypatch, average):
    reference = tmp_path / "straight"
    train(_config(shared_folder, reference, epochs=3, patience=10, **average))

    crashed = tmp_path / "crashed"
    crash_in_epoch(monkeypatch, _config(shared_folder, crashed, epochs=3, patience=10, **average), 2)
    assert [r["epoch"] for r in _history(crashed)] == ["1"] and not (crashed / "model.pt").exists()
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


def test_the_weight_average_follows_the_live_weights_at_its_decay():
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(live, decay=0.9)
    before = {k: v.clone() for k, v in average.bare.state_dict().items()}
    with torch.no_grad():
        live[0].weight.add_(1.0)
    live.train()(torch.randn(8, 3))  # moves BatchNorm's statistics and its step counter
    average.update(live)
    now, current = average.bare.state_dict(), live.state_dict()
    assert torch.allclose(now["0.weight"], 0.9 * before["0.weight"] + 0.1 * current["0.weight"])
    assert torch.allclose(now["1.running_mean"], 0.9 * before["1.running_mean"] + 0.1 * current["1.running_mean"])
    assert now["1.num_batches_tracked"] == current["1.num_batches_tracked"] == 1
    assert not any(p.requires_grad for p in average.bare.parameters())


def test_the_weight_average_spans_the_epochs_asked_whatever_the_epoch_size():
    assert decay_per_step(1.0, 50) == pytest.approx(0.98)  # the 0.98 measured on the shared data's folds
    assert decay_per_step(1.0, 7) == pytest.approx(6 / 7)  # the demo's epoch: 0.98 there would span seven
    assert decay_per_step(2.0, 7) == pytest.approx(13 / 14)
    assert decay_per_step(0.5, 1) == 0.0  # shorter than a step: the live weights


def test_a_run_records_the_decay_its_epochs_used(shared_folder, tmp_path):
    default, fixed, live = (tmp_path / name for name in ("default", "fixed", "live"))
    train(_config(shared_folder, default, epochs=1))
    train(_config(shared_folder, fixed, epochs=1, ema_decay=0.9))
    train(_config(shared_folder, live, epochs=1, ema_epochs=0.0))
    steps = 1 / (1 - float(_history(default)[0]["ema_decay"]))  # one epoch of this run's batches
    assert steps > 1 and steps == pytest.approx(round(steps))
    assert float(_history(fixed)[0]["ema_decay"]) == 0.9
    assert float(_history(live)[0]["ema_decay"]) == 0.0
    assert "ema" not in torch.load(live / LAST, weights_only=True)


def test_a_run_saved_before_the_weight_average_was_the_default_resumes_without_one(tmp_path):
    old = {k: v for k, v in to_dict(TrainConfig(data=("x",))).items() if k != "ema_epochs"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_json(TrainConfig, tmp_path / "config.json").ema_epochs == 0.0
    assert TrainConfig(data=("x",)).ema_epochs == 1.0


def test_a_switch_in_a_saved_config_must_be_true_or_false():
    with pytest.raises(UsageError, match=r"--group-balance must be true or false, got 'no'"):
        TrainConfig(data=("x",), group_balance="no").check()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"--amp must be true or false, got 1"):
        TrainConfig(data=("x",), amp=1).check()  # type: ignore[arg-type]
    TrainConfig(data=("x",), group_balance=True).check()


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

    class NaN(fit.Predictions):
        loss = float("nan")

    def nan_loss(*args, **kwargs):
        p = real_predict(*args, **kwargs)
        return NaN(p.indices, p.labels, p.probs, p.hottest, p.tile_probs)

    monkeypatch.setattr(fit, "predict", nan_loss)
    train(_config(shared_folder, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "model.pt").is_file()
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["epoch"] == 1


def _forty_second_epochs(monkeypatch) -> None:
    """Every epoch is recorded as taking 40 s, whatever the machine."""
    real_epoch = fit._epoch

    def forty_second_epoch(state, *args, **kwargs):
        improved = real_epoch(state, *args, **kwargs)
        state.history[-1]["seconds"] = 40.0
        return improved

    monkeypatch.setattr(fit, "_epoch", forty_second_epoch)


def test_a_time_limit_starts_no_epoch_that_would_end_past_it(shared_folder, tmp_path, monkeypatch):
    _forty_second_epochs(monkeypatch)
    out = tmp_path / "run"
    train(_config(shared_folder, out, epochs=4, patience=4, time_limit=1.5))  # 90 s: two epochs of 40 s, not three
    assert len(_history(out)) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_for_time"] and not summary["stopped_early"]
    assert (out / "model.pt").is_file()


def test_a_resumed_run_counts_its_earlier_epochs_against_the_time_limit(shared_folder, tmp_path, monkeypatch):
    _forty_second_epochs(monkeypatch)
    out = tmp_path / "run"
    crash_in_epoch(monkeypatch, _config(shared_folder, out, epochs=4, patience=4, time_limit=1.5), 2)
    assert len(_history(out)) == 1
    train(None, resume=str(out))  # 40 s before the crash and 40 s after: a third epoch would pass 90 s
    assert len(_history(out)) == 2
    assert json.loads((out / "summary.json").read_text())["stopped_for_time"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -0.01}, "--lr must be"),
        ({"lr": float("nan")}, "--lr must be"),
        ({"lr": 0.0}, "--lr must be"),
        ({"weight_decay": -1.0}, "--weight-decay"),
        ({"workers": -1}, "--workers"),
        ({"img_size": -5}, "--img-size"),
        ({"img_size": 0}, "--img-size"),
        ({"lr_patience": -1}, "--lr-patience"),
        ({"min_delta": -5.0}, "--min-delta"),
        ({"time_limit": -1.0}, "--time-limit"),
        ({"grids": "3by2"}, "--grids"),
        ({"region": "0,0,2,1"}, "--region"),
        ({"max_fpr": 1.5}, "--max-fpr"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"ema_epochs": -1.0}, "--ema-epochs"),
        ({"paste": 1.5}, "--paste"),
        ({"global_pool": "median"}, "--global-pool"),
    ],
)
def test_bad_values_fail_before_anything_is_written(shared_folder, tmp_path, bad, message):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=message):
        train(_config(shared_folder, out, **bad))
    assert not out.exists()


def test_default_out_takes_the_next_free_name(shared_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "train").mkdir(parents=True)
    (tmp_path / "runs" / "train" / "split.csv").write_text("an earlier run")
    config = TrainConfig(data=(str(shared_folder),), **(TINY | {"epochs": 1}))
    train(config)
    assert (tmp_path / "runs" / "train2" / "model.pt").is_file()
    assert (tmp_path / "runs" / "train" / "split.csv").read_text() == "an earlier run"


def test_ranks_reduce_on_their_own_device_and_share_a_usage_error(monkeypatch):
    """NCCL reduces device tensors only, and a rank-0 mistake must reach every rank instead of a barrier."""
    import torch.distributed as dist

    from pothole_edge.train import distributed
    from pothole_edge.train.distributed import Context

    made, reduced = [], []
    real_tensor = torch.tensor

    def on_device(*args, device=None, **kwargs):
        made.append(device)
        return real_tensor(*args, **kwargs)  # this machine may have no such GPU: the tensor stays here

    monkeypatch.setattr(distributed.torch, "tensor", on_device)
    monkeypatch.setattr(dist, "all_reduce", lambda t: reduced.append(t))
    ctx = Context(0, 2, torch.device("cuda:1"))
    assert distributed.all_sum(ctx, [1.0, 2.0]) == [1.0, 2.0]
    assert made == [torch.device("cuda:1")] and len(reduced) == 1
    monkeypatch.setattr(distributed.torch, "tensor", real_tensor)

    sent = []
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: sent.append(list(box)))

    def mistake():
        raise UsageError("only one class folder")

    with pytest.raises(UsageError, match="only one class folder"):
        distributed.on_main(Context(0, 2, torch.device("cpu")), mistake)
    assert sent == [["only one class folder"]]

    def other_rank_receives(box, src):
        box[0] = "only one class folder"

    monkeypatch.setattr(dist, "broadcast_object_list", other_rank_receives)
    ran = []
    with pytest.raises(UsageError, match="only one class folder"):
        distributed.on_main(Context(1, 2, torch.device("cpu")), lambda: ran.append(1))
    assert not ran  # rank 1 never runs rank 0's work, and never waits for it


def test_cuda_means_this_ranks_own_gpu(monkeypatch):
    from pothole_edge.train.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pick_device("cuda", local_rank=3) == torch.device("cuda:3")
    assert pick_device("auto", local_rank=2) == torch.device("cuda:2")
    assert pick_device("cuda:1", local_rank=3) == torch.device("cuda:1")
    with pytest.raises(UsageError, match="does not exist: this machine has 4 GPU"):
        pick_device("cuda:7")


def _survey_root(root, frames: int = 24, seed: int = 7):
    """Wide frames with one small bright patch in the pothole ones, boxes.csv for them, and segments in frames.csv."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, boxes = ["file,label,segment"], ["file,x0,y0,x1,y1"]
    for i in range(frames):
        label = "pothole" if i % 2 else "normal"
        (root / label).mkdir(parents=True, exist_ok=True)
        image = rng.integers(60, 100, (60, 96, 3), dtype=np.uint8)
        name = f"{label}/{i:03d}.jpg"
        if label == "pothole":
            x, y = int(rng.integers(0, 80)), int(rng.integers(0, 44))
            image[y : y + 14, x : x + 14] = 230
            boxes.append(f"{name},{x},{y},{x + 14},{y + 14}")
        Image.fromarray(image).save(root / name, quality=95)
        rows.append(f"{name},{label},seg{i // 4}")
    (root / "frames.csv").write_text("\n".join(rows) + "\n")
    (root / "boxes.csv").write_text("\n".join(boxes) + "\n")
    return root


def test_training_on_web_photos_and_survey_frames_together(shared_folder, tmp_path):
    survey = _survey_root(tmp_path / "survey")
    out = tmp_path / "run"
    metrics = train(TrainConfig(data=(str(shared_folder), str(survey)), out=str(out), **(TINY | {"epochs": 2})))
    rows = list(csv.DictReader(open(out / "split.csv")))
    mine = [r for r in rows if r["root"] == "1"]
    assert len(mine) == 24 and len(rows) == 24 + 28
    by_segment = {}
    for r in mine:
        by_segment.setdefault(r["group"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_segment.values())  # a segment never straddles splits
    assert all(r["boxes"] not in ("", "?") for r in mine if r["label"] == "pothole")
    assert all(r["boxes"] == "?" for r in rows if r["root"] == "0")  # no boxes.csv: unknown, so MIL
    assert set(metrics["by_source"]) == {"data", "survey"}
    hits = metrics["by_source"]["survey"]["hottest_tile_hits_box"]
    assert hits is None or 0 <= hits["rate"] <= 1
    data = json.loads((out / "data.json").read_text())
    assert data["roots"] == [str(shared_folder), str(survey)] and data["boxed_images"] == 12


def test_paste_blends_one_pothole_into_the_tile_and_leaves_the_rest():
    from pothole_edge.train.paste import paste

    tile = np.full((224, 224, 3), 120, np.uint8)
    donor = np.full((500, 800, 3), 90, np.uint8)
    donor[210:250, 310:370] = 10  # the pothole: dark, inside its box, on lighter pavement
    out = paste(tile, donor, (310, 210, 370, 250), 1.0, seed=4)
    assert out.shape == tile.shape and out.dtype == np.uint8
    changed = np.argwhere((out != tile).any(axis=2))
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    # one blob about the box's size (scale 0.8-1.25x, plus the feathered margin), the rest of the tile untouched
    assert 40 <= x1 - x0 + 1 <= 1.6 * 1.25 * 60 and 25 <= y1 - y0 + 1 <= 1.6 * 1.25 * 40
    assert out.min() < 40  # the pothole's dark core arrives
    # the donor's pavement (90) is matched to the host's (120): no dark frame around the pothole
    ring = out[y0 : y1 + 1, x0 : x1 + 1][(out[y0 : y1 + 1, x0 : x1 + 1] > 60).all(axis=2)]
    assert abs(float(ring.mean()) - 120) < 8
    assert np.array_equal(out, paste(tile, donor, (310, 210, 370, 250), 1.0, seed=4))  # seeded
    assert not np.array_equal(out, paste(tile, donor, (310, 210, 370, 250), 1.0, seed=5))


def test_a_paste_tile_is_a_positive_cut_from_the_negative_frame(tmp_path):
    from PIL import Image

    from pothole_edge import spec as specs
    from pothole_edge.train.data import Sample
    from pothole_edge.train.loader import TileDataset
    from pothole_edge.train.tiles import Draw

    host, donor = np.full((500, 800, 3), 120, np.uint8), np.full((500, 800, 3), 120, np.uint8)
    donor[200:260, 300:380] = 0
    Image.fromarray(host).save(tmp_path / "n.png")
    Image.fromarray(donor).save(tmp_path / "p.png")
    samples = [Sample(0, "n.png", 0, "a", "train"), Sample(0, "p.png", 1, "b", "train", "", ((300, 200, 380, 260),))]
    prep = specs.preprocess(224, 256, "bilinear", [0.5] * 3, [0.5] * 3)
    spec = specs.describe(["normal", "pothole"], 1, 0.5, "t", prep, specs.view(grids=[[1, 1], [3, 2]]), "x")
    draws = [Draw(0, "paste", 1, 7, None, 1), Draw(0, "random", 0, 7)]
    data = TileDataset([tmp_path / "n.png", tmp_path / "p.png"], samples, draws, spec, "basic")
    (pasted, label, _), (plain, plain_label, _) = data[0], data[1]
    assert (label, plain_label) == (1, 0) and pasted.shape == plain.shape == (224, 224, 3)
    assert int(pasted.min()) < 40 < int(plain.min())  # the donor's dark pothole is in the positive tile alone
    (tmp_path / "p.png").unlink()  # an unreadable donor leaves the host tile, negative
    assert data[0][1] == 0


def test_paste_draws_come_from_negative_frames_with_a_boxed_donor():
    from pothole_edge.train.data import Sample
    from pothole_edge.train.tiles import plan_epoch

    many = [
        Sample(0, f"{i}.jpg", i % 2, f"h{i}", "train", "", ((1, 1, 9, 9),) if i % 4 == 1 else ()) for i in range(400)
    ]
    assert plan_epoch(many, 2, 0, "boxes", False, {}, True, 0.0) == plan_epoch(many, 2, 0, "boxes", False, {})
    draws = plan_epoch(many, 2, 0, "boxes", False, {}, True, 0.5)
    pasted = [d for d in draws if d.mode == "paste"]
    assert 70 < len(pasted) < 130  # about half of the 200 negative frames
    assert all(d.label == 1 and many[d.index].label == 0 and many[d.donor].boxes for d in pasted)
    assert len({d.donor for d in pasted}) > 20  # donors vary
    assert sum(d.mode == "random" for d in draws) == 200  # added to every negative frame's own tile, none replaced


def test_group_balance_draws_each_road_equally_and_web_photos_once():
    from collections import Counter

    from pothole_edge.train.data import Sample
    from pothole_edge.train.tiles import balanced_frames, plan_epoch

    roads = {"long": 300, "mid": 60, "short": 24}  # 384 grouped frames: 128 draws a road
    samples = [Sample(0, f"{g}{i}.jpg", i % 2, f"{g}{i}", "train", g, ()) for g, n in roads.items() for i in range(n)]
    samples += [Sample(1, f"web{i}.jpg", i % 2, f"w{i}", "train", "", None) for i in range(50)]
    order = balanced_frames(samples, 4, 0)
    per_road = Counter(samples[i].group for i in order)
    assert per_road == {"long": 128, "mid": 128, "short": 128, "": 50}
    short = Counter(i for i in order if samples[i].group == "short")
    assert set(short.values()) == {5, 6}  # 128 = 5 x 24 + 8: every frame 5 times, 8 of them once more
    long_frames = [i for i in order if samples[i].group == "long"]
    assert len(set(long_frames)) == 128  # a subsample, no repeats
    assert long_frames != [i for i in balanced_frames(samples, 5, 0) if samples[i].group == "long"]  # new each epoch
    assert order == balanced_frames(samples, 4, 0)  # seeded: a resumed run draws the same
    draws = plan_epoch(samples, 4, 0, "mil", False, {}, True, 0.0, True)
    assert Counter(samples[d.index].group for d in draws if d.mode != "frame") == per_road
    # without groups (the demo, web photos) balancing changes nothing
    web = samples[-50:]
    assert plan_epoch(web, 1, 0, "mil", False, {}, True, 0.0, True) == plan_epoch(web, 1, 0, "mil", False, {})


def test_paste_without_any_boxed_pothole_says_it_pastes_nothing(shared_folder, tmp_path, caplog):
    train(_config(shared_folder, tmp_path / "run", epochs=1, paste=0.5))  # web-style folder: no boxes.csv
    assert "--paste 0.5 pastes nothing" in caplog.text and (tmp_path / "run" / "model.pt").is_file()


def test_tile_draws_keep_the_box_in_view_and_clear_tiles_off_every_box():
    from pothole_edge import spec as specs
    from pothole_edge.train.data import Sample
    from pothole_edge.train.tiles import Draw, footprint, plan_epoch

    prep = specs.preprocess(224, 256, "bicubic", [0.5] * 3, [0.5] * 3)
    spec = specs.describe(
        ["normal", "pothole"], 1, 0.5, "t", prep, specs.view(grids=[[1, 1], [3, 2]], overlap=0.25), "x"
    )
    boxes = ((300, 200, 345, 224), (600, 400, 640, 430))
    sample = Sample(0, "p.jpg", 1, "h", "train", "", boxes)
    edge = (1 - 224 / 256) / 2
    for seed in range(200):
        for mode in ("box", "frame"):  # a wide frame tile labelled pothole shows one too
            (x, y, side), label = footprint(Draw(0, mode, 1, seed), sample, 800, 500, spec)
            m = edge * side
            assert label == 1 and 0 <= x and x + side <= 800 + 1e-6 and y + side <= 500 + 1e-6
            assert mode == "box" or side >= 0.8 * 500 - 1e-6
            assert any(
                x + m - 1 <= b[0] and b[2] <= x + side - m + 1 and y + m - 1 <= b[1] and b[3] <= y + side - m + 1
                for b in boxes
            )
        (x, y, side), label = footprint(Draw(0, "clear", 0, seed), sample, 800, 500, spec)
        if label == 0:
            assert not any(x < b[2] and b[0] < x + side and y < b[3] and b[1] < y + side for b in boxes)
    samples = [sample, Sample(0, "n.jpg", 0, "g", "train", "", ()), Sample(1, "w.jpg", 1, "k", "train", "", None)]
    first = plan_epoch(samples, 3, 0, "boxes", False, {}, with_frame=False)
    assert first == plan_epoch(
        samples, 3, 0, "boxes", False, {}, with_frame=False
    )  # seeded: a resumed run draws the same
    assert sorted(d.mode for d in first) == ["box", "clear", "mil", "random"]
    assert sorted(d.mode for d in plan_epoch(samples, 3, 0, "mil", False, {}, with_frame=False)) == [
        "mil",
        "mil",
        "random",
    ]
    # with a whole-frame level in the view, about half the frames also teach that tile their own label
    many = [Sample(0, f"{i}.jpg", i % 2, f"h{i}", "train", "", ()) for i in range(400)]
    frames = [d for d in plan_epoch(many, 0, 0, "boxes", False, {}) if d.mode == "frame"]
    assert 150 < len(frames) < 250 and all(d.label == many[d.index].label for d in frames)


def _rank_with_a_lost_batch(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from pothole_edge.train.distributed import Context, barrier, teardown
    from pothole_edge.train.engine import train_one_epoch

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
    batch = (torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]), None)
    # rank 1 lost its second batch: every one of its files became unreadable after the scan
    loader = [(batch, 0), (None if rank == 1 else batch, 4 if rank == 1 else 0), (batch, 0)]
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    ctx = Context(rank, 2, torch.device("cpu"))
    loss, _, skipped = train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, ctx, None, False, "t")
    weights = model.module[1].weight.detach().clone()
    torch.save({"loss": loss, "skipped": skipped, "weights": weights}, f"{out}/rank{rank}.pt")
    del model, optimizer
    barrier(ctx)
    teardown(ctx)
    # Gloo threads that outlive the interpreter abort its finalisation now and then (pytorch/pytorch#179291,
    # unfixed): the behaviour under test is over, so the rank leaves without it. An exception above still exits 1.
    os._exit(0)


def test_a_rank_without_a_batch_never_leaves_the_others_waiting(tmp_path):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    init = f"file://{tmp_path / 'store'}"
    ranks = [context.Process(target=_rank_with_a_lost_batch, args=(r, init, str(tmp_path))) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(120)
    hung = [p for p in ranks if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "DDP hung: a rank skipped its step alone"
    assert [p.exitcode for p in ranks] == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["weights"], r1["weights"])  # the same steps on both ranks
    assert (r0["skipped"], r1["skipped"]) == (4, 4)  # the step was skipped by both, and counted

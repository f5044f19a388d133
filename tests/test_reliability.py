"""The faults and hostile inputs a dashcam and a training box meet: odd file names, a full disk, untrusted
pixels, damaged checkpoints, files that change under a run. Each case is one the tool once failed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.runner import run
from pothole_edge.errors import DiskFull, UsageError
from pothole_edge.train import checkpoint
from pothole_edge.train.config import TrainConfig
from pothole_edge.train.run import train
from tests.conftest import TINY, crash_in_epoch, make_folder, photo
from tests.test_cli import BIN, assert_usage_error
from tests.test_edge import BRIGHT, DARK, brightness_meta, brightness_model, edge_run, lines, write_video

ODD = os.fsdecode(b"caf\xe9-\xff")  # Latin-1 bytes from another system: not UTF-8


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return brightness_model(tmp_path_factory.mktemp("rel-model") / "model.onnx")


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at `path` where the test may mount one; None where it may not."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
            ).returncode
            == 0
        )
    except OSError:  # no mount(8) at all
        mounted = False
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# 1. names that are not UTF-8


def test_odd_file_names_neither_crash_nor_lose_their_bytes(model, tmp_path):
    folder = tmp_path / ODD
    folder.mkdir()
    cv2.imwrite(str(tmp_path / "bright.png"), np.full((40, 50, 3), BRIGHT, np.uint8))
    shutil.copy(tmp_path / "bright.png", folder / f"{ODD}.png")
    result = edge_run("--model", str(model), "--images", str(folder), "--out", str(tmp_path / "images"))
    assert result.returncode == 0, result.stderr
    (row,) = lines(tmp_path / "images" / "predictions.jsonl")
    assert row["label"] == "pothole" and "\\xff" in row["file"]
    video = write_video(tmp_path / "plain.mp4")
    shutil.copy(video, folder / f"{ODD}.mp4")
    result = edge_run(
        "--model",
        str(model),
        "--video",
        str(folder / f"{ODD}.mp4"),
        "--out",
        str(folder / "out"),
        "--save-video",
        "--clips",
        "1,1",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert summary["events"] == 2 and summary["storage"]["clips"] == 2
    assert len(list((folder / "out" / "clips").glob("event_*.avi"))) == 2
    from pothole_edge.edge import photoclip as clip

    path = clip.render([(folder / f"{ODD}.png", "pothole")], str(folder / f"{ODD}.mp4.clip.mp4"), 2, (64, 64))
    assert path.is_file() and ODD in clip.labels_path(path).read_text(encoding="utf-8", errors="surrogateescape")
    shutil.copy(model, folder / "model.onnx")
    result = edge_run(
        "--model", str(folder / "model.onnx"), "--images", str(folder), "--out", str(tmp_path / "odd-model")
    )
    assert result.returncode == 0, result.stderr


def test_training_on_odd_names_keeps_them_in_its_manifest(tmp_path):
    root = make_folder(tmp_path / "d", per_class=6)
    os.rename(root / "pothole" / "000.jpg", root / "pothole" / f"{ODD}.jpg")
    out = tmp_path / "run"
    train(TrainConfig(data=(str(root),), out=str(out), **(TINY | {"epochs": 1})))
    manifest = (out / "split.csv").read_bytes()
    assert os.fsencode(f"pothole/{ODD}.jpg") in manifest
    from pothole_edge.export.config import ExportConfig
    from pothole_edge.export.run import export

    export(ExportConfig(str(out), data=str(root), speed_runs=2))
    assert json.loads((out / "parity.json").read_text())["passed"]


# 2. a full disk


def test_a_full_disk_stops_snapshots_first_then_the_run_with_every_line_whole(model, tmp_path, monkeypatch):
    long = write_video(tmp_path / "long.mp4", [(DARK, 30), (BRIGHT, 30)] * 20)
    with small_disk(tmp_path / "disk", "64k") as disk:
        if disk is None:  # no tmpfs here: the kernel's answer is injected instead
            disk = tmp_path / "disk"
            _fill_after(monkeypatch, 400)
        with pytest.raises(DiskFull, match="no space left on the device writing .*predictions.jsonl"):
            run(EdgeConfig(model=str(model), video=str(long), out=str(disk / "run"), threads=1))
        rows = lines(disk / "run" / "predictions.jsonl")  # every line parses: no torn tail
        assert rows and [r["frame"] for r in rows] == list(range(len(rows)))
        assert (disk / "run" / "predictions.jsonl").read_bytes().endswith(b"\n")
        summary_path = disk / "run" / "summary.json"  # written as the run starts, not only after 5 s
        assert json.loads(summary_path.read_text())["status"] in ("running", "disk full")


def _fill_after(monkeypatch, writes: int) -> None:
    """The kernel's ENOSPC, injected where no tmpfs can be mounted: after `writes` lines, half a line fits."""
    from pothole_edge.edge import record

    real_write, calls = os.write, []

    def filling(fd, data):
        calls.append(1)
        return real_write(fd, data if len(calls) <= writes else data[: len(data) // 2])

    monkeypatch.setattr(record.os, "write", filling)


def test_edge_run_on_a_full_disk_says_so_in_one_line(model, tmp_path, monkeypatch, capsys):
    long = write_video(tmp_path / "long.mp4", [(DARK, 30), (BRIGHT, 30)] * 20)
    with small_disk(tmp_path / "disk", "64k") as disk:
        args = ["--model", str(model), "--video", str(long), "--no-snapshots"]
        if disk is not None:
            result = edge_run(*args, "--out", str(disk / "run"))
            code, err, out = result.returncode, result.stderr, disk / "run"
        else:
            from pothole_edge.edge.cli import main

            _fill_after(monkeypatch, 300)
            out = tmp_path / "disk" / "run"
            with pytest.raises(SystemExit) as exit_:
                main([*args, "--out", str(out)])
            code, err = exit_.value.code, capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on the device" in errors[0]
        assert lines(out / "predictions.jsonl")


def test_a_full_disk_during_training_keeps_the_last_epoch(shared_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, saves = checkpoint.save, []

    def full_on_the_second_epoch(obj, path, keep_previous=False):
        saves.append(path)
        if Path(path).name == "last.pt" and len([p for p in saves if Path(p).name == "last.pt"]) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, keep_previous)

    monkeypatch.setattr(checkpoint, "save", full_on_the_second_epoch)
    with pytest.raises(DiskFull, match=f"continue with pt-train --resume {out}"):
        train(TrainConfig(data=(str(shared_folder),), out=str(out), **(TINY | {"epochs": 3, "patience": 10})))
    state, used = checkpoint.read_state(out / checkpoint.LAST)
    assert state["epoch"] == 0  # the first epoch, intact
    monkeypatch.setattr(checkpoint, "save", real_save)
    train(None, resume=str(out))
    assert (out / "model.pt").is_file()


# 3 and 4. untrusted pixels at the edge, and photos taken upright


def test_the_edge_refuses_bombs_and_truncated_files_like_training_does(model, tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("L", (400, 400)).save(folder / "big.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "full.jpg")
    data = (folder / "full.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "clip.gif").write_bytes(b"GIF89a not really")
    from pothole_edge import images

    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 300)
    result = run(EdgeConfig(model=str(model), images=str(folder), out=str(tmp_path / "run")))
    assert result["frames"]["unreadable"] == 3 and result["frames"]["processed"] == 1


def test_exif_orientation_gives_the_edge_the_same_pixels_as_training(tmp_path):
    from pothole_edge import preprocess
    from pothole_edge.edge.sources import ImageFolder

    exif = Image.Exif()
    exif[0x0112] = 6
    picture = photo(True, 3, 96).crop((0, 0, 96, 60))
    picture.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    spec = brightness_meta(grids=[[1, 1], [2, 2]])
    (frame,) = list(ImageFolder(str(tmp_path)).frames(type("S", (), {"is_set": lambda self: False})()))
    assert frame.image.shape[:2] == (96, 60)  # upright, as the photo is shown
    from pothole_edge.train.loader import FrameDataset

    training = FrameDataset([tmp_path / "rotated.jpg"], [1], spec)[0][0].numpy()
    assert np.array_equal(preprocess.tiles(frame.image, spec)[0], training)


# 5. metadata that parses but lies


def test_lying_metadata_is_refused_before_anything_is_written(tmp_path, tmp_path_factory):
    video = write_video(tmp_path / "v.mp4", [(DARK, 5)])
    for i, change in enumerate(
        [{"positive_index": 5}, {"threshold": "high"}, {"class_names": "np"}, {"schema_version": True}]
    ):
        bad = brightness_model(tmp_path / f"bad{i}.onnx", meta=brightness_meta() | change)
        assert_usage_error(
            edge_run("--model", str(bad), "--video", str(video), "--out", str(tmp_path / "o")),
            "invalid pothole-edge metadata",
        )
        assert not (tmp_path / "o").exists()


# 6. damaged checkpoints


def test_damaged_checkpoints_are_named_and_resume_falls_back_a_step(shared_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    crash_in_epoch(
        monkeypatch, TrainConfig(data=(str(shared_folder),), out=str(out), **(TINY | {"epochs": 4, "patience": 10})), 3
    )
    last = out / checkpoint.LAST
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    last.write_bytes(bytes(data))
    state, used = checkpoint.read_state(last)
    assert used.name == "last.previous.pt" and state["epoch"] == 0
    for content in (b"", b"\x00" * 100, os.urandom(5000), bytes(data[: len(data) // 3])):
        last.write_bytes(content)
        (out / "checkpoints" / "last.previous.pt").unlink(missing_ok=True)
        result = subprocess.run(
            [str(BIN / "pt-train"), "--resume", str(out)], capture_output=True, text=True, timeout=300
        )
        assert_usage_error(result, "last.pt is damaged", "no earlier training state")
        assert "weights_only=False" not in result.stderr


def test_a_pickle_with_code_is_refused_without_advice_to_unpickle_it(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"state_dict": Evil()}, tmp_path / "model.pt")
    result = subprocess.run(
        [str(BIN / "pt-eval"), str(tmp_path / "model.pt"), "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert_usage_error(result, "not a readable checkpoint")
    assert "weights_only" not in result.stderr and not (tmp_path / "pwned").exists()


# 8. resources


def test_fifos_and_devices_in_data_folders_are_skipped_not_waited_on(model, tmp_path):
    root = make_folder(tmp_path / "d", per_class=3)
    os.mkfifo(root / "normal" / "pipe.jpg")
    (root / "pothole" / "zero.jpg").symlink_to("/dev/zero")
    result = subprocess.run(
        [str(BIN / "pt-eval"), str(model), "--data", str(root), "--out", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["skipped"] == 2
    folder = tmp_path / "frames"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    cv2.imwrite(str(folder / "ok.png"), np.full((20, 20, 3), DARK, np.uint8))
    summary = run(EdgeConfig(model=str(model), images=str(folder), out=str(tmp_path / "run")))
    assert summary["frames"]["unreadable"] == 1 and summary["frames"]["processed"] == 1


# 9. files that change under a run


def test_a_file_deleted_after_the_scan_is_skipped_on_resume(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=10)
    out = tmp_path / "run"
    crash_in_epoch(
        monkeypatch, TrainConfig(data=(str(root),), out=str(out), **(TINY | {"epochs": 3, "patience": 10})), 2
    )
    gone = next(r.split(",")[1] for r in (out / "split.csv").read_text().splitlines()[1:] if ",train," in r)
    (root / gone).unlink()
    train(None, resume=str(out))
    assert (out / "model.pt").is_file()


def test_a_garbage_manifest_is_one_line(tmp_path):
    root = make_folder(tmp_path / "d", per_class=4)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"data": [str(root)]} | TINY))
    (out / "data.json").write_text(json.dumps({"roots": [str(root)], "class_names": ["normal", "pothole"]}))
    (out / "split.csv").write_text("these,are\nnot,rows\n")
    assert_usage_error(
        subprocess.run([str(BIN / "pt-train"), "--resume", str(out)], capture_output=True, text=True),
        "split.csv is damaged",
    )


# 10. messages


def test_interrupting_training_names_the_run_to_resume(shared_folder, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            str(BIN / "pt-train"),
            "--data",
            str(shared_folder),
            "--out",
            str(out),
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()],
            "--epochs",
            "50",
        ],
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out / "history.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"continue with pt-train --resume {out}" in err and "RUN_DIR" not in err


def test_a_video_that_stops_decoding_early_says_so(model, tmp_path):
    video = tmp_path / "v.avi"  # MJPG in AVI: its header counts the frames, and a cut file still plays
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(200):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    summary = run(EdgeConfig(model=str(model), video=str(cut), out=str(tmp_path / "run")))
    assert 0 < summary["frames"]["read"] < 150 and summary["status"] == "finished"
    assert (
        "ended at frame" in summary["source"]["ended_early"]
        and "of the 200 its header announces" in summary["source"]["ended_early"]
    )


# 11. files and races


def test_clip_labels_survive_commas_in_names(tmp_path):
    from pothole_edge.edge import photoclip as clip

    photos = tmp_path / "photos" / "pothole"
    photos.mkdir(parents=True)
    cv2.imwrite(str(photos / "a, b.jpg"), np.full((40, 40, 3), BRIGHT, np.uint8))
    path = clip.render(clip.labelled_photos(str(tmp_path / "photos")), str(tmp_path / "c.mp4"), 2, (32, 32))
    import csv

    rows = list(csv.DictReader(open(clip.labels_path(path), newline="")))
    assert rows[0]["file"].endswith("a, b.jpg") and rows[0]["label"] == "pothole"


def test_an_unreadable_class_folder_is_an_error_not_a_silent_drop(tmp_path, monkeypatch):
    from pothole_edge.train import data

    root = make_folder(tmp_path / "d", per_class=2)
    real = os.access
    monkeypatch.setattr(data.os, "access", lambda p, mode: False if str(p).endswith("pothole") else real(p, mode))
    with pytest.raises(UsageError, match="pothole is not readable"):
        data.load_for_evaluation(root, ("normal", "pothole"))

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pothole_edge.errors import UsageError
from pothole_edge.train import data
from tests.conftest import make_folder


def _load(*roots, **kw):
    args = dict(positive=None, val_fraction=0.2, test_fraction=0.2, seed=0, workers=2) | kw
    return data.load_for_training(list(roots), **args)


def test_class_folders_and_positive_alias(tmp_path):
    folder = _load(make_folder(tmp_path, names=("normal", "potholes")))
    assert folder.class_names == ("normal", "potholes")
    assert Counter(s.label for s in folder.samples) == {0: 10, 1: 10}


def test_positive_flag_names_other_folders(tmp_path):
    folder = _load(make_folder(tmp_path, names=("smooth", "damaged")), positive="damaged")
    assert folder.class_names == ("smooth", "damaged")


def test_presplit_layout_is_kept(tmp_path):
    for i, split in enumerate(data.SPLITS):
        make_folder(tmp_path / split, per_class=3, seed=i)
    folder = _load(tmp_path)
    assert {s.split for s in folder.samples} == set(data.SPLITS)
    assert all(s.path.startswith(s.split + "/") for s in folder.samples)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no class folders"),
        (
            lambda p: make_folder(p, names=("normal", "pothole")) and shutil.rmtree(p / "pothole"),
            "only one class folder",
        ),
        (lambda p: [(p / n).mkdir(parents=True) for n in ("normal", "pothole")], "no readable images"),
        (
            lambda p: make_folder(p, 2) and shutil.rmtree(p / "pothole") or (p / "pothole").mkdir(),
            "pothole has no readable images",
        ),
        (lambda p: make_folder(p, 2) and (p / "extra").mkdir(), "cannot tell the classes apart"),
        (lambda p: make_folder(p, 2, names=("a", "b")), "cannot tell the classes apart"),
        (lambda p: make_folder(p / "train", 2) and make_folder(p / "test", 2), "lacks val/"),
    ],
)
def test_bad_folders_are_usage_errors(tmp_path, setup, message):
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(UsageError, match=message):
        _load(root)


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path)
    (root / "normal" / "empty.jpg").write_bytes(b"")
    (root / "pothole" / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = (root / "pothole" / "000.jpg").read_bytes()
    (root / "pothole" / "half.jpg").write_bytes(good[: len(good) // 2])
    folder = _load(root)
    assert sorted(str(Path(p).relative_to(root)) for p, _ in folder.skipped) == [
        "normal/empty.jpg",
        "pothole/half.jpg",
        "pothole/junk.jpg",
    ]
    assert len(folder.samples) == 20
    assert folder.summary()["skipped"] == 3


def _splits(folder):
    return {s.path: s.split for s in folder.samples}


def test_split_is_seeded_stratified_and_location_independent(tmp_path):
    root = make_folder(tmp_path / "a", per_class=20)
    first = _load(root)
    shutil.copytree(root, tmp_path / "b")
    assert _splits(_load(tmp_path / "b")) == _splits(first)
    assert _splits(_load(root, seed=1)) != _splits(first)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        assert Counter(s.label for s in first.split(split)) == {0: n, 1: n}


def test_duplicates_share_a_split(tmp_path):
    root = make_folder(tmp_path, per_class=20)
    (root / "normal" / "sub").mkdir()
    for i in range(6):
        shutil.copy(root / "pothole" / f"{i:03d}.jpg", root / "pothole" / f"copy{i}.jpg")
        shutil.copy(root / "normal" / f"{i:03d}.jpg", root / "normal" / "sub" / f"copy{i}.jpg")
    for seed in range(5):
        folder = _load(root, seed=seed)
        by_hash = {}
        for s in folder.samples:
            by_hash.setdefault(s.sha256, set()).add(s.split)
        assert all(len(v) == 1 for v in by_hash.values())
        assert folder.summary()["duplicate_files"] == 12


def test_manifest_round_trip(tmp_path):
    folder = _load(make_folder(tmp_path / "d"))
    text = data.manifest_text(folder.samples, folder.class_names)
    (tmp_path / "split.csv").write_text(text)
    assert data.read_manifest(tmp_path / "split.csv", folder.class_names) == sorted(
        folder.samples, key=lambda s: (s.root, s.path)
    )
    assert len(data.manifest_hash(text)) == 64


def test_evaluation_accepts_one_class_and_rejects_unknown_folders(tmp_path):
    root = tmp_path / "only_normal"
    make_folder(root, 3)
    shutil.rmtree(root / "pothole")
    folder = data.load_for_evaluation(root, ("normal", "pothole"))
    assert {s.label for s in folder.samples} == {0}
    (root / "cats").mkdir()
    with pytest.raises(UsageError, match="must be named normal/ or pothole/"):
        data.load_for_evaluation(root, ("normal", "pothole"))


def _frames_csv(root, groups):
    with open(root / "frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "segment"])
        for path, group in groups.items():
            w.writerow([path, path.split("/")[0], group])


def test_frames_of_one_segment_share_a_split(tmp_path):
    root = make_folder(tmp_path / "dash", per_class=24)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    # 12 segments of 4 frames, each segment holding both classes, as a survey drive does
    groups = {f: f"seg{i % 12}" for i, f in enumerate(files)}
    _frames_csv(root, groups)
    for seed in range(4):
        folder = _load(root, seed=seed)
        by_group = {}
        for s in folder.samples:
            assert s.group == groups[s.path]
            by_group.setdefault(s.group, set()).add(s.split)
        assert all(len(v) == 1 for v in by_group.values())  # a segment never straddles splits
        for split in ("val", "test"):
            assert {s.label for s in folder.split(split)} == {0, 1}
    # without the CSV the same frames are split one by one, stratified
    (root / "frames.csv").unlink()
    assert any(len(v) > 1 for v in _groups_of(_load(root), groups).values())


def _groups_of(folder, groups):
    out = {}
    for s in folder.samples:
        out.setdefault(groups[s.path], set()).add(s.split)
    return out


def test_a_frames_csv_without_the_group_column_says_which_to_pass(tmp_path):
    root = make_folder(tmp_path / "d", per_class=4)
    (root / "frames.csv").write_text("file,road\nnormal/000.jpg,a\n")
    with pytest.raises(UsageError, match="--group-column"):
        _load(root)
    assert {s.group for s in _load(root, group_column="road").samples} == {"a", ""}


def test_boxes_and_several_roots(tmp_path):
    web = make_folder(tmp_path / "web", per_class=6)
    dash = make_folder(tmp_path / "dash", per_class=6, seed=3)
    (dash / "boxes.csv").write_text(
        "file,x0,y0,x1,y1\npothole/000.jpg,1,2,10,12\npothole/000.jpg,20,20,30,31\npothole/001.jpg,5,5,4,9\n"
    )
    folder = _load(web, dash)
    assert [r.name for r in folder.roots] == ["web", "dash"]
    by = {(folder.roots[s.root].name, s.path): s for s in folder.samples}
    assert by[("dash", "pothole/000.jpg")].boxes == ((1, 2, 10, 12), (20, 20, 30, 31))
    assert by[("dash", "pothole/001.jpg")].boxes == ()  # a bad row is skipped: a known frame without a box
    assert by[("dash", "normal/000.jpg")].boxes == () and by[("web", "pothole/000.jpg")].boxes is None
    assert folder.path(by[("dash", "pothole/000.jpg")]) == dash / "pothole" / "000.jpg"
    for i in (0, 1):  # each root is split on its own
        assert {s.split for s in folder.samples if s.root == i} == {"train", "val", "test"}
    text = data.manifest_text(folder.samples, folder.class_names)
    (tmp_path / "split.csv").write_text(text)
    assert data.read_manifest(tmp_path / "split.csv", folder.class_names) == sorted(
        folder.samples, key=lambda s: (s.root, s.path)
    )


def test_damaged_manifest_is_a_usage_error(tmp_path):
    (tmp_path / "split.csv").write_text("garbage\n1,2\n")
    with pytest.raises(UsageError, match="damaged"):
        data.read_manifest(tmp_path / "split.csv", ("normal", "pothole"))

import shutil
from collections import Counter

import pytest

from tests.conftest import make_folder
from train import data
from train.errors import UsageError


def _load(root, **kw):
    args = dict(positive=None, val_fraction=0.2, test_fraction=0.2, seed=0, workers=2) | kw
    return data.load_for_training(root, **args)


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
        (lambda p: make_folder(p, names=("normal", "pothole")) and shutil.rmtree(p / "pothole"), "only one class folder"),
        (lambda p: [(p / n).mkdir(parents=True) for n in ("normal", "pothole")], "no readable images"),
        (lambda p: make_folder(p, 2) and shutil.rmtree(p / "pothole") or (p / "pothole").mkdir(), "pothole has no readable images"),
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
    assert sorted(p for p, _ in folder.skipped) == ["normal/empty.jpg", "pothole/half.jpg", "pothole/junk.jpg"]
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
    assert data.read_manifest(tmp_path / "split.csv", folder.class_names) == sorted(folder.samples, key=lambda s: s.path)
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

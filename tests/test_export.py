"""Export: round trip on a tiny model, torch-free metadata, the parity gate, variants, bad input."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from pothole_edge import metadata
from pothole_edge.errors import UsageError
from pothole_edge.export import graph
from pothole_edge.export.config import ExportConfig
from pothole_edge.export.run import GateFailed, export
from pothole_edge.train import checkpoint
from pothole_edge.train.config import EvalConfig
from pothole_edge.train.evaluate import evaluate
from tests.test_cli import assert_usage_error, run


@pytest.fixture
def run_dir(trained_run):
    return trained_run


def test_round_trip(run_dir, tmp_path):
    result = export(ExportConfig(str(run_dir), out=str(tmp_path), speed_runs=3))
    path = tmp_path / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["reports"][0]["label_agreement"] == 1.0
    assert report["reports"][0]["max_abs_prob_diff"] <= 1e-4
    assert report == json.loads(json.dumps(result))
    assert json.loads((tmp_path / "export_config.json").read_text())["opset"] == 17

    from pothole_edge.session import open_session

    session = open_session(path).session
    for batch in (1, 3):  # dynamic batch axis
        probs = session.run(None, {"image": np.zeros((batch, 32, 32, 3), np.uint8)})[0]
        assert probs.shape == (batch, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    meta = metadata.read(path)
    spec = torch.load(run_dir / "model.pt", weights_only=True)["spec"]
    for key in ("class_names", "threshold", "threshold_method", "preprocess", "view", "arch", "positive_index"):
        assert meta[key] == spec[key], key  # one value, the checkpoint's, carried over whole
    assert meta["input"]["layout"] == "NHWC" and meta["opset"] == 17 and len(meta["checkpoint_sha256"]) == 64
    assert report["tiles_per_frame"] == 5 and report["reports"][0]["tiles"] == 5 * report["frames"]


def test_a_max_pooled_network_is_rebuilt_exported_and_proved_with_its_own_pooling(shared_folder, tmp_path):
    from pothole_edge.train.config import TrainConfig
    from pothole_edge.train.models import create_model, normalized
    from pothole_edge.train.run import train
    from tests.conftest import TINY

    run = tmp_path / "run"
    train(
        TrainConfig(
            data=(str(shared_folder),), out=str(run), **(TINY | {"epochs": 1, "global_pool": "max", "img_size": 64})
        )
    )
    ckpt = checkpoint.load(run / "model.pt")
    assert ckpt["spec"]["global_pool"] == "max"
    rebuilt = checkpoint.model_from_checkpoint(ckpt)
    image = torch.randint(0, 256, (4, 96, 96, 3), dtype=torch.uint8)  # a 3x3 feature map: the pools differ
    averaged = normalized(create_model("efficientnet_lite0"), ckpt["spec"]["preprocess"]).eval()
    averaged.model.load_state_dict(ckpt["state_dict"])  # the same weights fit either pooling: only the spec tells
    with torch.no_grad():
        x = (image.permute(0, 3, 1, 2).float() - rebuilt.mean) / rebuilt.std
        by_hand = rebuilt.model.classifier(rebuilt.model.forward_features(x).amax((2, 3)))
        assert torch.allclose(rebuilt(image), by_hand, atol=1e-5)
        assert not torch.allclose(averaged(image), by_hand, atol=1e-3)
    result = export(ExportConfig(str(run), out=str(tmp_path / "onnx"), speed_runs=3))
    assert result["passed"] and metadata.read(tmp_path / "onnx" / "model.onnx")["global_pool"] == "max"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    # a 64 px tile leaves a 2x2 map, so the pool is not folded away; EfficientNet has no other max pooling
    assert ops & {"MaxPool", "GlobalMaxPool", "ReduceMax"}


@pytest.mark.parametrize("block_onnx", [False, True])
def test_metadata_reads_without_torch(run_dir, tmp_path, block_onnx):
    export(ExportConfig(str(run_dir), out=str(tmp_path), speed_runs=3))
    code = (
        "import sys, json\n"
        + ("sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n" if block_onnx else "")
        + "from pothole_edge import metadata\n"
        f"meta = metadata.read({str(tmp_path / 'model.onnx')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps(meta['class_names']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["normal", "pothole"]


def _with_int8(run_dir, out, **kw) -> ExportConfig:
    """A 3-epoch toy model on a few test images: the accuracy gates are opened, the mechanics are what is tested."""
    gates = dict(int8_max_accuracy_drop=1.0, int8_max_auc_drop=1.0, speed_runs=3, calibration_images=8)
    return ExportConfig(str(run_dir), out=str(out), int8=True, **(gates | kw))


def test_gate_fails_on_a_perturbed_model_and_keeps_the_previous_export(run_dir, tmp_path, monkeypatch):
    export(_with_int8(run_dir, tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real = graph.to_onnx

    def perturbed(module, path, opset, crop):
        real(module, path, opset, crop)
        model = onnx.load(str(path))
        for init in model.graph.initializer:  # nudge every weight by 1%
            arr = onnx.numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 1:
                init.CopyFrom(onnx.numpy_helper.from_array(arr * 1.01, init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(graph, "to_onnx", perturbed)
    with pytest.raises(GateFailed, match="pytorch vs ort fp32.*unchanged"):
        export(ExportConfig(str(run_dir), out=str(tmp_path), simplify=False, opset=16))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # model.onnx, model.int8.onnx, parity.json and export_config.json as they were
    assert sorted(p.name for p in (tmp_path / "export.failed").iterdir()) == [
        "export_config.json",
        "model.onnx.failed",
        "parity.json",
    ]
    failed = json.loads((tmp_path / "export.failed" / "parity.json").read_text())
    assert not failed["passed"] and failed["reports"][0]["failures"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # no staging left behind


def test_a_new_export_replaces_the_whole_set(run_dir, tmp_path):
    export(_with_int8(run_dir, tmp_path))
    assert (tmp_path / "model.int8.onnx").is_file()
    export(ExportConfig(str(run_dir), out=str(tmp_path), speed_runs=3))
    assert not (tmp_path / "model.int8.onnx").exists()  # parity.json no longer vouches for it
    assert [r["name"] for r in json.loads((tmp_path / "parity.json").read_text())["reports"]] == ["pytorch vs ort fp32"]


def test_int8_and_fp16_variants_carry_their_own_proof_on_every_provider_made_for_them(run_dir, tmp_path, monkeypatch):
    import onnxruntime as ort

    from pothole_edge.export import run as export_run

    # a GPU box, as far as the export can tell: each GPU gate runs its model (on this machine's CPU) and says where
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    real, opened = export_run._onnx_tiles, []

    def on(path, tiles, batch_size, device="cpu"):
        opened.append((path.name, device))
        return real(path, tiles, batch_size)

    monkeypatch.setattr(export_run, "_onnx_tiles", on)
    result = export(_with_int8(run_dir, tmp_path, int8_trt=True, fp16=True, fp16_prob_tol=1.0))
    names = [r["name"] for r in result["reports"]]
    assert names == [
        "pytorch vs ort fp32",
        "pytorch vs ort int8",
        "pytorch vs ort int8-trt",
        "pytorch vs ort fp16 (cpu)",
        "pytorch vs ort fp32 (tensorrt)",
        "pytorch vs ort fp32 (cuda)",
        "pytorch vs ort int8 (cuda)",  # the CPU's INT8 is never offered to TensorRT
        "pytorch vs ort int8-trt (tensorrt)",
        "pytorch vs ort int8-trt (cuda)",
        "pytorch vs ort fp16 (tensorrt)",
        "pytorch vs ort fp16 (cuda)",
    ]
    assert [r["device"] for r in result["reports"]] == ["cpu"] * 4 + [n.split("(")[1][:-1] for n in names[4:]]
    assert ("model.int8.onnx", "tensorrt") not in opened and ("model.int8-trt.onnx", "tensorrt") in opened
    assert json.loads((tmp_path / "parity.json").read_text())["reports"][-1]["device"] == "cuda"
    int8 = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    meta = metadata.read(tmp_path / "model.int8.onnx")
    from pothole_edge.system import int8_reduce_range_default

    assert meta["variant"] == "int8" and meta["int8"]["reduce_range"] == int8_reduce_range_default()[0]
    # each reduced-precision model gets its own operating point, chosen by the same rule on validation
    assert "chosen again for this int8 model" in meta["threshold_method"]
    assert result["reports"][1]["candidate_threshold"] == meta["threshold"]
    assert metadata.read(tmp_path / "model.onnx")["threshold"] == result["reports"][0]["candidate_threshold"]
    assert (
        json.loads((tmp_path / "export_config.json").read_text())["int8_reduce_range"] == int8_reduce_range_default()[0]
    )
    trt = onnx.load(str(tmp_path / "model.int8-trt.onnx"))
    zero_points = [onnx.numpy_helper.to_array(i) for i in trt.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(
        z.dtype == np.int8 and not z.any() for z in zero_points
    )  # signed, symmetric: what TensorRT takes
    assert not [i.name for i in trt.graph.initializer if i.data_type == onnx.TensorProto.INT32]  # biases stay float
    assert metadata.read(tmp_path / "model.int8-trt.onnx")["variant"] == "int8-trt"
    fp16 = onnx.load(str(tmp_path / "model.fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result["cpu_frame_latency"]["int8_speedup"] > 0 and result["cpu_frame_latency"]["tiles_per_frame"] == 5


def test_pt_eval_on_onnx_matches_the_checkpoint(run_dir, shared_folder, tmp_path):
    export(ExportConfig(str(run_dir), out=str(tmp_path / "x"), speed_runs=3))
    a = evaluate(
        EvalConfig(model=str(run_dir / "model.pt"), data=str(shared_folder), out=str(tmp_path / "pt"), workers=0)
    )
    b = evaluate(
        EvalConfig(
            model=str(tmp_path / "x" / "model.onnx"), data=str(shared_folder), out=str(tmp_path / "onnx"), workers=0
        )
    )
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["n"] == b["n"] == 28
    pa = (tmp_path / "pt" / "predictions.csv").read_text().splitlines()
    pb = (tmp_path / "onnx" / "predictions.csv").read_text().splitlines()
    assert [r.split(",")[4:] for r in pa] == [r.split(",")[4:] for r in pb]  # the same hottest tiles
    for k in ("accuracy", "roc_auc", "average_precision"):
        assert a[k] == pytest.approx(b[k], abs=1e-4)
    assert (tmp_path / "onnx" / "roc_curve.png").is_file()


def test_bad_inputs(run_dir, tmp_path):
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("hello")
    with pytest.raises(UsageError, match="not a readable checkpoint"):
        export(ExportConfig(str(not_ckpt)))
    ckpt = torch.load(run_dir / "model.pt", weights_only=True)
    (tmp_path / "odd").mkdir()
    checkpoint.save(
        {k: v for k, v in ckpt.items() if k not in ("format", "version")} | {"spec": ckpt["spec"] | {"arch": "vgg16"}},
        tmp_path / "odd" / "model.pt",
    )
    with pytest.raises(UsageError, match="unknown arch 'vgg16'"):
        export(ExportConfig(str(tmp_path / "odd")))
    for opset in (12, 99):
        with pytest.raises(UsageError, match=f"--opset {opset} is not supported; choose 13 to"):
            export(ExportConfig(str(run_dir), opset=opset, out=str(tmp_path / "o")))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write"):
        export(ExportConfig(str(run_dir), out=str(blocker / "sub")))


def test_cli_exit_codes(run_dir, tmp_path):
    assert_usage_error(run("pt-export", str(run_dir), "--opset", "12", "--out", str(tmp_path)), "--opset 12")
    bare = tmp_path / "bare.onnx"
    onnx.save(onnx.load(str(_exported(run_dir, tmp_path))), str(bare))
    model = onnx.load(str(bare))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    assert_usage_error(
        run("pt-eval", str(bare), "--data", str(tmp_path), "--out", str(tmp_path / "e")),
        "no pothole-edge metadata",
        "pt-export",
    )


def _exported(run_dir, tmp_path):
    export(ExportConfig(str(run_dir), out=str(tmp_path / "ok"), speed_runs=3))
    return tmp_path / "ok" / "model.onnx"


def test_edge_imports_without_torch():
    code = (
        "import sys; import pothole_edge.edge.runner, pothole_edge.metadata, pothole_edge.preprocess\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

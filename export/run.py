"""`export()`: the library function behind pt-export."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from export import metadata, parity
from export.config import ExportConfig
from train import __version__, checkpoint, data
from train.errors import UsageError
from train.fileio import ensure_writable_dir, write_json

log = logging.getLogger("pt-export")


class GateFailed(Exception):
    """A variant did not reproduce the reference within its gate; nothing was written under its final name."""


def _checkpoint_path(arg: str) -> Path:
    path = Path(arg)
    return path / "model.pt" if path.is_dir() else path


def _run_samples(run_dir: Path, ckpt: dict[str, Any], split: str) -> tuple[list[Path], np.ndarray]:
    """The images of one split, from the run's manifest, checked against the checkpoint's hash."""
    manifest, summary = run_dir / "split.csv", run_dir / "data.json"
    if not manifest.is_file() or not summary.is_file():
        raise UsageError(f"no split manifest beside {run_dir / 'model.pt'}; pass --data DIR with labelled images")
    if data.manifest_hash(manifest.read_text(encoding="utf-8")) != ckpt.get("manifest_sha256"):
        raise UsageError(f"{manifest} changed since training (its hash differs from the checkpoint's); pass --data DIR")
    root = Path(json.loads(summary.read_text(encoding="utf-8"))["root"])
    samples = [s for s in data.read_manifest(manifest, tuple(ckpt["class_names"])) if s.split == split]
    missing = [s.path for s in samples if not (root / s.path).is_file()]
    if missing:
        raise UsageError(f"{len(missing)} {split} image(s) of the manifest are missing under {root} (e.g. {missing[0]}); pass --data DIR")
    return [root / s.path for s in samples], np.array([s.label for s in samples], dtype=int)


def _folder_samples(folder: str, ckpt: dict[str, Any]) -> tuple[list[Path], np.ndarray]:
    labelled = data.load_for_evaluation(folder, tuple(ckpt["class_names"]))
    return [labelled.root / s.path for s in labelled.samples], np.array([s.label for s in labelled.samples], dtype=int)


def build_metadata(ckpt: dict[str, Any], ckpt_path: Path, opset: int) -> dict[str, Any]:
    spec = ckpt["preprocess"]
    keys = ("accuracy", "specificity", "sensitivity", "precision", "f1", "average_precision", "roc_auc", "confusion_matrix", "n")
    return {
        "schema_version": metadata.SCHEMA_VERSION,
        "class_names": list(ckpt["class_names"]),
        "positive_index": int(ckpt["positive_index"]),
        "threshold": float(ckpt.get("threshold", 0.5)),
        "preprocess": spec | {"normalization": "in_graph"},
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channel_order": "RGB", "height": spec["crop"], "width": spec["crop"]},
        "output": {"name": "probabilities", "dtype": "float32", "meaning": "softmax over class_names"},
        "arch": ckpt["arch"],
        "opset": opset,
        "variant": "fp32",
        "checkpoint_sha256": hashlib.sha256(ckpt_path.read_bytes()).hexdigest(),
        "training_metrics": {k: ckpt.get("metrics", {}).get(k) for k in keys},
        "package_version": __version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _finalise(path: Path, meta: dict[str, Any], simplify_with: np.ndarray | None) -> None:
    """Simplify where outputs stay the same, attach the metadata, and run the full checker."""
    import onnx

    if simplify_with is not None:
        _simplify(path, simplify_with)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=metadata.KEY, value=metadata.dumps(meta))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _simplify(path: Path, probe: np.ndarray) -> None:
    import onnx
    import onnxslim

    from export.ort import cpu_session

    before = cpu_session(path).run(None, {"image": probe})[0]
    slim = onnxslim.slim(onnx.load(str(path)))
    trial = path.with_name(path.name + ".slim")
    onnx.save(slim, str(trial))
    after = cpu_session(trial).run(None, {"image": probe})[0]
    if np.array_equal(before, after) or np.abs(before - after).max() <= 1e-6:
        os.replace(trial, path)
    else:
        trial.unlink()
        log.warning("onnxslim changed the outputs by %.2e; keeping the unsimplified graph", np.abs(before - after).max())


def _settle(partial: Path, final: Path, report: dict[str, Any]) -> None:
    """Give a verified model its final name; a failed one keeps a name no loader mistakes for a model."""
    if report["passed"]:
        os.replace(partial, final)
    else:
        os.replace(partial, final.with_name(final.name + ".failed"))


def _decoder_parity(session: Any, paths: list[Path], inputs: np.ndarray, meta: dict[str, Any]) -> dict[str, Any] | None:
    try:
        import cv2  # noqa: F401
    except ImportError:
        log.warning("opencv is not installed: the edge decoder comparison is skipped")
        return None
    from export.decoders import compare_decoders

    report = compare_decoders(session, paths, inputs, meta)
    log.info("edge (OpenCV) vs training (PIL) preprocessing: %d of %d labels differ (%.2f%%), max |dprob| %.3f", report["label_differences"], report["n"], 100 * report["label_difference_rate"], report["max_abs_prob_diff"])
    return report


def export(config: ExportConfig) -> dict[str, Any]:
    """Write model.onnx (and the asked-for variants) with parity.json proving each one."""
    import torch

    from export import variants
    from export.graph import MIN_OPSET, Deployable, max_opset, to_onnx
    from export.inputs import batches, load_inputs
    from export.ort import cpu_session, median_latency_ms, predict
    from train.models import ARCHS

    ckpt_path = _checkpoint_path(config.checkpoint)
    ckpt = checkpoint.load(ckpt_path)
    if ckpt["arch"] not in ARCHS:
        raise UsageError(f"{ckpt_path} is a checkpoint of unknown arch {ckpt['arch']!r}; pt-export knows: {', '.join(ARCHS)}")
    top = max_opset()
    if not MIN_OPSET <= config.opset <= top:
        raise UsageError(f"--opset {config.opset} is not supported; choose {MIN_OPSET} to {top}")
    out = ensure_writable_dir(config.out or ckpt_path.parent, "output directory")
    # the run directory's config.json is pt-train's, so the export's gets its own name
    write_json(out / "export_config.json", dataclasses.asdict(config))
    paths, labels = _folder_samples(config.data, ckpt) if config.data else _run_samples(ckpt_path.parent, ckpt, "test")
    spec, names, threshold, pos = ckpt["preprocess"], ckpt["class_names"], float(ckpt.get("threshold", 0.5)), int(ckpt["positive_index"])
    inputs = load_inputs(paths, spec, desc="test images")

    module = Deployable(checkpoint.model_from_checkpoint(ckpt), spec).eval()
    with torch.no_grad():
        reference = np.concatenate([module(torch.from_numpy(b)).numpy()[:, pos] for b in batches(inputs, config.batch_size)]).astype(np.float64)

    meta = build_metadata(ckpt, ckpt_path, config.opset)
    fp32, partial = out / "model.onnx", out / "model.onnx.partial"
    to_onnx(module, partial, config.opset, spec["crop"])
    _finalise(partial, meta, inputs[:8] if config.simplify else None)
    fp32_session = cpu_session(partial)
    gate = parity.ExactGate(config.prob_tol, config.metric_tol, config.min_label_agreement)
    reports = [parity.compare("pytorch vs ort fp32", reference, predict(fp32_session, inputs, pos, config.batch_size), labels, threshold, names, gate)]
    _settle(partial, fp32, reports[0])
    result: dict[str, Any] = {"model": str(fp32), "opset": config.opset, "data": "manifest test split" if not config.data else str(config.data), "reports": reports}
    if reports[0]["passed"]:
        result["decoder_parity"] = _decoder_parity(fp32_session, paths, inputs, meta)

    if reports[0]["passed"] and config.int8:
        calib_paths = _run_samples(ckpt_path.parent, ckpt, "train")[0] if not config.data else paths
        if config.data:
            log.warning("calibrating INT8 on the --data images: without the run's manifest there are no training images")
        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(len(calib_paths), min(config.calibration_images, len(calib_paths)), replace=False))
        calibration = load_inputs([calib_paths[i] for i in chosen], spec, desc="calibration images")
        partial = out / "model.int8.onnx.partial"
        variants.int8(fp32, partial, calibration, reduce_range=config.int8_reduce_range)
        _finalise(partial, meta | {"variant": "int8", "calibration_images": len(chosen)}, None)
        int8_session = cpu_session(partial)
        drop = parity.DropGate(config.int8_max_accuracy_drop, config.int8_max_auc_drop)
        reports.append(parity.compare("pytorch vs ort int8", reference, predict(int8_session, inputs, pos, config.batch_size), labels, threshold, names, drop))
        speed = {k: median_latency_ms(s, inputs, config.speed_runs) for k, s in (("fp32", fp32_session), ("int8", int8_session))}
        speed["int8_speedup"] = speed["fp32"]["median_ms"] / speed["int8"]["median_ms"]
        result["cpu_batch1_latency"] = speed
        _settle(partial, out / "model.int8.onnx", reports[-1])
        log.info("INT8 batch-1 median latency on this CPU: %.2f ms vs FP32 %.2f ms (%.2fx faster, %d runs each)", speed["int8"]["median_ms"], speed["fp32"]["median_ms"], speed["int8_speedup"], config.speed_runs)

    if reports[0]["passed"] and config.fp16:
        partial = out / "model.fp16.onnx.partial"
        variants.fp16(fp32, partial)
        _finalise(partial, meta | {"variant": "fp16"}, None)
        drop = parity.DropGate(config.int8_max_accuracy_drop, config.int8_max_auc_drop, prob_tol=config.fp16_prob_tol)
        reports.append(parity.compare("pytorch vs ort fp16 (cpu)", reference, predict(cpu_session(partial), inputs, pos, config.batch_size), labels, threshold, names, drop))
        _settle(partial, out / "model.fp16.onnx", reports[-1])

    result["passed"] = all(r["passed"] for r in reports)
    # parity.json vouches for model.onnx; a failed variant is already named *.failed
    report_path = out / ("parity.json" if reports[0]["passed"] else "parity.failed.json")
    write_json(report_path, result)
    log.info("%s", parity.table(reports))
    if not result["passed"]:
        failed = [r["name"] for r in reports if not r["passed"]]
        raise GateFailed(f"parity gate failed for {', '.join(failed)}; see {report_path}")
    log.info("wrote %s", ", ".join(str(p) for p in sorted(out.glob("model*.onnx"))))
    return result

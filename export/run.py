"""`export()`: the library function behind pt-export.

Everything is written into a staging folder first. Only when every gate passes do model.onnx, its
variants, parity.json and export_config.json replace the previous export as one set; a failed export
leaves the previous set untouched and its own files in export.failed/ for inspection.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import __version__, metadata, preprocess
from pothole_edge.errors import UsageError
from pothole_edge.export import parity
from pothole_edge.export.config import ExportConfig
from pothole_edge.fileio import ensure_writable_dir, write_json
from pothole_edge.images import ImageDecodeError, read_rgb
from pothole_edge.progress import progress
from pothole_edge.system import int8_reduce_range_default, usable_cores
from pothole_edge.timing import latency
from pothole_edge.train import checkpoint, data
from pothole_edge.train.config import ARCH_CHOICES
from pothole_edge.train.metrics import HEADLINE

log = logging.getLogger("pt-export")
OUTPUTS = (
    "model.onnx",
    "model.int8.onnx",
    "model.int8-trt.onnx",
    "model.fp16.onnx",
    "parity.json",
    "export_config.json",
)
FAILED = "export.failed"


class GateFailed(Exception):
    """A variant did not reproduce the reference within its gate; the previous export stays as it was."""


def _checkpoint_path(arg: str) -> Path:
    path = Path(arg)
    return path / "model.pt" if path.is_dir() else path


def run_samples(run_dir: Path, ckpt: dict[str, Any], split: str) -> list[tuple[Path, int]]:
    """The frames of one split, from the run's manifest, checked against the checkpoint's hash."""
    manifest, summary = run_dir / "split.csv", run_dir / "data.json"
    if not manifest.is_file() or not summary.is_file():
        raise UsageError(f"no split manifest beside {run_dir / 'model.pt'}; pass --data DIR with labelled images")
    if data.manifest_hash(manifest.read_text(encoding="utf-8", errors="surrogateescape")) != ckpt.get(
        "manifest_sha256"
    ):
        raise UsageError(f"{manifest} changed since training (its hash differs from the checkpoint's); pass --data DIR")
    try:
        roots = [Path(r) for r in json.loads(summary.read_text(encoding="utf-8"))["roots"]]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{summary} is damaged ({type(e).__name__}); pass --data DIR") from None
    samples = [s for s in data.read_manifest(manifest, tuple(ckpt["spec"]["class_names"])) if s.split == split]
    missing = [s.path for s in samples if not (roots[s.root] / s.path).is_file()]
    if missing:
        raise UsageError(
            f"{len(missing)} {split} image(s) of the manifest are missing (e.g. {missing[0]}); pass --data DIR"
        )
    return [(roots[s.root] / s.path, s.label) for s in samples]


def _folder_samples(folder: str, ckpt: dict[str, Any]) -> list[tuple[Path, int]]:
    labelled = data.load_for_evaluation(folder, tuple(ckpt["spec"]["class_names"]))
    return [(labelled.path(s), s.label) for s in labelled.samples]


def load_tiles(
    samples: list[tuple[Path, int]], spec: dict[str, Any], desc: str
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, tiles (frames, tiles, crop, crop, 3)) through the edge's view; unreadable files are skipped."""
    paths, labels, tiles = [], [], []
    for path, label in progress(samples, total=len(samples), desc=desc, unit="img"):
        try:
            image = read_rgb(path)
        except ImageDecodeError as e:
            log.warning("skipping %s: %s", path, e)
            continue
        paths.append(path)
        labels.append(label)
        tiles.append(preprocess.tiles(image, spec)[0])
    if not tiles:
        raise UsageError("no readable images to prove the export on; pass --data DIR with labelled images")
    return paths, np.array(labels, dtype=int), np.stack(tiles)


def build_metadata(ckpt: dict[str, Any], ckpt_sha256: str, opset: int) -> dict[str, Any]:
    spec = ckpt["spec"]
    crop = spec["preprocess"]["crop"]
    keys = (*HEADLINE, "confusion_matrix", "n")
    return spec | {
        "input": {
            "name": "image",
            "dtype": "uint8",
            "layout": "NHWC",
            "channel_order": "RGB",
            "height": crop,
            "width": crop,
        },
        "output": {"name": "probabilities", "dtype": "float32", "meaning": "softmax over class_names, per tile"},
        "opset": opset,
        "variant": "fp32",
        "checkpoint_sha256": ckpt_sha256,
        "training_metrics": {k: ckpt.get("metrics", {}).get(k) for k in keys},
        "training_config": {k: (ckpt.get("config") or {}).get(k) for k in ("threshold_rule", "max_fpr")},
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


def _plain_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _simplify(path: Path, probe: np.ndarray) -> None:
    import onnx
    import onnxslim

    before = _plain_session(path).run(None, {"image": probe})[0]
    slim = onnxslim.slim(onnx.load(str(path)))
    trial = path.with_name(path.name + ".slim")
    onnx.save(slim, str(trial))
    after = _plain_session(trial).run(None, {"image": probe})[0]
    if np.array_equal(before, after) or np.abs(before - after).max() <= 1e-6:
        os.replace(trial, path)
    else:
        trial.unlink()
        log.warning(
            "onnxslim changed the outputs by %.2e; keeping the unsimplified graph", np.abs(before - after).max()
        )


def _onnx_tiles(path: Path, tiles: np.ndarray, batch_size: int, device: str = "cpu") -> tuple[Any, np.ndarray]:
    from pothole_edge.session import Runner, open_session

    runner = Runner(open_session(path, device, threads=usable_cores()))
    flat = tiles.reshape(-1, *tiles.shape[2:])
    return runner, runner.probs_batched(flat, batch_size).reshape(tiles.shape[:2])


def _calibration(
    ckpt_path: Path, ckpt: dict[str, Any], config: ExportConfig, fallback: list[tuple[Path, int]]
) -> np.ndarray:
    """Two seeded view tiles from each of `calibration_images` training frames, cut as the edge cuts them."""
    frames = run_samples(ckpt_path.parent, ckpt, "train") if not config.data else fallback
    if config.data:
        log.warning("calibrating INT8 on the --data images: without the run's manifest there are no training images")
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(frames), min(config.calibration_images, len(frames)), replace=False))
    _, _, tiles = load_tiles([frames[i] for i in chosen], ckpt["spec"], "calibration images")
    picks = rng.integers(0, tiles.shape[1], (len(tiles), 2))
    return np.concatenate([tiles[np.arange(len(tiles)), picks[:, k]] for k in range(2)])


def _swap_in(stage: Path, out: Path) -> None:
    """Replace the previous export with the staged one; files it did not make again go too."""
    for name in OUTPUTS:
        if not (stage / name).exists():
            (out / name).unlink(missing_ok=True)
    for name in OUTPUTS:
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    shutil.rmtree(out / FAILED, ignore_errors=True)


def _keep_failed(stage: Path, out: Path) -> Path:
    failed = out / FAILED
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(stage, failed)
    for p in failed.glob("*.onnx"):  # never under a name a loader would take for a verified model
        os.replace(p, p.with_name(p.name + ".failed"))
    return failed


def export(config: ExportConfig) -> dict[str, Any]:
    """Write model.onnx (and the asked-for variants) with parity.json proving each one."""
    from pothole_edge.export.graph import MIN_OPSET, max_opset

    config.check()
    ckpt_path = _checkpoint_path(config.checkpoint)
    ckpt = checkpoint.load(ckpt_path)
    if ckpt["spec"]["arch"] not in ARCH_CHOICES:
        raise UsageError(
            f"{ckpt_path} is a checkpoint of unknown arch {ckpt['spec']['arch']!r}; pt-export knows: "
            f"{', '.join(ARCH_CHOICES)}"
        )
    top = max_opset()
    if not MIN_OPSET <= config.opset <= top:
        raise UsageError(f"--opset {config.opset} is not supported; choose {MIN_OPSET} to {top}")
    reduce_range, why = (
        (config.int8_reduce_range, "asked for") if config.int8_reduce_range is not None else int8_reduce_range_default()
    )
    config = dataclasses.replace(config, int8_reduce_range=reduce_range)
    samples = _folder_samples(config.data, ckpt) if config.data else run_samples(ckpt_path.parent, ckpt, "test")
    out = ensure_writable_dir(config.out or ckpt_path.parent, "output directory")
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        result = {"model": str(out / "model.onnx")} | _export(
            config, ckpt_path, ckpt, samples, stage, (reduce_range, why)
        )
        write_json(stage / "parity.json", result)
        write_json(stage / "export_config.json", dataclasses.asdict(config))
        log.info("%s", parity.table(result["reports"]))
        if not result["passed"]:
            failed = _keep_failed(stage, out)
            names = [r["name"] for r in result["reports"] if not r["passed"]]
            raise GateFailed(
                f"parity gate failed for {', '.join(names)}; the previous export in {out} is unchanged; see "
                f"{failed / 'parity.json'}"
            )
        _swap_in(stage, out)
        log.info("wrote %s", ", ".join(str(out / n) for n in OUTPUTS if (out / n).exists() and n.endswith(".onnx")))
        return result
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class _Proof:
    """The test tiles and PyTorch's probabilities for them, against which every ONNX model is checked."""

    reference: np.ndarray  # frames x tiles
    labels: np.ndarray
    tiles: np.ndarray
    spec: dict[str, Any]
    batch_size: int

    def check(self, name: str, path: Path, gate: Any, own: float | None = None, device: str = "cpu") -> dict[str, Any]:
        _, got = _onnx_tiles(path, self.tiles, self.batch_size, device)
        report = parity.compare(name, self.reference, got, self.labels, self.spec, gate, own)
        return report | {"device": device}


def _export(
    config: ExportConfig,
    ckpt_path: Path,
    ckpt: dict[str, Any],
    samples: list[tuple[Path, int]],
    stage: Path,
    int8_range: tuple[bool, str],
) -> dict[str, Any]:
    from pothole_edge.export.graph import to_onnx

    spec = ckpt["spec"]
    paths, labels, tiles = load_tiles(samples, spec, "test images")
    module, reference = _reference(ckpt, tiles, config.batch_size)
    proof = _Proof(reference, labels, tiles, spec, config.batch_size)
    meta = build_metadata(ckpt, hashlib.sha256(ckpt_path.read_bytes()).hexdigest(), config.opset)
    fp32 = stage / "model.onnx"
    to_onnx(module, fp32, config.opset, spec["preprocess"]["crop"])
    _finalise(fp32, meta, tiles.reshape(-1, *tiles.shape[2:])[:8] if config.simplify else None)
    fp32_runner, got = _onnx_tiles(fp32, tiles, config.batch_size)
    gate = parity.ExactGate(config.prob_tol, config.metric_tol, config.min_label_agreement)
    reports = [parity.compare("pytorch vs ort fp32", reference, got, labels, spec, gate) | {"device": "cpu"}]
    result: dict[str, Any] = {
        "opset": config.opset,
        "data": str(config.data) if config.data else "manifest test split",
        "frames": len(paths),
        "tiles_per_frame": int(tiles.shape[1]),
        "reports": reports,
    }
    if not reports[0]["passed"]:
        result["passed"] = False
        return result
    result["decoder_parity"] = _decoder_parity(fp32_runner, paths, tiles, spec)
    timings = {"fp32": latency(lambda: fp32_runner.probs(tiles[0]), config.speed_runs, 5)}
    drop = parity.DropGate(config.int8_max_accuracy_drop, config.int8_max_auc_drop)
    made = {"fp32": (fp32, drop, None)}
    made |= _variants(config, ckpt_path, ckpt, samples, stage, meta, int8_range, proof, drop, reports, timings)
    reports += _gpu_gates(made, proof)
    result["cpu_frame_latency"] = _speed(timings, int(tiles.shape[1]), config.speed_runs)
    result["passed"] = all(r["passed"] for r in reports)
    return result


def _reference(ckpt: dict[str, Any], tiles: np.ndarray, batch_size: int) -> tuple[Any, np.ndarray]:
    """The deployable module and its positive-class probability for every tile (frames x tiles)."""
    import torch

    from pothole_edge.train.network import Deployable

    flat = tiles.reshape(-1, *tiles.shape[2:])
    module = Deployable(checkpoint.model_from_checkpoint(ckpt)).eval()
    pos = ckpt["spec"]["positive_index"]
    with torch.no_grad():
        ref = [
            module(torch.from_numpy(flat[i : i + batch_size])).numpy()[:, pos] for i in range(0, len(flat), batch_size)
        ]
    return module, np.concatenate(ref).astype(np.float64).reshape(tiles.shape[:2])


def _variants(
    config: ExportConfig,
    ckpt_path: Path,
    ckpt: dict[str, Any],
    samples: list[tuple[Path, int]],
    stage: Path,
    meta: dict[str, Any],
    int8_range: tuple[bool, str],
    proof: _Proof,
    drop: parity.DropGate,
    reports: list[dict[str, Any]],
    timings: dict[str, Any],
) -> dict[str, tuple[Path, Any, float | None]]:
    """Make each variant asked for, from the one table, choose its own threshold and gate it on the CPU.
    Returns name -> (path, gate, its threshold), for the GPU gates."""
    from pothole_edge.export.variants import RECIPES

    wanted = [r for r in RECIPES if getattr(config, r.flag)]
    val = _validation(ckpt_path, ckpt, config)
    calibrated = any(r.calibrated for r in wanted)
    calibration = _calibration(ckpt_path, ckpt, config, samples) if calibrated else None
    made = {}
    for recipe in wanted:
        path = stage / f"model.{recipe.name}.onnx"
        variant_meta = (
            meta | {"variant": recipe.name} | recipe.make(path.with_name("model.onnx"), path, calibration, int8_range)
        )
        _finalise(path, variant_meta, None)
        runner, _ = _onnx_tiles(path, proof.tiles[:1], config.batch_size)
        own = _own_threshold(runner, val, variant_meta, path, config)
        gate = dataclasses.replace(drop, prob_tol=config.fp16_prob_tol) if recipe.name == "fp16" else drop
        reports.append(proof.check(recipe.report, path, gate, own))
        if recipe.timed:
            timings[recipe.name] = latency(lambda r=runner: r.probs(proof.tiles[0]), config.speed_runs, 5)
        made[recipe.name] = (path, gate, own)
    return made


def _gpu_gates(made: dict[str, tuple[Path, Any, float | None]], proof: _Proof) -> list[dict[str, Any]]:
    """Where a GPU provider is present, each model is gated again on every one its variant is made for
    (core.session.VARIANTS): a GPU's kernels are not the CPU's. FP32 is judged on the frames there, as the
    reduced-precision variants are, since GPU convolutions do not round as the CPU's do."""
    import onnxruntime as ort

    from pothole_edge.session import PROVIDERS, VARIANTS

    available = set(ort.get_available_providers())
    reports = []
    for name, (path, gate, own) in made.items():
        for device in VARIANTS[name].devices:
            if device != "cpu" and PROVIDERS[device] in available:
                log.info("gating %s on %s", path.name, device)
                reports.append(proof.check(f"pytorch vs ort {name} ({device})", path, gate, own, device))
    return reports


def _validation(ckpt_path: Path, ckpt: dict[str, Any], config: ExportConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's validation frames as tiles, where reduced-precision variants choose their own threshold."""
    rule = (ckpt.get("config") or {}).get("threshold_rule")
    if config.data or not (config.int8 or config.int8_trt or config.fp16) or rule is None:
        return None
    _, labels, tiles = load_tiles(run_samples(ckpt_path.parent, ckpt, "val"), ckpt["spec"], "validation images")
    return labels, tiles


def _own_threshold(
    runner: Any, val: tuple[np.ndarray, np.ndarray] | None, meta: dict[str, Any], path: Path, config: ExportConfig
) -> float | None:
    """A reduced-precision model shifts its scores a little, so its operating point is chosen again, by the
    checkpoint's rule on the same validation frames, and written into its metadata. Without the run's
    validation split (--data), it keeps the FP32 threshold."""
    from pothole_edge.train.metrics import choose_threshold

    if val is None:
        return None
    labels, tiles = val
    probs = parity.frame_probs(
        runner.probs_batched(tiles.reshape(-1, *tiles.shape[2:]), config.batch_size).reshape(tiles.shape[:2]),
        meta["view"],
    )
    cfg = meta.get("training_config") or {}
    threshold, how = choose_threshold(labels, probs, cfg.get("threshold_rule", "max-fpr"), cfg.get("max_fpr", 0.02))
    _finalise(
        path,
        meta
        | {
            "threshold": threshold,
            "threshold_method": (
                f"{how}; chosen again for this {meta['variant']} model (FP32's: {meta['threshold']:.4f})"
            ),
        },
        None,
    )
    return threshold


def _speed(timings: dict[str, dict[str, Any]], tiles: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"tiles_per_frame": tiles, "runs": runs}
    for name, t in timings.items():
        out[name] = {k: t[k] for k in ("p50_ms", "p90_ms", "mean_ms", "runs", "samples_ms")}
        if name != "fp32":
            out[f"{name}_speedup"] = timings["fp32"]["p50_ms"] / t["p50_ms"]
            log.info(
                "%s frame latency (%d tiles) on this CPU: %.2f ms vs FP32 %.2f ms (%.2fx faster, p50 of %d runs)",
                name.upper(),
                tiles,
                t["p50_ms"],
                timings["fp32"]["p50_ms"],
                out[f"{name}_speedup"],
                runs,
            )
    return out


def _decoder_parity(runner: Any, paths: list[Path], tiles: np.ndarray, spec: dict[str, Any]) -> dict[str, Any] | None:
    from pothole_edge.export.decoders import compare_decoders

    report = compare_decoders(runner.probs_batched, paths, tiles, spec)
    if report["n"]:
        log.info(
            "OpenCV vs PIL decoding: %d of %d frame labels differ (%.2f%%), max |dprob| %.3f",
            report["label_differences"],
            report["n"],
            100 * report["label_difference_rate"],
            report["max_abs_prob_diff"],
        )
    return report

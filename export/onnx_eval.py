"""pt-eval's ONNX path: the same metrics and plots, through ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np

from export import metadata
from train import data
from train.config import EvalConfig
from train.errors import UsageError


def onnx_scorer(config: EvalConfig):
    """(class names, threshold, scorer) for an exported model, all taken from its metadata."""
    from export.inputs import load_inputs
    from export.ort import cpu_session, predict

    try:
        meta = metadata.read(config.model)
    except metadata.MetadataError as e:
        raise UsageError(str(e)) from None
    session = cpu_session(config.model)

    def score(folder: data.LabelledFolder) -> tuple[list[str], np.ndarray, np.ndarray]:
        inputs = load_inputs([folder.root / s.path for s in folder.samples], meta["preprocess"], desc="evaluating")
        probs = predict(session, inputs, meta["positive_index"], config.batch_size)
        return [s.path for s in folder.samples], np.array([s.label for s in folder.samples]), probs

    return tuple(meta["class_names"]), float(meta["threshold"]), score

"""The one JSON value an exported model carries for its consumers. Torch-free by design.

It lives in the ONNX `metadata_props` under KEY and is parsed with `json.loads`, never `eval`.
"""

from __future__ import annotations

import json
import os
from typing import Any

KEY = "pothole_edge"
SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "class_names", "positive_index", "preprocess", "threshold", "input", "output")


class MetadataError(ValueError):
    """The model carries no pothole-edge metadata, or metadata this version cannot read."""


def parse(text: str | None, source: str) -> dict[str, Any]:
    if not text:
        raise MetadataError(f"{source} has no pothole-edge metadata; export it with pt-export")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(f"{source} has unreadable pothole-edge metadata ({e}); export it again with pt-export") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("schema_version"), int):
        raise MetadataError(f"{source} has pothole-edge metadata without a schema version; export it again with pt-export")
    if meta["schema_version"] > SCHEMA_VERSION:
        raise MetadataError(f"{source} has metadata schema {meta['schema_version']}, newer than this version reads ({SCHEMA_VERSION}); upgrade pothole-edge")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MetadataError(f"{source} metadata lacks {', '.join(missing)}; export it again with pt-export")
    return meta


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read the metadata with onnx if it is installed, else with onnxruntime (the edge install)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MetadataError(f"model {path} does not exist")
    try:
        import onnx

        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:  # protobuf raises its own DecodeError, among others
            raise MetadataError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
        props = {p.key: p.value for p in model.metadata_props}
    except ImportError:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise MetadataError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:120]})") from None
        props = session.get_modelmeta().custom_metadata_map
    return parse(props.get(KEY), path)


def dumps(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))

"""The JSON value an exported model carries for its consumers, read without torch, onnx or a session.

It lives in the ONNX model's `metadata_props` under KEY and is parsed with `json.loads`, never
`eval`, then checked field by field (`pothole_edge.spec`). `read` walks the model file's top-level
protobuf fields and skips the graph unread, so the edge learns what a model is before it builds
the one session it runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pothole_edge import spec as specs
from pothole_edge.errors import UsageError

KEY = "pothole_edge"
METADATA_PROPS = 14  # ModelProto.metadata_props, repeated StringStringEntryProto {key = 1, value = 2}
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format


class MetadataError(UsageError):
    """The model carries no pothole-edge metadata, or metadata this version cannot use."""


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A model file: the path itself, or model.onnx inside a run directory."""
    p = Path(path)
    if p.is_dir():
        if (p / "model.onnx").is_file():
            return p / "model.onnx"
        raise MetadataError(f"{p} holds no model.onnx; export the run with pt-export {p}")
    return p


def _varint(f: BinaryIO) -> int | None:
    shift = value = 0
    while True:
        b = f.read(1)
        if not b:
            return None if shift == 0 else -1
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            return -1


def _entry(data: bytes) -> tuple[str, str]:
    import io

    f, fields = io.BytesIO(data), {}
    while (tag := _varint(f)) is not None:
        if tag < 0 or tag & 7 != 2:
            raise ValueError("bad metadata entry")
        n = _varint(f)
        if n is None or n < 0:
            raise ValueError("bad metadata entry")
        fields[tag >> 3] = f.read(n).decode("utf-8")
    return fields.get(1, ""), fields.get(2, "")


def _fields(f: BinaryIO, size: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start, payload start, end) of each top-level field of a ModelProto, skipping payloads."""
    while True:
        start = f.tell()
        tag = _varint(f)
        if tag is None:
            return
        if tag <= 0:
            raise ValueError("bad field tag")
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            if _varint(f) in (None, -1):
                raise ValueError("truncated varint")
            payload = f.tell()
        elif wire == 2:
            n = _varint(f)
            if n is None or n < 0 or f.tell() + n > size:
                raise ValueError("length past the end of the file")
            payload = f.tell()
            f.seek(n, os.SEEK_CUR)
        elif wire in (1, 5):
            payload = f.tell()
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            if f.tell() > size:
                raise ValueError("fixed field past the end of the file")
        else:
            raise ValueError(f"wire type {wire}")
        yield field, start, payload, f.tell()


def _check_not_checkpoint(f: BinaryIO, path: str | os.PathLike) -> None:
    if f.read(4) == ZIP_MAGIC:
        raise MetadataError(f"{path} is a PyTorch checkpoint, not an ONNX model; export it first: pt-export RUN_DIR")
    f.seek(0)


def read_props(path: str | os.PathLike) -> dict[str, str]:
    """The model's metadata_props, reading only the top level of the ModelProto."""
    props: dict[str, str] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        _check_not_checkpoint(f, path)
        for field, _, payload, end in _fields(f, size):
            if field == METADATA_PROPS:
                here = f.tell()
                f.seek(payload)
                key, value = _entry(f.read(end - payload))
                props[key] = value
                f.seek(here)
    return props


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def rewrite(src: str | os.PathLike, dst: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write `src` to `dst` (atomically) with its pothole-edge metadata replaced by `meta`.

    Every other byte of the model is copied as it is: the graph and its weights are untouched, so a
    model that only changes its description (a calibrated threshold) needs no onnx and no torch.
    """
    from pothole_edge.fileio import write_bytes

    size = os.path.getsize(src)
    kept = bytearray()
    with open(src, "rb") as f:
        _check_not_checkpoint(f, src)
        for field, start, payload, end in _fields(f, size):
            here = f.tell()
            f.seek(start)
            chunk = f.read(end - start)
            f.seek(here)
            if field == METADATA_PROPS and _entry(chunk[payload - start :])[0] == KEY:
                continue
            kept += chunk
    entry = _length_delimited(1, KEY.encode("utf-8")) + _length_delimited(2, dumps(meta).encode("utf-8"))
    return write_bytes(dst, bytes(kept) + _length_delimited(METADATA_PROPS, entry))


def parse(text: str | None, source: str) -> dict[str, Any]:
    if not text:
        raise MetadataError(f"{source} has no pothole-edge metadata; export it with pt-export")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(
            f"{source} has unreadable pothole-edge metadata ({e}); export it again with pt-export"
        ) from None
    meta = specs.validate(meta, source)
    _check_contract(meta, source)
    return meta


def _check_contract(meta: dict[str, Any], source: str) -> None:
    crop = meta["preprocess"]["crop"]
    inp = meta.get("input")
    if (
        not isinstance(inp, dict)
        or inp.get("dtype") != "uint8"
        or inp.get("layout") != "NHWC"
        or inp.get("height") != crop
        or inp.get("width") != crop
    ):
        raise MetadataError(
            f"{source} has invalid pothole-edge metadata: input {inp!r} must be uint8 NHWC {crop}x{crop} (the crop); "
            "export it again with pt-export"
        )
    if not isinstance(meta.get("output"), dict):
        raise MetadataError(
            f"{source} has invalid pothole-edge metadata: output is missing; export it again with pt-export"
        )


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checked metadata of the model at `path` (a file, or a run directory's model.onnx)."""
    path = resolve_model_path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise MetadataError(f"model {path} {what}; pass a model.onnx written by pt-export")
    if path.stat().st_size == 0:
        raise MetadataError(f"model {path} is empty, not an ONNX model; export one with pt-export")
    try:
        props = read_props(path)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise MetadataError(
            f"{path} is not a readable ONNX model ({e}); pass a model.onnx written by pt-export"
        ) from None
    return parse(props.get(KEY), str(path))


def check_graph(meta: dict[str, Any], session: Any, source: str) -> None:
    """The graph's input agrees with the metadata: uint8, NHWC, crop x crop."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise MetadataError(f"{source} has {len(inputs)} inputs; a pothole-edge model has one")
    shape, crop = inputs[0].shape, meta["preprocess"]["crop"]
    fixed = [d for d in shape[1:] if isinstance(d, int)]
    if len(shape) != 4 or inputs[0].type != "tensor(uint8)" or (len(fixed) == 3 and list(shape[1:]) != [crop, crop, 3]):
        raise MetadataError(
            f"{source}: the graph takes {inputs[0].type} {shape}, but its metadata says uint8 [batch, {crop}, "
            f"{crop}, 3]; export it again with pt-export"
        )


def dumps(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))

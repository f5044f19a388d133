"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pothole_edge.errors import UsageError


def _read_umask() -> int:
    try:  # Linux reports it without changing it, which is safe with threads running
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def encodable(text: str) -> bool:
    """Whether a path string encodes as UTF-8. File names that do not (surrogate escapes of other
    systems' bytes) are fine for Python's open(), but crash OpenCV and confuse onnxruntime."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync it, then rename it over `path`.

    The file gets the mode a plain open() would give (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    # surrogateescape: file names that are not UTF-8 are written back as the bytes they were
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Atomically, with every password in a URL masked: resolved configs hold what users typed."""
    from pothole_edge.redact import redacted

    return write_text(path, json.dumps(redacted(value), indent=2, sort_keys=False) + "\n")


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create `path` if needed and prove it can be written, or raise UsageError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise UsageError(
            f"cannot write the {what} {path}: {e.strerror or e}; pass --out with a writable directory"
        ) from None
    return path


def next_free(base: str | os.PathLike) -> Path:
    """`base` if it does not exist, else base2, base3, ... (as Ultralytics numbers runs/train2)."""
    base = Path(base)
    if not base.exists():
        return base
    stem = re.sub(r"\d+$", "", base.name) or base.name
    n = 2
    while (base.parent / f"{stem}{n}").exists():
        n += 1
    return base.parent / f"{stem}{n}"


def first_missing(path: str | os.PathLike) -> Path | None:
    """The outermost folder of `path` that does not exist yet: what to remove to undo creating it."""
    path = Path(path).absolute()
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing

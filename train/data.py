"""Find labelled photos on disk, check that each decodes, and split them reproducibly.

Two layouts are accepted:
  DIR/<negative>/, DIR/<positive>/                   split here, seeded and stratified
  DIR/{train,val,test}/<negative|positive>/          split already chosen by the user
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from train.errors import UsageError
from train.images import ImageDecodeError, decode_image

log = logging.getLogger(__name__)

POSITIVE_NAMES = ("pothole", "potholes")
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split", "sha256")


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the data root, with forward slashes
    label: int  # index into class_names; the positive class is 1
    sha256: str
    split: str = ""


@dataclass
class LabelledFolder:
    root: Path
    class_names: tuple[str, str]  # (negative, positive)
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def summary(self) -> dict:
        groups = defaultdict(int)
        for s in self.samples:
            groups[s.sha256] += 1
        counts = {name: {c: 0 for c in self.class_names} for name in SPLITS}
        for s in self.samples:
            if s.split:
                counts[s.split][self.class_names[s.label]] += 1
        return {
            "root": str(self.root),
            "class_names": list(self.class_names),
            "images": len(self.samples),
            "duplicate_files": sum(n - 1 for n in groups.values()),
            "skipped": len(self.skipped),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            "splits": counts,
        }


HINT = "expected normal/ and pothole/ sub-folders (or name the positive one with --positive)"


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_classes(folder: Path, positive: str | None) -> dict[str, int]:
    """Map the two class sub-folders of `folder` to labels: negative 0, positive 1."""
    subdirs = _subdirs(folder)
    if not subdirs:
        raise UsageError(f"no class folders in {folder}: {HINT}")
    if positive and positive not in subdirs:
        raise UsageError(f"--positive {positive} is not a folder in {folder}; folders there: {', '.join(subdirs)}")
    positives = [positive] if positive else [n for n in subdirs if n.lower() in POSITIVE_NAMES]
    if len(positives) > 1:
        raise UsageError(f"two positive class folders in {folder} ({', '.join(positives)}); keep one or pass --positive NAME")
    negatives = [n for n in subdirs if n not in positives]
    if len(subdirs) == 1:
        raise UsageError(f"only one class folder ({subdirs[0]}/) in {folder}: training needs both classes; {HINT}")
    if len(positives) != 1 or len(negatives) != 1 or len(subdirs) != 2:
        raise UsageError(f"cannot tell the classes apart in {folder} (folders: {', '.join(subdirs)}); {HINT}")
    return {negatives[0]: 0, positives[0]: 1}


def resolve_eval_classes(folder: Path, class_names: tuple[str, str]) -> dict[str, int]:
    """Map the class folders present to the model's labels; one class alone is fine."""
    known = {class_names[0].lower(): 0, class_names[1].lower(): 1} | {n: 1 for n in POSITIVE_NAMES if n != class_names[0].lower()}
    subdirs = _subdirs(folder)
    unknown = [n for n in subdirs if n.lower() not in known]
    if not subdirs or unknown:
        found = f"found {', '.join(n + '/' for n in subdirs)}" if subdirs else "found none"
        raise UsageError(f"class folders in {folder} must be named {class_names[0]}/ or {class_names[1]}/ ({found})")
    return {n: known[n.lower()] for n in subdirs}


def _list_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def _check(path: Path) -> tuple[str | None, str]:
    """Return (sha256, "") for a readable image, or (None, reason)."""
    try:
        data = path.read_bytes()
        decode_image(path)
    except ImageDecodeError as e:
        return None, str(e)
    except OSError as e:
        return None, e.strerror or str(e)
    return hashlib.sha256(data).hexdigest(), ""


def scan(root: Path, entries: list[tuple[Path, int, str]], workers: int = 4, progress: bool = True) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode every file once; unreadable ones are skipped with a warning, never fatal."""
    from tqdm import tqdm

    files = [(f, label, split) for folder, label, split in entries for f in _list_files(folder)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda e: _check(e[0]), files), total=len(files), desc="checking images", unit="img", disable=None if progress else True, leave=False))
    samples, skipped = [], []
    for (f, label, split), (digest, reason) in zip(files, results):
        rel = f.relative_to(root).as_posix()
        if digest is None:
            log.warning("skipping %s: %s", rel, reason)
            skipped.append((rel, reason))
        else:
            samples.append(Sample(rel, label, digest, split))
    return samples, skipped


def _class_names(mapping: dict[str, int]) -> tuple[str, str]:
    by_label = {v: n for n, v in mapping.items()}
    return (by_label[0], by_label[1])


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise UsageError(f"data directory {root} does not exist; pass --data DIR with normal/ and pothole/ sub-folders, or --data demo")
    if not root.is_dir():
        raise UsageError(f"--data {root} is not a directory")


def load_for_training(root: str | Path, positive: str | None, val_fraction: float, test_fraction: float, seed: int, workers: int = 4) -> LabelledFolder:
    root = Path(root).absolute()
    _require_dir(root)
    presplit = [s for s in SPLITS if (root / s).is_dir()]
    if presplit:
        missing = [s for s in SPLITS if s not in presplit]
        if missing:
            raise UsageError(f"{root} looks pre-split but lacks {', '.join(s + '/' for s in missing)}; provide train/, val/ and test/")
        mappings = {s: resolve_classes(root / s, positive) for s in SPLITS}
        if len({tuple(sorted(m.items())) for m in mappings.values()}) != 1:
            raise UsageError(f"train/, val/ and test/ in {root} hold different class folders; use the same two in each")
        mapping = mappings["train"]
        entries = [(root / s / name, label, s) for s in SPLITS for name, label in mapping.items()]
    else:
        mapping = resolve_classes(root, positive)
        entries = [(root / name, label, "") for name, label in mapping.items()]
    samples, skipped = scan(root, entries, workers)
    names = _class_names(mapping)
    _require_images(root, samples, names, presplit)
    folder = LabelledFolder(root, names, samples, skipped)
    if not presplit:
        folder.samples = split_samples(samples, val_fraction, test_fraction, seed)
    else:
        leaks = _cross_split_duplicates(samples)
        if leaks:
            log.warning("%d image(s) appear byte-identical in more than one split of %s; their metrics will be optimistic", leaks, root)
    return folder


def load_for_evaluation(root: str | Path, class_names: tuple[str, str], workers: int = 4) -> LabelledFolder:
    """Every image under the class folders is a test image; one class alone is allowed."""
    root = Path(root).absolute()
    _require_dir(root)
    if set(SPLITS) <= set(_subdirs(root)):
        entries = [(root / s / n, label, "test") for s in SPLITS for n, label in resolve_eval_classes(root / s, class_names).items()]
    else:
        entries = [(root / n, label, "test") for n, label in resolve_eval_classes(root, class_names).items()]
    samples, skipped = scan(root, entries, workers)
    if not samples:
        raise UsageError(f"no readable images under {root} ({len(skipped)} file(s) skipped as unreadable)")
    return LabelledFolder(root, tuple(class_names), samples, skipped)


def _require_images(root: Path, samples: list[Sample], names: tuple[str, str], presplit: list[str]) -> None:
    if not samples:
        raise UsageError(f"no readable images under {root}; put photos in {names[0]}/ and {names[1]}/")
    for label, name in enumerate(names):
        for split in presplit or [""]:
            if not any(s.label == label and s.split == split for s in samples):
                where = f"{root}/{split + '/' if split else ''}{name}"
                raise UsageError(f"class folder {where} has no readable images; add photos or remove the folder")


def _cross_split_duplicates(samples: list[Sample]) -> int:
    splits = defaultdict(set)
    for s in samples:
        splits[s.sha256].add(s.split)
    return sum(1 for v in splits.values() if len(v) > 1)


def split_samples(samples: list[Sample], val_fraction: float, test_fraction: float, seed: int) -> list[Sample]:
    """Stratified, seeded split in which byte-identical files always share a split.

    Groups are ordered by content hash before shuffling, so the split depends on the files'
    bytes and the seed, not on directory listing order or where the folder lives.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UsageError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must be in [0, 1) and sum below 1")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.sha256].append(s)
    conflicts = [h for h, g in groups.items() if len({s.label for s in g}) > 1]
    if conflicts:
        log.warning("%d identical image(s) carry both labels; they are kept, in one split", len(conflicts))
    rng = random.Random(seed)
    assigned: dict[str, str] = {}
    for label in sorted({s.label for s in samples}):
        # a group belongs to the stratum of its first file's label
        hashes = sorted(h for h, g in groups.items() if g[0].label == label)
        rng.shuffle(hashes)
        total = sum(len(groups[h]) for h in hashes)
        targets = {"test": round(total * test_fraction), "val": round(total * val_fraction)}
        filled = {"test": 0, "val": 0}
        for h in hashes:
            split = next((k for k in ("test", "val") if filled[k] < targets[k]), "train")
            if split != "train":
                filled[split] += len(groups[h])
            assigned[h] = split
    return [replace(s, split=assigned[s.sha256]) for s in sorted(samples, key=lambda s: s.path)]


def manifest_text(samples: list[Sample], class_names: tuple[str, str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for s in sorted(samples, key=lambda s: s.path):
        writer.writerow([s.path, class_names[s.label], s.split, s.sha256])
    return buf.getvalue()


def manifest_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(path: str | Path, class_names: tuple[str, str]) -> list[Sample]:
    labels = {name: i for i, name in enumerate(class_names)}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [Sample(r["path"], labels[r["label"]], r["sha256"], r["split"]) for r in rows]
